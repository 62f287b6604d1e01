"""Strided attention: every query attends to the keys at its own offset inside blocks of `stride` positions,
i = p, p - stride, p - 2 stride, ... (and, when not causal, p + stride, ...).

The Routing Transformer's strided heads (`sparsity_strided_num_heads`, the original's
`strided_local_attention_helper`): the sequence is cut into blocks of `stride` (its `query_shape`) and position
o of every block attends to position o of the blocks before it and its own, with the usual 1/sqrt(d) scale
and no relative positions (the original's `sparsity_strided_relative` is off in every configuration). This
is the Sparse Transformer's strided pattern without its local part.

Computed as dense attention over the transposed blocks, [stride, length / stride] per head: O(length^2 /
stride) time and memory, never a length x length tensor. A length that is not a multiple of `stride` is
zero-padded at the end; padded keys come after every real query, so causal attention never sees them, and the
bidirectional case masks them.
"""

from keras import ops

from common import kv_cache
from common.attention import checks
from common.attention.decoding import (attend_gathered, register_decoder, require_causal, start_key_value_cache,
                                       write_key_value)
from common.attention.dense import dense_attention
from common.attention.registry import register_kernel


def strided_attention(q, k, v, *, stride, causal=True, scale=None, dropout_rate=0.0, seed=None):
    """Attention of each position to the positions at a multiple of `stride` from it.

    Args:
      q, k: [batch, heads, length, key_dim]; v: [batch, heads, length, value_dim].
      stride: block size; position p sees positions p - j x stride (j >= 0; j < 0 too when not causal).
      causal, scale, dropout_rate, seed: as in `dense_attention`.

    Returns:
      [batch, heads, length, value_dim].
    """
    checks.check_qkv(q, k, v)
    checks.check_self_attention(q, k)
    checks.check_positive_int("stride", stride)
    batch, heads, length = ops.shape(q)[0], ops.shape(q)[1], ops.shape(q)[2]
    extra = (-length) % stride
    blocks = (length + extra) // stride

    def by_offset(x):
        """[b, h, length, d] -> [b, h x stride, blocks, d]: one sequence per offset inside the blocks."""
        x = ops.pad(x, [[0, 0], [0, 0], [0, extra], [0, 0]])
        x = ops.reshape(x, (batch, heads, blocks, stride, x.shape[-1]))
        return ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4)), (batch, heads * stride, blocks, x.shape[-1]))

    mask = None
    if not causal:  # the padded keys: (offset o, block j) is position j x stride + o
        real = ops.transpose(ops.reshape(ops.arange(blocks * stride) < length, (blocks, stride)))
        mask = ops.tile(real, (heads, 1))[None, :, None, :]
    out = dense_attention(by_offset(q), by_offset(k), by_offset(v), causal=causal, mask=mask, scale=scale,
                          dropout_rate=dropout_rate, seed=seed)
    out = ops.reshape(out, (batch, heads, stride, blocks, v.shape[-1]))
    out = ops.reshape(ops.transpose(out, (0, 1, 3, 2, 4)), (batch, heads, blocks * stride, v.shape[-1]))
    return out[:, :, :length]


def strided_step(x, q, k, v, cache, position, *, stride, causal=True, scale=None, **unused_training_options):
    """The new token against the cached positions at its offset: O(position / stride) per step."""
    require_causal(causal, "strided")
    checks.check_positive_int("stride", stride)
    cache = write_key_value(cache, k, v, position)
    positions = position - stride * ops.arange(position // stride + 1)
    keys, values = kv_cache.read(cache["keys"], positions), kv_cache.read(cache["values"], positions)
    return attend_gathered(q, keys, values, positions, position, scale=scale), cache


register_kernel("strided", strided_attention)
register_decoder("strided", start_key_value_cache, strided_step)
