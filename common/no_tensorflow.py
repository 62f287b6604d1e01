"""Makes every `import tensorflow...` fail in this process, as on a machine without TensorFlow (the GPU machine
has JAX and no TensorFlow): a process that installs this shows that the library does not need it."""

import importlib.abc
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def __init__(self, who):
        self.who = who

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r} ({self.who} runs without TensorFlow)", name=name)
        return None


def block_tensorflow(who):
    """From now on, importing TensorFlow raises ModuleNotFoundError naming `who` (e.g. "the device check")."""
    sys.meta_path.insert(0, _NoTensorFlow(who))
