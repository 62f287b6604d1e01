"""Per-position caches for incremental decoding.

A cache holds one [batch, heads, dim] slot per position up to the generation's maximum length. Under the
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


def read(cache, positions):
    """The slots at `positions` (int [k], all written) as [batch, heads, k, dim]."""
    if not _tensor_arrays():
        return ops.take(cache, positions, axis=2)
    return ops.transpose(cache.gather(positions), [1, 2, 0, 3])
