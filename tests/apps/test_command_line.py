"""apps.command_line: every tool's bad command lines end with one line and a non-zero exit, before TensorFlow
is imported (so they take a fraction of a second, not TensorFlow's start-up)."""

import subprocess
import sys

import pytest

from apps import command_line
from tests.apps.train_helpers import REPO, assert_one_line_error

# Runs `python -m <module> <args>` through runpy and reports on stdout, at exit, whether TensorFlow was imported.
RUN_AND_REPORT = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('tensorflow imported:', 'tensorflow' in sys.modules))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")

BAD_COMMAND_LINES = [
    ("apps.train", ["--gin_file=no/such.gin", "--model_dir=m"], "'no/such.gin' does not exist"),
    ("apps.train", ["--gin_file=quickstart.gin"], "--model_dir is required"),
    ("apps.train", ["--gin_file=quickstart.gin", "--model_dir=m", "--mode=fit"], "--mode=fit"),
    ("apps.train", ["--gin_file=quickstart.gin", "--model_dir=m", "--strategy=gpu"], "--strategy=gpu"),
    ("apps.train", ["--gin_file=quickstart.gin", "--model_dir=m", "--gin_parm=x"], "gin_parm"),
    ("apps.sample", ["--prompt=x"], "--model_dir is required"),
    ("apps.sample", ["--model_dir=m", "--length=0"], "--length=0: give at least 1 token"),
    ("apps.sample", ["--model_dir=m", "--length=-3"], "--length=-3"),
    ("apps.sample", ["--model_dir=m", "--length=ten"], "--length=ten"),
    ("apps.sample", ["--model_dir=m", b"--prompt=def \xff"], "--prompt is not valid UTF-8"),
    ("apps.sample", ["--model_dir=m", "--temperature=hot"], "--temperature=hot"),
    ("apps.export", ["--model_dir=m"], "--model_dir and --export_dir are required"),
    ("apps.export", ["--export_dir=out"], "--model_dir and --export_dir are required"),
    ("apps.experiment_info", ["--gin_file=missing.gin"], "'missing.gin' does not exist"),
    ("apps.demo", ["--demo_dri=x"], "demo_dri"),
]


def run_and_report(module, args):
    return subprocess.run([sys.executable, "-c", RUN_AND_REPORT, module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("module, args, message", BAD_COMMAND_LINES)
def test_a_bad_command_line_is_one_line_before_tensorflow_is_imported(module, args, message):
    result = run_and_report(module, args)
    line = assert_one_line_error(result)
    assert message in line, line
    assert "tensorflow imported: False" in result.stdout, result.stdout


def test_help_is_printed_before_tensorflow_is_imported():
    result = run_and_report("apps.train", ["--helpshort"])
    assert "--gin_file" in result.stdout and "--model_dir" in result.stdout, result.stdout
    assert "tensorflow imported: False" in result.stdout


def test_the_report_detects_a_tensorflow_import():
    """The check above can fail: a good command line goes on to import TensorFlow."""
    result = run_and_report("apps.experiment_info", ["--gin_file=quickstart.gin"])
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout and "tensorflow imported: True" in result.stdout, result.stdout


def test_gin_files_resolve_as_given_or_under_gin_configs(tmp_path):
    own = tmp_path / "own.gin"
    own.write_text("")
    assert command_line.missing_gin_files([str(own), "quickstart.gin", "nope.gin"]) == ["nope.gin"]
    assert command_line.resolve_gin_file(str(own)) == str(own)
    assert command_line.resolve_gin_file("quickstart.gin") == f"{command_line.GIN_CONFIGS}/quickstart.gin"
