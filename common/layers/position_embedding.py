"""Learned absolute position embeddings: one table, or a sum of per-axis tables (factorised)."""

import math

import keras
from keras import ops

from common.serialization import fresh_initializer


@keras.saving.register_keras_serializable(package="common")
class FactorizedPositionEmbedding(keras.layers.Layer):
    """Sum of learned per-axis tables; position i is split in mixed radix over `axis_sizes` (row-major).

    `axis_sizes=(max_length,)` is a plain learned absolute embedding. Images flattened in raster order use
    `(rows, columns, channels)`; the Sparse Transformer's text embedding uses `(ceil(max_length / l), l)`,
    i.e. i // l and i % l. Inputs [batch, length, dim] return the embeddings [1, length, dim] to add.

    `channel_tables=True` treats the last axis as channels that get no table of their own: every other axis's
    table holds one vector per channel, [size, channels, dim], and position (r, c, ch) sums table_0[r, ch] and
    table_1[c, ch] (tensor2tensor's `add_positional_embedding_nd` over [rows, columns, channels x dim]).
    """

    def __init__(self, axis_sizes, initializer="glorot_uniform", channel_tables=False, **kwargs):
        super().__init__(**kwargs)
        axis_sizes = tuple(int(s) for s in axis_sizes)
        if not axis_sizes or any(s < 1 for s in axis_sizes):
            raise ValueError(f"axis_sizes must be positive integers; got {axis_sizes!r}.")
        if channel_tables and len(axis_sizes) < 2:
            raise ValueError(f"channel_tables needs at least one axis besides the channels; got {axis_sizes!r}.")
        self.axis_sizes = axis_sizes
        self.channel_tables = channel_tables
        self.max_length = math.prod(axis_sizes)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        dim = input_shape[-1]
        sizes = self.axis_sizes[:-1] if self.channel_tables else self.axis_sizes
        per_row = (self.axis_sizes[-1], dim) if self.channel_tables else (dim,)
        # A tuple, not a list: tf.train.Checkpoint does not see variables in Keras 3's tracked lists.
        self.tables = tuple(self.add_weight(name=f"axis_{i}", shape=(size,) + per_row,
                                            initializer=fresh_initializer(self.initializer))
                            for i, size in enumerate(sizes))

    def call(self, x, offset=0):
        """Embeddings of positions offset .. offset + length - 1 (offset > 0 in incremental decoding)."""
        length = ops.shape(x)[1]
        if isinstance(length, int) and isinstance(offset, int) and offset + length > self.max_length:
            raise ValueError(f"sequence length {offset + length} exceeds the position embedding's maximum "
                             f"{self.max_length} (axis sizes {self.axis_sizes}).")
        positions = ops.arange(length) + offset
        channels = self.axis_sizes[-1]
        total = 0
        stride = self.max_length
        for size, table in zip(self.axis_sizes, self.tables):
            stride //= size
            index = (positions // stride) % size
            if self.channel_tables:
                table = ops.reshape(table, (-1, table.shape[-1]))
                index = index * channels + positions % channels
            total = total + ops.take(table, index, axis=0)
        return ops.cast(total, x.dtype)[None]

    def compute_output_shape(self, input_shape):
        return (1,) + tuple(input_shape[1:])

    def get_config(self):
        config = super().get_config()
        config.update(axis_sizes=list(self.axis_sizes), initializer=keras.initializers.serialize(self.initializer),
                      channel_tables=self.channel_tables)
        return config

