"""Combiner (Ren et al., NeurIPS 2021): full attention at sparse cost, on the zoo's shared layers."""

from common.attention import register_decoder_module
from combiner.attention import CombinerAttention, combiner_attention
from combiner.model import CombinerLM

register_decoder_module("combiner", "combiner.decoding")  # TensorFlow-only, loaded when decoding

__all__ = ["CombinerAttention", "CombinerLM", "combiner_attention"]
