"""Running maxima along an axis (`cummax`), and the one-step shift that turns inclusive prefixes into strict ones.

The Mixture's region keys and summary queries are maxima over prefixes of rows and columns, all computed at
once by a running max (JAX `lax.cummax`). keras.ops has no cummax, and its `associative_scan` does not compile
with XLA on TensorFlow (it branches with `tf.cond`), so it is written here with doubling (Hillis-Steele) steps
of slices, `where` and concatenation, and a custom gradient.
"""

from keras import ops

# Scan steps for an axis whose size is only known at run time: up to 2**24 elements.
_DYNAMIC_SCAN_STEPS = 24


def _take(x, axis, start=None, stop=None):
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _steps(size):
    """Doubling steps of a scan over an axis of `size` elements (None: dynamic)."""
    return _DYNAMIC_SCAN_STEPS if size is None else max(size - 1, 0).bit_length()


def _running_max(x, axis):
    """(running max, index of the last element attaining it) along `axis`: Hillis-Steele doubling steps."""
    shape = [1] * len(x.shape)
    shape[axis] = -1
    index = ops.zeros_like(x, dtype="int32") + ops.reshape(ops.arange(ops.shape(x)[axis], dtype="int32"), shape)
    for step in range(_steps(x.shape[axis])):
        shift = 2 ** step
        earlier, later = _take(x, axis, stop=-shift), _take(x, axis, start=shift)
        pick = earlier > later
        x = ops.concatenate([_take(x, axis, stop=shift), ops.where(pick, earlier, later)], axis=axis)
        index = ops.concatenate([_take(index, axis, stop=shift),
                                 ops.where(pick, _take(index, axis, stop=-shift), _take(index, axis, start=shift))],
                                axis=axis)
    return x, index


def _to_argmax(upstream, index, axis):
    """The gradient of a running max: each output's gradient goes to the element it copies. Outputs copying
    one element are contiguous (the index never decreases), so a segmented sum from the end, in doubling
    steps, collects them; no gather or scatter."""
    total = upstream
    for step in range(_steps(upstream.shape[axis])):
        shift = 2 ** step
        same = _take(index, axis, start=shift) == _take(index, axis, stop=-shift)
        later = ops.where(same, _take(total, axis, start=shift), ops.zeros_like(_take(total, axis, start=shift)))
        total = ops.concatenate([_take(total, axis, stop=-shift) + later, _take(total, axis, start=-shift)],
                                axis=axis)
    shape = [1] * len(index.shape)
    shape[axis] = -1
    own = index == ops.reshape(ops.arange(ops.shape(index)[axis], dtype="int32"), shape)
    return ops.where(own, total, ops.zeros_like(total))


def cummax(x, axis, reverse=False):
    """Running maximum along `axis` (inclusive; from the end when `reverse`) in ceil(log2(size)) doubling
    steps. Its gradient goes to the (last) element attaining each maximum; it is computed directly
    (`_to_argmax`), because differentiating the steps' maxima is several times slower."""
    if reverse:
        return ops.flip(cummax(ops.flip(x, axis), axis), axis)

    @ops.custom_gradient
    def scan(x):
        value, index = _running_max(x, axis)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return _to_argmax(upstream, index, axis)

        return value, grad

    return scan(x)


def shift(x, axis, reverse=False):
    """x moved one step along `axis`: out[i] = x[i - 1] and out[0] = 0 (reverse: out[i] = x[i + 1], last 0).
    Turns inclusive prefix abstractions into those of the strict prefix."""
    widths = [[0, 0]] * len(x.shape)
    widths[axis] = [0, 1] if reverse else [1, 0]
    padded = ops.pad(x, widths)
    return _take(padded, axis, start=1) if reverse else _take(padded, axis, stop=-1)
