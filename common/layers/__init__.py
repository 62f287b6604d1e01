"""Keras layers shared by the families: norms, feed-forward, positions, attention, decoder block."""

from common.layers.attention import SelfAttention
from common.layers.decoder_block import DecoderBlock
from common.layers.feed_forward import FeedForward
from common.layers.normalization import LayerNorm, layer_norm
from common.layers.position_embedding import FactorizedPositionEmbedding

__all__ = ["SelfAttention", "DecoderBlock", "FeedForward", "LayerNorm", "layer_norm",
           "FactorizedPositionEmbedding"]
