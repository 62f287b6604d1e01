"""Layer methods other than `call` that read weights, run as `call` runs under mixed precision."""

import functools

from keras.src.backend import AutocastScope


def autocast_weights(method):
    """Runs a layer method (e.g. `prefill`, `decode`) in the layer's autocast scope.

    Keras enters this scope in `Layer.__call__` only, so a method called directly would read float32 weights
    next to bfloat16 activations under a mixed policy. Keras exports no public name for the scope; it is
    `keras.src.backend.AutocastScope`, what `Layer.__call__` uses.
    """
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with AutocastScope(self.compute_dtype):
            return method(self, *args, **kwargs)

    return wrapper
