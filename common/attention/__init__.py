"""Pure attention kernels (no weights) following the zoo's kernel contract; see DESIGN.md."""

from common.attention.decoding import get_decoder, register_decoder
from common.attention.dense import dense_attention
from common.attention.local import local_attention
from common.attention.masks import causal_mask, local_mask
from common.attention.registry import get_kernel, kernel_names, register_kernel
from common.attention.strided import strided_attention

register_kernel("dense", dense_attention)
register_kernel("local", local_attention)

__all__ = ["dense_attention", "local_attention", "strided_attention", "causal_mask", "local_mask", "get_kernel",
           "kernel_names", "register_kernel", "get_decoder", "register_decoder"]
