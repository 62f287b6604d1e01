"""The Routing Transformer (Roy et al., TACL 2021) on the zoo's shared layers."""

from common.attention import register_decoder_module
from routing_transformer.attention import RoutingAttention, routing_attention
from routing_transformer.model import RoutingTransformerLM

register_decoder_module("routing", "routing_transformer.decoding")  # TensorFlow-only, loaded when decoding

__all__ = ["RoutingAttention", "RoutingTransformerLM", "routing_attention"]
