"""The Sparse Transformer (Child et al., 2019) on the zoo's shared layers."""

import common  # noqa: F401  (TensorFlow's CPU kernels: before anything imports TensorFlow)
from sparse_transformer.attention import SparseAttention, sparse_attention
from sparse_transformer import decoding  # noqa: F401  (registers the "sparse" decoder)
from sparse_transformer.model import SparseTransformerLM
from sparse_transformer.patterns import attention_mask

__all__ = ["SparseAttention", "SparseTransformerLM", "attention_mask", "sparse_attention"]
