"""A quiet console for the command-line tools: TensorFlow's native start-up and runtime logging kept off stderr.

TensorFlow 2.21 writes C++ log lines to stderr that `TF_CPP_MIN_LOG_LEVEL` no longer silences (they come before
absl's log initialisation): CUDA probing on a machine without a GPU ("failed call to cuInit" as an ERROR), the
CPU-instructions notice, tf.data notices. `quiet_native_logs` routes file descriptor 2 through a filter that
drops lines in the native log format and passes every other line (Python warnings, tracebacks, our own errors)
through unchanged. It does nothing when the user set `TF_CPP_MIN_LOG_LEVEL` themselves: they asked for the logs
at that level. Call it first thing in a tool's `__main__`, before TensorFlow is imported.
"""

import atexit
import os
import re
import sys
import threading

NATIVE_LINE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ [\w./-]+\.(cc|h|cpp):\d+\] "),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler"),
)


def is_native_log_line(line):
    return any(pattern.search(line) for pattern in NATIVE_LINE)


def quiet_native_logs():
    """Filters native log lines out of stderr for the rest of the process (see the module docstring); returns
    False, doing nothing, when the user set TF_CPP_MIN_LOG_LEVEL."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # what the native logger does honour, after its initialisation
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as lines, os.fdopen(os.dup(original), "wb", buffering=0) as out:
            for line in lines:
                if not is_native_log_line(line.decode("utf-8", "replace").rstrip("\n")):
                    out.write(line)

    thread = threading.Thread(target=forward, name="quiet_native_logs", daemon=True)
    thread.start()

    def restore():  # at exit: close the pipe (the filter sees its end) and wait until it has passed everything
        sys.stderr.flush()
        os.dup2(original, 2)
        thread.join(timeout=5)

    atexit.register(restore)
    return True


def duration(seconds):
    """Seconds as 1m05s or 1h02m05s (progress lines)."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"
