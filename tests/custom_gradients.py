"""Freeing the graphs that TensorFlow's custom-gradient registry keeps alive (a test-suite concern only).

TensorFlow registers each graph-mode call of a `custom_gradient` function (here: local attention's and
cummax's backward) under a new global name and never removes it, and the registered closure holds the traced
graph (tensorflow/tensorflow#27492, #97697). A training run traces its step once, so it loses nothing; a test
worker traces hundreds of steps and kept every graph: about 170 MB per shrunk experiment, one xdist worker at
17 GB and the 24 GiB machine thrashing."""

import contextlib
import sys

PREFIX = "CustomGradient-"


def _registry():
    """TensorFlow's global gradient table (name -> entry), or None where TensorFlow is not loaded."""
    if "tensorflow" not in sys.modules:
        return None
    from tensorflow.python.framework import ops  # private: the table has no public handle

    return ops._gradient_registry._registry


@contextlib.contextmanager
def released():
    """Drops the custom gradients registered inside the block when it ends: graphs traced inside it can no
    longer be differentiated afterwards, and are freed once nothing else holds them."""
    registry = _registry()
    before = set(registry) if registry is not None else set()
    try:
        yield
    finally:
        registry = _registry()
        if registry is not None:
            for name in set(registry) - before:
                if name.startswith(PREFIX):
                    del registry[name]
