"""Per-position caches for incremental decoding.

A cache holds one [batch, heads, dim] slot per position up to the generation's maximum length. A per-row cache
(`rows_from_prompt`) holds one [dim] slot per (position, row) instead, row = b x heads + h, for patterns whose
rows read different positions (routing): slot = position x rows + row. Under the
TensorFlow backend the slots are a TensorArray, not one [batch, heads, max_length, dim] tensor: inside a
`tf.while_loop` outside XLA, updating one position of a tensor copies all of it (measured 2.6 ms per step per
32 MiB buffer), whereas writing a TensorArray slot and gathering k slots cost O(k), so a decoding step costs
what its attention pattern reads, whatever the prefix. Other backends (JAX) update a tensor in place inside a
compiled loop, so there the cache is that tensor. TensorFlow is imported only when it is the backend.
"""

import keras
from keras import ops


def _tensor_arrays():
    return keras.backend.backend() == "tensorflow"


def from_prompt(x, max_length):
    """A cache of `max_length` slots holding x [batch, heads, length, dim] at positions 0 .. length - 1.

    Under TensorFlow the slots' shape is set from x at run time, so that it is fully defined even when the batch
    size is not known when tracing (a serving signature): reading no slot, or a slot never written (zeros),
    then works.
    """
    if not _tensor_arrays():
        x = ops.convert_to_tensor(x)
        return ops.pad(x, [[0, 0], [0, 0], [0, max_length - x.shape[2]], [0, 0]])
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    elements = tf.transpose(x, [2, 0, 1, 3])
    slots = tf.raw_ops.TensorListReserve(element_shape=tf.shape(elements)[1:], num_elements=max_length,
                                         element_dtype=x.dtype)
    cache = tf.TensorArray(x.dtype, flow=slots, clear_after_read=False)
    return cache.scatter(tf.range(tf.shape(x)[2]), elements)


def write(cache, position, x):
    """Stores x [batch, heads, 1, dim] at `position` (a scalar int tensor)."""
    if not _tensor_arrays():
        return ops.slice_update(cache, (0, 0, position, 0), ops.cast(x, cache.dtype))
    return cache.write(position, x[:, :, 0])


def write_span(cache, start, x):
    """Stores x [batch, heads, k, dim] at positions start .. start + k - 1 (slots not written before)."""
    if not _tensor_arrays():
        return ops.slice_update(cache, (0, 0, start, 0), ops.cast(x, cache.dtype))
    return cache.scatter(start + ops.arange(ops.shape(x)[2]), ops.transpose(x, [2, 0, 1, 3]))


def read(cache, positions):
    """The slots at `positions` (int [k], all written) as [batch, heads, k, dim]."""
    if not _tensor_arrays():
        return ops.take(cache, positions, axis=2)
    return ops.transpose(cache.gather(positions), [1, 2, 0, 3])


def read_all(cache):
    """Every slot as [batch, heads, max_length, dim]; slots never written hold zeros."""
    if not _tensor_arrays():
        return cache
    return read(cache, ops.arange(cache.size()))


def rows_from_prompt(x, max_length):
    """A per-row cache of `max_length` positions holding x [batch, heads, length, dim] at positions
    0 .. length - 1 of each of its batch x heads rows."""
    elements = ops.reshape(ops.transpose(x, [2, 0, 1, 3]), [-1, x.shape[3]])  # [length x rows, dim]
    if not _tensor_arrays():
        rows = x.shape[0] * x.shape[1]
        return ops.pad(elements, [[0, (max_length - x.shape[2]) * rows], [0, 0]])
    import tensorflow as tf

    rows = tf.shape(x)[0] * tf.shape(x)[1]
    cache = tf.TensorArray(x.dtype, size=max_length * rows, element_shape=tf.TensorShape(x.shape[3:]),
                           clear_after_read=False)
    return cache.scatter(tf.range(tf.shape(elements)[0]), elements)


def write_rows(cache, position, x):
    """Stores x [batch, heads, dim], every row's entry at `position`."""
    flat = ops.reshape(x, [-1, x.shape[-1]])
    if not _tensor_arrays():
        return ops.slice_update(cache, (position * flat.shape[0], 0), ops.cast(flat, cache.dtype))
    rows = ops.shape(flat)[0]
    return cache.scatter(position * rows + ops.arange(rows), flat)


def read_rows(cache, positions, rows, num_rows):
    """The entries at positions [..., k] (all written) of rows [...] (broadcast against the leading axes of
    `positions`) of a per-row cache of `num_rows` rows: [..., k, dim]."""
    index = positions * num_rows + rows[..., None]
    flat_index = ops.reshape(index, [-1])
    if not _tensor_arrays():
        entries, dim = ops.take(cache, flat_index, axis=0), cache.shape[-1]
    else:
        entries, dim = cache.gather(flat_index), cache.element_shape[-1]
    return ops.reshape(entries, tuple(ops.shape(index)) + (dim,))
