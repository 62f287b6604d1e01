"""One Transformer decoder block: attention and feed-forward sub-layers with residuals, pre- or post-LN."""

import keras
from keras import ops

from common import recompute
from common.layers.autocast import autocast_weights
from common.layers.normalization import LayerNorm
from common.serialization import as_layer

NORM_PLACEMENTS = ("pre", "post")


@keras.saving.register_keras_serializable(package="common")
class DecoderBlock(keras.layers.Layer):
    """`x + drop(f(LN(x)))` per sub-layer (pre-LN) or `LN(x + drop(f(x)))` (post-LN, the original Transformer
    and the Routing Transformer's T2T default).

    Args:
      attention: the attention layer (any `SelfAttention`-like layer mapping [b, l, d] -> [b, l, d]).
      feed_forward: the feed-forward layer.
      norm_placement: "pre" or "post".
      norm_epsilon: LayerNorm epsilon.
      dropout: residual dropout at the end of each sub-layer branch.
      remat: recompute each branch (norm and sub-layer; residual dropout stays outside) in the backward pass
        instead of storing its activations (`common.recompute.remat`): less memory, one more forward pass.
        The sub-layers must then have no dropout of their own (the recompute would draw new masks); state
        updates must skip the recompute (`common.recompute.is_recomputing`, as `OnlineKMeans` does).
    """

    def __init__(self, attention, feed_forward, norm_placement="pre", norm_epsilon=1e-6, dropout=0.0,
                 seed=None, remat=False, **kwargs):
        super().__init__(**kwargs)
        if norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"unknown norm_placement {norm_placement!r}; choose one of {NORM_PLACEMENTS}.")
        self.attention = as_layer(attention)
        self.feed_forward = as_layer(feed_forward)
        self.norm_placement = norm_placement
        self.norm_epsilon = norm_epsilon
        self.dropout = dropout
        self.seed = seed
        self.remat = remat
        if remat:
            for layer in (self.attention, self.feed_forward):
                if getattr(layer, "dropout", 0.0):
                    raise ValueError(f"remat=True recomputes {layer.name} in the backward pass, which would "
                                     f"redraw its dropout masks; set its dropout to 0 (got {layer.dropout}) or "
                                     f"use remat=False. Residual dropout is fine.")
        self.attention_norm = LayerNorm(norm_epsilon, name="attention_norm", dtype=self.dtype_policy)
        self.feed_forward_norm = LayerNorm(norm_epsilon, name="feed_forward_norm", dtype=self.dtype_policy)
        self.residual_dropout = keras.layers.Dropout(dropout, seed=seed, dtype=self.dtype_policy)

    def build(self, input_shape):
        for layer in (self.attention_norm, self.attention, self.feed_forward_norm, self.feed_forward):
            if not layer.built:
                layer.build(input_shape)

    def _branch_input(self, x, norm):
        return norm(x) if self.norm_placement == "pre" else x

    def _residual(self, x, y, norm):
        return x + y if self.norm_placement == "pre" else norm(x + y)

    def _sublayer(self, x, layer, norm, training):
        if self.remat:
            y = self._recomputed(x, layer, norm, training)
        else:
            y = layer(self._branch_input(x, norm), training=training)
        return self._residual(x, self.residual_dropout(y, training=training), norm)

    def _recomputed(self, x, layer, norm, training):
        """The branch under `recompute.remat`. Its sub-layer's `add_loss` terms are computed in the forward pass,
        outside the gradient's record: they keep their value in the sub-layer's losses, and a zero-valued term
        here, `l - stop_gradient(l)` of the branch's returned losses, carries their gradient through the
        recompute."""
        def branch(y):
            out = layer(self._branch_input(y, norm), training=training)
            losses = layer.losses
            return out, ops.sum(ops.stack(losses)) if losses else ops.zeros(())

        y, losses = recompute.remat(branch)(x)
        if layer.losses:
            self.add_loss(losses - ops.stop_gradient(losses))
        return y

    def call(self, x, training=None):
        x = self._sublayer(x, self.attention, self.attention_norm, training)
        return self._sublayer(x, self.feed_forward, self.feed_forward_norm, training)

    @autocast_weights
    def prefill(self, x, cache_length):
        """The block on a prompt (not training) and its attention's decoding cache (see `SelfAttention`)."""
        y, cache = self.attention.prefill(self._branch_input(x, self.attention_norm), cache_length)
        x = self._residual(x, y, self.attention_norm)
        return self._sublayer(x, self.feed_forward, self.feed_forward_norm, False), cache

    @autocast_weights
    def decode(self, x, cache, position):
        """The block at one new position x [batch, 1, dim], given its attention's cache."""
        y, cache = self.attention.decode(self._branch_input(x, self.attention_norm), cache, position)
        x = self._residual(x, y, self.attention_norm)
        return self._sublayer(x, self.feed_forward, self.feed_forward_norm, False), cache

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(attention=keras.saving.serialize_keras_object(self.attention),
                      feed_forward=keras.saving.serialize_keras_object(self.feed_forward),
                      norm_placement=self.norm_placement, norm_epsilon=self.norm_epsilon, dropout=self.dropout,
                      seed=self.seed, remat=self.remat)
        return config

