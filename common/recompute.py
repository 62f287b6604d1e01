"""Recomputation (`keras.remat`) under which state updates happen once per step, as the originals do.

`keras.remat` (TensorFlow: `tf.recompute_grad`) runs a function in the forward pass and again while computing
gradients. A layer that updates state in its forward pass (the Routing Transformer's online k-means) would then
update twice per step, and the recompute would read the state its own forward pass has just written, so that
the gradient would be that of another function. `remat` marks every call after the first as a recompute:
`is_recomputing()` tells a layer to skip its update, and `forward_value` gives the recompute the values its
forward pass read. The state is per thread (mirrored replicas trace in threads of their own) and nests: inside a
recompute, everything is recomputing.
"""

import contextlib
import threading

import keras

_state = threading.local()


def is_recomputing():
    """True while a `remat` function runs again to compute gradients."""
    return getattr(_state, "recomputing", False)


def forward_value(key, compute):
    """`compute()`, except in the recompute of a `remat` function, which gets the value its forward pass
    computed under the same key (state read before the forward pass wrote it, such as k-means centroids)."""
    memo = getattr(_state, "memo", None)
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


@contextlib.contextmanager
def _recomputing(flag, memo):
    previous = is_recomputing(), getattr(_state, "memo", None)
    _state.recomputing, _state.memo = previous[0] or flag, memo
    try:
        yield
    finally:
        _state.recomputing, _state.memo = previous


def remat(function):
    """`keras.remat(function)` whose later calls (the recompute for the gradient) run under `is_recomputing()`.

    Each wrapped function belongs to one forward pass: wrap afresh in every call of the layer using it."""
    calls, memo = [], {}

    def counted(*args, **kwargs):
        with _recomputing(bool(calls), memo):
            calls.append(None)
            return function(*args, **kwargs)

    return keras.remat(counted)
