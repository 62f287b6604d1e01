"""`block_sparse_attention`: attention driven by a block layout, as in OpenAI's blocksparse and DeepSpeed.

The layout is a boolean array [heads (or 1), query_blocks, key_blocks] (see `examples.block_layouts.layouts`
for DeepSpeed-style ones). Each query block gathers only its active key blocks, padded to the largest count of
any row, so time and memory are O(length x active blocks per row x block_size), never length x length. Inside the
active blocks an exact element mask applies: causality (j <= i) when `causal`, and `keep` when given (e.g. a
stride or summary that is not a multiple of the block). As in DeepSpeed, a layout built for a maximum length
serves every shorter one: the length is padded to whole blocks and the layout cut to them.
"""

import math

import numpy as np
from keras import ops

from common.attention import checks
from common.attention.softmax import masked_softmax


def active_blocks(layout):
    """Per (head, query block) the active key blocks, padded to the longest row: indices and validity."""
    counts = layout.sum(axis=-1)
    width = max(int(counts.max()), 1)
    indices = np.zeros(layout.shape[:2] + (width,), dtype="int32")
    valid = np.zeros(layout.shape[:2] + (width,), dtype=bool)
    for head in range(layout.shape[0]):
        for row in range(layout.shape[1]):
            columns = np.flatnonzero(layout[head, row])
            indices[head, row, :len(columns)] = columns
            valid[head, row, :len(columns)] = True
    return indices, valid


def block_sparse_attention(q, k, v, *, layout, block_size, causal=True, keep=None, scale=None, dropout_rate=0.0,
                           seed=None):
    """Attention over the active blocks of `layout`; equals dense attention with the expanded mask.

    Args:
      q, k: [batch, heads, length, key_dim]. v: [batch, heads, length, value_dim]. Self-attention only, with a
        static length.
      layout: boolean array-like [heads or 1, query_blocks, key_blocks] (or [query_blocks, key_blocks]),
        square, covering at least ceil(length / block_size) blocks.
      block_size: positions per block.
      causal: also mask j > i inside the active blocks.
      keep: optional `keep(query_positions, key_positions, heads) -> bool` on broadcastable integer tensors
        (heads is [heads, 1, 1, 1]), the exact element mask inside active blocks.
      scale: logits multiplier; default 1 / sqrt(key_dim).
      dropout_rate, seed: dropout on the attention probabilities.

    Returns:
      [batch, heads, length, value_dim]. Rows with no visible key are zero.
    """
    checks.check_qkv(q, k, v)
    checks.check_self_attention(q, k)
    checks.check_positive_int("block_size", block_size)
    layout = np.asarray(layout, dtype=bool)
    if layout.ndim == 2:
        layout = layout[None]
    heads, length = q.shape[1], q.shape[2]
    if layout.ndim != 3 or layout.shape[1] != layout.shape[2]:
        raise ValueError(f"layout must be [heads, query_blocks, key_blocks] with as many key as query blocks; "
                         f"got shape {layout.shape}.")
    if layout.shape[0] not in (1, heads):
        raise ValueError(f"layout has {layout.shape[0]} heads but q has {heads}; give one layout per head or one "
                         f"for all.")
    if length is None:
        raise ValueError("block_sparse_attention needs a static length (the layout is cut to it).")
    num_blocks = -(-length // block_size)
    if num_blocks > layout.shape[1]:
        raise ValueError(f"length {length} needs {num_blocks} blocks of block_size {block_size} but the layout "
                         f"covers only {layout.shape[1]} blocks ({layout.shape[1] * block_size} positions); "
                         f"build the layout for the longest length.")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    indices, valid = active_blocks(layout[:, :num_blocks, :num_blocks])
    width = indices.shape[-1]

    padded = num_blocks * block_size
    batch = ops.shape(q)[0]
    q, k, v = (ops.pad(x, [[0, 0], [0, 0], [0, padded - length], [0, 0]]) for x in (q, k, v))

    def gather(x):
        """[b, h, N, d] -> [b, h, blocks, width x block_size, d]: each query block's active key blocks."""
        d = x.shape[-1]
        flat = ops.reshape(x, (batch, heads, num_blocks, block_size * d))
        if indices.shape[0] == 1:
            picked = ops.take(flat, ops.convert_to_tensor(indices[0].reshape(-1)), axis=2)
        else:
            index = ops.broadcast_to(ops.convert_to_tensor(indices.reshape(heads, -1))[None, :, :, None],
                                     (batch, heads, num_blocks * width, block_size * d))
            picked = ops.take_along_axis(flat, index, axis=2)
        return ops.reshape(picked, (batch, heads, num_blocks, width * block_size, d))

    q_blocks = ops.reshape(q, (batch, heads, num_blocks, block_size, q.shape[-1]))
    logits = ops.cast(ops.einsum("bhnqd,bhnkd->bhnqk", q_blocks, gather(k)), "float32") * scale

    query = ops.reshape(ops.arange(padded), (num_blocks, block_size, 1))
    key_blocks = ops.convert_to_tensor(indices)[..., None] * block_size + ops.arange(block_size)
    key = ops.reshape(key_blocks, (indices.shape[0], num_blocks, 1, width * block_size))
    block_valid = ops.convert_to_tensor(np.repeat(valid, block_size, axis=-1))[:, :, None, :]
    mask = block_valid & (key < length)
    if causal:
        mask = mask & (key <= query)
    if keep is not None:
        mask = mask & keep(query, key, ops.reshape(ops.arange(heads), (heads, 1, 1, 1)))
    weights = ops.cast(masked_softmax(logits, mask, dropout_rate, seed), v.dtype)
    out = ops.einsum("bhnqk,bhnkd->bhnqd", weights, gather(v))
    return ops.reshape(out, (batch, heads, padded, v.shape[-1]))[:, :, :length]
