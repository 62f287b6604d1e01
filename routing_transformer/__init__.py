"""The Routing Transformer (Roy et al., TACL 2021) on the zoo's shared layers."""

import common  # noqa: F401  (TensorFlow's CPU kernels: before anything imports TensorFlow)
from routing_transformer import decoding  # noqa: F401  (registers the "routing" decoder)
from routing_transformer.attention import RoutingAttention, routing_attention
from routing_transformer.model import RoutingTransformerLM

__all__ = ["RoutingAttention", "RoutingTransformerLM", "routing_attention"]
