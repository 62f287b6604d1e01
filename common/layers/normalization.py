"""Layer normalisation over the last axis, computed in float32, with the scale-free option.

The Routing Transformer normalises queries and keys (and the k-means inputs) with no gain and no bias
(`scaling=False` in the original), so `LayerNorm(center=False, scale=False)` and the `layer_norm` function
exist for that use.
"""

import keras
from keras import ops


def layer_norm(x, epsilon=1e-6):
    """(x - mean) / sqrt(var + epsilon) over the last axis, in float32, returned in x's dtype."""
    y = ops.cast(x, "float32")
    mean = ops.mean(y, axis=-1, keepdims=True)
    variance = ops.mean(ops.square(y - mean), axis=-1, keepdims=True)
    return ops.cast((y - mean) * ops.rsqrt(variance + epsilon), x.dtype)


@keras.saving.register_keras_serializable(package="common")
class LayerNorm(keras.layers.Layer):
    """Layer normalisation with optional gain (`scale`) and bias (`center`)."""

    def __init__(self, epsilon=1e-6, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.center = center
        self.scale = scale

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"LayerNorm needs a known last dimension; got input shape {input_shape}.")
        self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones") if self.scale else None
        self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros") if self.center else None

    def call(self, x):
        y = layer_norm(x, self.epsilon)
        if self.gamma is not None:
            y = y * ops.cast(self.gamma, y.dtype)
        if self.beta is not None:
            y = y + ops.cast(self.beta, y.dtype)
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, center=self.center, scale=self.scale)
        return config
