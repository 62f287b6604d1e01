"""common.no_tensorflow: after `block_tensorflow`, importing TensorFlow (or any of its modules) fails with a
message naming who blocked it, and other imports still work."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("module", ["tensorflow", "tensorflow.python.ops"])
def test_importing_tensorflow_fails_once_blocked(module):
    code = ("from common.no_tensorflow import block_tensorflow; block_tensorflow('this check'); "
            f"import json; import {module}")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ModuleNotFoundError: No module named 'tensorflow' (this check runs without TensorFlow)" in result.stderr


def test_nothing_is_blocked_before():
    code = "import common.no_tensorflow, importlib.util; print(importlib.util.find_spec('tensorflow') is not None)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr
