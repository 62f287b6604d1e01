"""Importing the zoo asks TensorFlow for its oneDNN CPU kernels (`common`), before TensorFlow is imported by any
entry point, and an explicit `TF_ENABLE_ONEDNN_OPTS` wins."""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENABLED = ("from tensorflow.python.util import _pywrap_util_port as port; "  # private: no public query
           "print('oneDNN', port.IsMklEnabled())")


def _onednn_after(module, setting=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    out = subprocess.run([sys.executable, "-c", f"import {module}; {ENABLED}"], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


@pytest.mark.parametrize("module", ["routing_transformer", "sparse_transformer", "combiner", "apps.train",
                                    "benchmarks.reproduce"])
def test_importing_the_zoo_turns_onednn_on(module):
    assert _onednn_after(module) == "oneDNN True"


def test_an_explicit_setting_wins():
    assert _onednn_after("routing_transformer", "0") == "oneDNN False"
