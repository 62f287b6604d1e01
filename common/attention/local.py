"""Blocked local attention, as in the Routing Transformer's local heads.

The sequence is cut into blocks of `block_size` queries. A query block attends to its own block (causally
when `causal`), to `look_back` previous blocks and, when bidirectional, to `look_ahead` next blocks. Keys are
gathered per block into a window of (look_back + 1 + look_ahead) blocks, so time and memory are
O(length x window): no length x length tensor is ever built. A length that is not a multiple of the block is
padded inside and the output cut; padded keys are masked out.
"""

import math

from keras import ops

from common.attention import checks, masks, relative
from common.attention.softmax import masked_softmax


def local_attention(q, k, v, *, block_size, look_back=1, look_ahead=None, causal=True, scale=None,
                    relative_keys=None, relative_values=None, segment_ids=None, max_distance=None,
                    dropout_rate=0.0, seed=None):
    """Local attention in blocks; equals `dense_attention` with `masks.local_mask(...)`.

    Args:
      q, k: [batch, heads, length, key_dim]. v: [batch, heads, length, value_dim].
      block_size: queries per block (the original's `query_shape`).
      look_back: previous blocks each block sees (the original's `memory_flange / query_shape`).
      look_ahead: next blocks each block sees when `causal=False`; default `look_back`.
      causal: query i never sees key j > i.
      scale: logits multiplier; default 1 / sqrt(key_dim).
      relative_keys, relative_values: optional Shaw tables [2m + 1, dim]; the distance j - i inside a window
        is the same for every block, so one [block, window, dim] slab serves all blocks.
      segment_ids: optional int [batch, heads, length]; a query sees only keys of its own segment (packed
        documents, or the clusters of causal routing).
      max_distance: optional; a query sees only keys with |i - j| < max_distance (a sliding window inside
        the blocked one).
      dropout_rate, seed: dropout on the attention probabilities.

    Returns:
      [batch, heads, length, value_dim].
    """
    checks.check_qkv(q, k, v)
    checks.check_self_attention(q, k)
    checks.check_positive_int("block_size", block_size)
    checks.check_positive_int("look_back", look_back, minimum=0)
    look_ahead = masks.resolve_look_ahead(look_ahead, look_back, causal)
    checks.check_positive_int("look_ahead", look_ahead, minimum=0)
    if max_distance is not None:
        checks.check_positive_int("max_distance", max_distance)
    if segment_ids is not None and len(segment_ids.shape) != 3:
        raise ValueError(f"segment_ids must be [batch, heads, length]; got shape {tuple(segment_ids.shape)}.")
    relative.check_relative_tables(relative_keys, relative_values, q.shape[-1], v.shape[-1])
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])

    batch, heads, length = ops.shape(q)[0], ops.shape(q)[1], ops.shape(q)[2]
    num_blocks = (length + block_size - 1) // block_size
    padding = num_blocks * block_size - length
    window = (look_back + 1 + look_ahead) * block_size

    def query_blocks(x):
        """[b, h, length, ...] -> [b, h, blocks, block_size, ...]."""
        x = ops.pad(x, [[0, 0], [0, 0], [0, padding]] + [[0, 0]] * (len(x.shape) - 3))
        return ops.reshape(x, (batch, heads, num_blocks, block_size) + tuple(x.shape[3:]))

    def key_windows(x):
        """[b, h, length, ...] -> [b, h, blocks, window, ...]: each block's keys, previous blocks first."""
        rest = tuple(x.shape[3:])
        x = ops.pad(x, [[0, 0], [0, 0], [look_back * block_size, padding + look_ahead * block_size]] +
                    [[0, 0]] * len(rest))
        x = ops.reshape(x, (batch, heads, num_blocks + look_back + look_ahead, block_size) + rest)
        shifted = [x[:, :, offset:offset + num_blocks] for offset in range(look_back + 1 + look_ahead)]
        return ops.reshape(ops.concatenate(shifted, axis=3), (batch, heads, num_blocks, window) + rest)

    q_blocks, k_windows, v_windows = query_blocks(q), key_windows(k), key_windows(v)
    logits = ops.cast(ops.einsum("bhnqd,bhnkd->bhnqk", q_blocks, k_windows), "float32")

    # Offsets of window slots relative to each query: the same for every block.
    distances = ops.arange(window)[None, :] - look_back * block_size - ops.arange(block_size)[:, None]
    if relative_keys is not None:
        rel_k = ops.cast(relative.relative_embeddings(relative_keys, distances), q.dtype)
        logits = logits + ops.cast(ops.einsum("bhnqd,qkd->bhnqk", q_blocks, rel_k), "float32")

    block_starts = ops.arange(num_blocks) * block_size
    key_positions = block_starts[:, None] + ops.arange(window)[None, :] - look_back * block_size
    keep = ops.logical_and(key_positions >= 0, key_positions < length)[:, None, :]
    if causal:
        keep = ops.logical_and(keep, (distances <= 0)[None])
    if max_distance is not None:
        keep = ops.logical_and(keep, (ops.abs(distances) < max_distance)[None])
    if segment_ids is not None:
        same = query_blocks(segment_ids)[..., :, None] == key_windows(segment_ids)[..., None, :]
        keep = ops.logical_and(keep, same)
    weights = masked_softmax(logits * scale, keep, dropout_rate, seed)
    weights = ops.cast(weights, v.dtype)
    out = ops.einsum("bhnqk,bhnkd->bhnqd", weights, v_windows)
    if relative_values is not None:
        rel_v = ops.cast(relative.relative_embeddings(relative_values, distances), v.dtype)
        out = out + ops.einsum("bhnqk,qkd->bhnqd", weights, rel_v)
    out = ops.reshape(out, (batch, heads, num_blocks * block_size, v.shape[-1]))
    return out[:, :, :length]
