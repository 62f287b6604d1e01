"""Shared layer library of the efficient-attention zoo: kernels, layers, k-means, the decoder LM.

Importing it asks TensorFlow for its oneDNN CPU kernels unless the environment already says
(`TF_ENABLE_ONEDNN_OPTS`, read when TensorFlow is first imported). TensorFlow turns them on by itself only on
CPUs with AVX-512 VNNI / BF16 or AMX; on an AVX2 CPU they make the batched matmuls of the attention kernels
about 4x and a small model's training step about 1.3x faster (benchmarks/results/small_models.md). The other
backends ignore the variable. The packages above the library import it before anything imports TensorFlow.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
