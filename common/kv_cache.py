"""Per-position caches for incremental decoding, kept in TensorArrays.

A cache holds one [batch, heads, dim] slot per position up to the generation's maximum length. TensorArrays,
not one [batch, heads, max_length, dim] tensor: inside a `tf.while_loop` outside XLA, updating one position of
a tensor copies all of it (measured 2.6 ms per step per 32 MiB buffer), whereas writing a TensorArray slot and
gathering k slots cost O(k), so a decoding step costs what its attention pattern reads, whatever the prefix.

This is TensorFlow-only code, like the rest of serving (`common.sample`, `common.export`).
"""

import tensorflow as tf


def from_prompt(x, max_length):
    """A cache of `max_length` slots holding x [batch, heads, length, dim] at positions 0 .. length - 1."""
    x = tf.convert_to_tensor(x)
    cache = tf.TensorArray(x.dtype, size=max_length, element_shape=tf.TensorShape([None, x.shape[1], x.shape[3]]),
                           clear_after_read=False)
    return cache.scatter(tf.range(tf.shape(x)[2]), tf.transpose(x, [2, 0, 1, 3]))


def write(cache, position, x):
    """Stores x [batch, heads, 1, dim] at `position` (a scalar int tensor)."""
    return cache.write(position, x[:, :, 0])


def read(cache, positions):
    """The slots at `positions` (int [k], all written) as [batch, heads, k, dim]."""
    return tf.transpose(cache.gather(positions), [1, 2, 0, 3])
