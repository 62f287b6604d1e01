"""The three floors: the library (`common`) imports no family and no application, a family imports no other
family and no application, and nothing in the product imports the benchmarks or the tests. Read from every
module's import statements (at any depth, lazy imports included), so no code has to run."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FAMILIES = ("routing_transformer", "sparse_transformer", "combiner")
# package -> top-level packages of this repository it may import
ALLOWED = {"common": {"common"}, "apps": {"apps", "common", *FAMILIES}}
ALLOWED.update({family: {family, "common"} for family in FAMILIES})
OURS = {"common", "apps", "benchmarks", "tests", "examples", *FAMILIES}


def imported_packages(path):
    """Top-level package of every absolute import in the file at `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def upward_imports(package, root=ROOT):
    """'file imports package' for every import of `package`'s modules that its floor does not allow."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for imported in imported_packages(path):
            if imported in OURS and imported not in ALLOWED[package]:
                found.append(f"{path.relative_to(root)} imports {imported}")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_a_floor_above_it_or_a_sibling_family(package):
    assert upward_imports(package) == []


def test_the_check_sees_an_upward_import(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "kernels.py").write_text("import keras\n\ndef f():\n    from apps import train\n"
                                                    "    import combiner.model\n    from . import masks\n")
    assert upward_imports("common", tmp_path) == ["common/kernels.py imports apps",
                                                  "common/kernels.py imports combiner"]
