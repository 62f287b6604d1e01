"""Dense (full) attention: the reference every other kernel of the zoo is tested against."""

import math

from keras import ops

from common.attention import checks, masks, relative
from common.attention.softmax import masked_softmax


def dense_attention(q, k, v, *, causal=True, bias=None, mask=None, scale=None, relative_keys=None,
                    relative_values=None, dropout_rate=0.0, seed=None):
    """Softmax attention over all keys, O(q_length x k_length) time and memory.

    Args:
      q, k: [batch, heads, length, key_dim]. v: [batch, heads, k_length, value_dim].
      causal: query i sees key j iff j <= i + (k_length - q_length), so a short q can be the newest
        positions of a longer k (incremental decoding).
      bias: float logits bias broadcastable to [batch, heads, q_length, k_length].
      mask: boolean, True = may attend, broadcastable to [batch, heads, q_length, k_length].
      scale: logits multiplier; default 1 / sqrt(key_dim).
      relative_keys, relative_values: optional Shaw relative tables [2m + 1, key_dim / value_dim]. The
        dense path gathers a [q_length, k_length, dim] slab: a reference, not a fast path.
      dropout_rate, seed: dropout on the attention probabilities (pass a rate only when training).

    Returns:
      [batch, heads, q_length, value_dim] in v's dtype. The softmax runs in float32; rows with no visible
      key are zero.
    """
    checks.check_qkv(q, k, v)
    relative.check_relative_tables(relative_keys, relative_values, q.shape[-1], v.shape[-1])
    if mask is not None:
        checks.check_mask(mask, q, k)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    logits = ops.cast(ops.einsum("bhqd,bhkd->bhqk", q, k), "float32")
    q_length, k_length = ops.shape(q)[2], ops.shape(k)[2]
    distances = None
    if relative_keys is not None or relative_values is not None:
        q_positions = ops.arange(q_length) + (k_length - q_length)
        distances = ops.arange(k_length)[None, :] - q_positions[:, None]
    if relative_keys is not None:
        rel_k = relative.relative_embeddings(relative_keys, distances)
        logits = logits + ops.cast(ops.einsum("bhqd,qkd->bhqk", q, ops.cast(rel_k, q.dtype)), "float32")
    logits = logits * scale
    if bias is not None:
        logits = logits + ops.cast(bias, "float32")
    keep = None
    if causal:
        keep = masks.causal_mask(q_length, k_length)
    if mask is not None:
        mask = ops.cast(mask, "bool")
        keep = mask if keep is None else ops.logical_and(keep, mask)
    weights = masked_softmax(logits, keep, dropout_rate, seed)
    out = ops.einsum("bhqk,bhkd->bhqd", ops.cast(weights, v.dtype), v)
    if relative_values is not None:
        rel_v = ops.cast(relative.relative_embeddings(relative_values, distances), v.dtype)
        out = out + ops.einsum("bhqk,qkd->bhqd", ops.cast(weights, v.dtype), rel_v)
    return out
