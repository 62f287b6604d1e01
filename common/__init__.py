"""Shared layer library of the efficient-attention zoo: kernels, layers, k-means, the decoder LM."""
