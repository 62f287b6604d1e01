"""Position-wise feed-forward network with the activations the three families use."""

import math

import keras
from keras import ops

from common.attention import checks
from common.serialization import fresh_initializer


def gelu_tanh(x):
    return 0.5 * x * (1.0 + ops.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def gelu_sigmoid(x):
    """The Sparse Transformer's fast GELU, x * sigmoid(1.702 x)."""
    return x * ops.sigmoid(1.702 * x)


ACTIVATIONS = {
    "relu": ops.relu,
    "gelu": lambda x: ops.gelu(x, approximate=False),
    "gelu_tanh": gelu_tanh,
    "gelu_sigmoid": gelu_sigmoid,
    # Gated: W3 (gelu_tanh(x W1) * x W2), the Routing Transformer's `geglu`.
    "geglu": gelu_tanh,
}


@keras.saving.register_keras_serializable(package="common")
class FeedForward(keras.layers.Layer):
    """`W2 f(x W1 + b1) + b2`, or the gated `W3 (gelu_tanh(x W1) * x W2)` for `activation="geglu"`.

    Args:
      hidden_dim: inner width (the papers' `filter_size` / d_ff).
      activation: one of relu, gelu, gelu_tanh, gelu_sigmoid, geglu.
      use_bias: biases on the projections (the Routing Transformer's GEGLU has none).
      dropout: dropout on the inner activation (the original's `relu_dropout`).
      kernel_initializer, output_initializer: initialisers of the input and output projections (the Sparse
        Transformer scales the output one by 1 / sqrt(2 N)); output_initializer defaults to the first.
      output_dim: width of the output; default the input width.
      chunk_size: None transforms the whole sequence at once. A number of positions transforms it in chunks,
        each recomputed in the backward pass (`keras.remat`), so that training keeps one chunk's inner
        activations at a time instead of length x hidden_dim (for very long sequences; needs no dropout here,
        which the recompute would redraw).
    """

    def __init__(self, hidden_dim, activation="relu", use_bias=True, dropout=0.0,
                 kernel_initializer="glorot_uniform", output_initializer=None, output_dim=None, seed=None,
                 chunk_size=None, **kwargs):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
        checks.check_positive_int("hidden_dim", hidden_dim)
        if chunk_size is not None:
            checks.check_positive_int("chunk_size", chunk_size)
            if dropout:
                raise ValueError(f"chunk_size recomputes the feed-forward in the backward pass, which would redraw "
                                 f"its dropout masks; set dropout to 0 (got {dropout}) or chunk_size to None.")
        self.chunk_size = chunk_size
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.use_bias = use_bias
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer or kernel_initializer)
        self.output_dim = output_dim
        self.seed = seed
        self._dropout_layer = keras.layers.Dropout(dropout, seed=seed, dtype=self.dtype_policy)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"FeedForward needs a known last dimension; got input shape {input_shape}.")
        out_dim = self.output_dim or dim
        dense = lambda units, init, name: keras.layers.Dense(units, use_bias=self.use_bias, name=name,
                                                              kernel_initializer=fresh_initializer(init),
                                                              dtype=self.dtype_policy)
        self.inner = dense(self.hidden_dim, self.kernel_initializer, "inner")
        self.inner.build(input_shape)
        self.gate = None
        if self.activation == "geglu":
            self.gate = dense(self.hidden_dim, self.kernel_initializer, "gate")
            self.gate.build(input_shape)
        self.outer = dense(out_dim, self.output_initializer, "outer")
        self.outer.build(tuple(input_shape[:-1]) + (self.hidden_dim,))

    def call(self, x, training=None):
        length = x.shape[1] if len(x.shape) == 3 else None
        if self.chunk_size is None or length is None or length <= self.chunk_size:
            return self.transform(x, training)
        transform = keras.remat(lambda chunk: self.transform(chunk, training))
        return ops.concatenate([transform(x[:, start:start + self.chunk_size])
                                for start in range(0, length, self.chunk_size)], axis=1)

    def transform(self, x, training=None):
        h = ACTIVATIONS[self.activation](self.inner(x))
        if self.gate is not None:
            h = h * self.gate(x)
        return self.outer(self._dropout_layer(h, training=training))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, activation=self.activation, use_bias=self.use_bias,
                      dropout=self.dropout, seed=self.seed, output_dim=self.output_dim, chunk_size=self.chunk_size,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      output_initializer=keras.initializers.serialize(self.output_initializer))
        return config
