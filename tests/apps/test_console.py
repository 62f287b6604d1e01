"""apps.console: the command-line tools keep TensorFlow's native log lines off stderr and pass everything else,
unless the user set TF_CPP_MIN_LOG_LEVEL."""

import os
import subprocess
import sys

from tests.apps.train_helpers import REPO, gin_param_args, tiny_params, corpus  # noqa: F401  (fixture)

NATIVE = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
          "E0000 00:00:1796539576.803326    3446 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
          "I0000 00:00:1796539568.482353    3446 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n")
SCRIPT = f"""
import os, sys
from apps import console
console.quiet_native_logs()
os.write(2, {NATIVE.encode()!r})
print("a Python warning stays", file=sys.stderr)
sys.exit("error: and so does the error line")
"""


def run(code_or_args, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(env, PYTHONUNBUFFERED="1")
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=300)


def test_native_lines_are_dropped_and_every_other_line_kept_through_exit():
    result = run(SCRIPT)
    assert result.returncode == 1
    assert result.stderr == "a Python warning stays\nerror: and so does the error line\n"


def test_the_users_own_log_level_turns_the_filter_off():
    result = run(SCRIPT, TF_CPP_MIN_LOG_LEVEL="0")
    assert result.stderr.startswith(NATIVE)


def test_training_from_the_command_line_prints_no_native_line(corpus, tmp_path):
    params = tiny_params(corpus, train_steps=2, checkpoint_every=2)
    result = run(["-m", "apps.train", *gin_param_args(params), f"--model_dir={tmp_path / 'm'}"])
    assert result.returncode == 0, result.stderr
    assert "step 2/2" in result.stdout
    assert not [line for line in result.stderr.splitlines() if line.strip()], result.stderr
