"""Combiner (Ren et al., NeurIPS 2021): full attention at sparse cost, on the zoo's shared layers."""

import common  # noqa: F401  (TensorFlow's CPU kernels: before anything imports TensorFlow)
from combiner import decoding  # noqa: F401  (registers the "combiner" decoder)
from combiner.attention import CombinerAttention, combiner_attention
from combiner.model import CombinerLM

__all__ = ["CombinerAttention", "CombinerLM", "combiner_attention"]
