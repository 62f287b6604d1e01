"""The local_text TFDS builder: offline build, deterministic hash split, configs."""

import os
import shutil
import sysconfig

import pytest
import tensorflow_datasets as tfds

from apps.data import local_text

OFFLINE = tfds.download.DownloadConfig(try_download_gcs=False)


def _read(builder, split):
    return {ex["path"].decode(): ex["text"]
            for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))}


def test_builds_offline_with_exact_bytes_and_hash_split(tmp_path, text_dir, no_network):
    root, files = text_dir
    builder = local_text.LocalText(data_dir=str(tmp_path), directory=str(root))
    builder.download_and_prepare(download_config=OFFLINE)
    assert builder.name == "local_text" and str(builder.version) == "1.0.0"
    assert builder.info.features["text"].dtype is not None
    seen = {}
    for split in ("train", "validation", "test"):
        examples = _read(builder, split)
        assert examples and all(local_text.split_for_path(p) == split for p in examples)
        seen.update(examples)
    assert seen == files  # binary and hidden files skipped, bytes exact (incl. \xff, empty)


def test_split_is_stable_whatever_else_is_in_the_folder(tmp_path, text_dir):
    root, files = text_dir
    # Fixed expectations: a change of the hash or of the thresholds fails here.
    expected = {"doc_01.txt": "train", "json/__init__.py": "train", "os.py": "validation",
                "doc_09.txt": "validation", "doc_55.txt": "test", "sub/doc_04.txt": "validation"}
    assert {p: local_text.split_for_path(p) for p in expected} == expected
    assert local_text.split_for_path("./os.py") == "validation"  # same path, same split
    counts = {s: sum(local_text.split_for_path(f"f{i}.py") == s for i in range(20000))
              for s in ("train", "validation", "test")}
    assert 0.88 < counts["train"] / 20000 < 0.92
    assert 0.04 < counts["validation"] / 20000 < 0.06
    assert 0.04 < counts["test"] / 20000 < 0.06
    # Adding files elsewhere does not move a file: the split depends on its path only.
    small = tmp_path / "small"
    small.mkdir()
    for relative, data in list(files.items())[:10]:
        (small / relative).parent.mkdir(parents=True, exist_ok=True)
        (small / relative).write_bytes(data)
    config = local_text.local_text_config(str(small))
    listed = [relative for relative, _ in local_text.list_files(config)]
    assert listed == sorted(list(files)[:10])


def test_config_names_depend_on_directory_and_options(tmp_path):
    a = local_text.local_text_config(str(tmp_path / "a"))
    b = local_text.local_text_config(str(tmp_path / "b"))
    a_glob = local_text.local_text_config(str(tmp_path / "a"), glob="*.md")
    assert len({a.name, b.name, a_glob.name}) == 3
    assert a.name == local_text.local_text_config(str(tmp_path / "a")).name
    assert a.name.startswith("a_") and a.glob == "**/*"
    default = local_text.local_text_config()
    assert default.name == local_text.DEFAULT_CONFIG_NAME and default.directory is None


def test_a_directory_whose_files_changed_is_prepared_again_not_read_stale(tmp_path, text_dir, no_network):
    root, files = tmp_path / "corpus", text_dir[1]
    shutil.copytree(text_dir[0], root)  # the fixture's folder is shared: change a copy
    first = local_text.LocalText(data_dir=str(tmp_path / "data"), directory=str(root))
    first.download_and_prepare(download_config=OFFLINE)
    unchanged = local_text.local_text_config(str(root))
    assert unchanged.name == first.builder_config.name  # nothing changed: the prepared data is reused

    (root / "added_later.txt").write_bytes(b"a file added after the first preparation\n")
    (root / "doc_01.txt").write_bytes(files["doc_01.txt"] + b" and an edit")
    changed = local_text.LocalText(data_dir=str(tmp_path / "data"), directory=str(root))
    assert changed.builder_config.name != first.builder_config.name
    changed.download_and_prepare(download_config=OFFLINE)
    seen = {}
    for split in ("train", "validation", "test"):
        seen.update(_read(changed, split))
    assert seen == dict(files, **{"added_later.txt": b"a file added after the first preparation\n",
                                  "doc_01.txt": files["doc_01.txt"] + b" and an edit"})


def test_too_few_files_is_a_clear_error(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "one.txt").write_text("one")
    (folder / "two.txt").write_text("two")
    builder = local_text.LocalText(data_dir=str(tmp_path / "data"), directory=str(folder))
    with pytest.raises(ValueError, match="empty.*add more files"):
        builder.download_and_prepare(download_config=OFFLINE)


def test_default_root_is_this_interpreters_stdlib_without_site_packages():
    config = local_text.LocalText.builder_configs[local_text.DEFAULT_CONFIG_NAME]
    assert config.root == os.path.abspath(sysconfig.get_paths()["stdlib"])
    files = local_text.list_files(config)
    paths = [relative for relative, _ in files]
    assert len(files) > 500 and "os.py" in paths
    assert all(p.endswith(".py") for p in paths)
    assert not any("site-packages" in p.split("/") for p in paths)


def test_default_stdlib_subset_builds_offline(tmp_path, no_network):
    builder = local_text.LocalText(data_dir=str(tmp_path), max_files=200)
    assert builder.builder_config.root == local_text.stdlib_directory()
    builder.download_and_prepare(download_config=OFFLINE)
    sizes = {name: info.num_examples for name, info in builder.info.splits.items()}
    assert sum(sizes.values()) == 200 and min(sizes.values()) > 0
    assert sizes["train"] > sizes["validation"] + sizes["test"]
    paths = _read(builder, "test")
    assert all(local_text.split_for_path(p) == "test" for p in paths)
    for relative, text in paths.items():
        with open(os.path.join(local_text.stdlib_directory(), relative), "rb") as f:
            assert f.read() == text


def test_max_bytes_keeps_a_deterministic_subset(text_dir):
    root, files = text_dir
    config = local_text.local_text_config(str(root), max_bytes=2000)
    first = local_text.list_files(config)
    assert first == local_text.list_files(config)
    assert 0 < sum(len(files[p]) for p, _ in first) <= 2000 < sum(map(len, files.values()))
