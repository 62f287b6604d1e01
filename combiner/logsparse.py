"""Combiner-Logsparse (paper section 4.2; JAX `_SelfAttLogn`, not in the TF release). Causal only.

Level l cuts the sequence into aligned blocks of 2^l tokens. Query p attends directly to itself and, at every
level l where bit l of p is set (floor(p / 2^l) odd), to the block just before its own level-l block as one
region. These blocks are the binary decomposition of [0, p): p = 6 sees {6}, [4, 6), [0, 4). Level 0 is the
single token p - 1 (direct, the paper's "i - 1 when i is even", 1-indexed). A block's key is the max of its
keys; its value is its local expectation under the max of its queries. Logits per query: 1 + levels; O(L) block
summaries per level; cost O(L log L).

Number of levels: bit_length(L - 1), the fewest that reach position 0 from every position. The JAX release uses
ceil(log2(L - 1)), one short when L - 1 is a power of two (there, with L = 9, position 8 sees only itself; with
L = 2 position 1 never sees 0), which breaks full attention; this follows the paper.

A length known only at run time (a serving signature) needs a bound `max_length`: the kernel then runs the
levels of `max_length` with block counts computed from the run-time length. A level with 2^l >= length is a
no-op (no position below 2^l has bit l set: its logits are masked, its one block has no predecessor), so the
output is the static one. A longer run-time length fails a TensorFlow check (`checked_length`); only
TensorFlow graphs have run-time lengths, so TensorFlow is imported only there and the kernel runs on any Keras
backend.
"""

from keras import ops

from combiner.cummax import shift
from combiner.joint import joint_softmax
from combiner.summaries import local_expectation


def num_levels(length):
    """Levels of region blocks (2^0 .. 2^(levels - 1) tokens) that cover [0, p) for every p < length."""
    return max(length - 1, 0).bit_length()


def checked_length(x, max_length):
    """The run-time length of x [batch, heads, length, dim], checked to be at most `max_length` (a TensorFlow
    graph's; other backends have static shapes)."""
    import tensorflow as tf  # a run-time length exists only in a TensorFlow graph: TensorFlow is loaded

    length = tf.shape(x)[2]
    check = tf.debugging.assert_less_equal(
        length, max_length, message=f"Combiner-Logsparse got a sequence longer than its max_length {max_length}")
    with tf.control_dependencies([check]):
        return tf.identity(length)


def block_summaries(qb, kb, vb, dropout_rate=0.0, seed=None):
    """The abstraction of each block of [batch, heads, blocks, size, dim]: key = max of its keys, value = its
    local expectation under the max of its queries. Returns ([b, h, blocks, key_dim], [b, h, blocks, value_dim]).
    """
    return ops.max(kb, axis=3), local_expectation(ops.max(qb, axis=3), kb, vb, None, dropout_rate, seed)


def logsparse_attention(q, k, v, *, causal=True, max_length=None, dropout_rate=0.0, seed=None):
    """Combiner-Logsparse on pre-scaled queries of any length (blocks are padded inside); a length known only at
    run time needs `max_length`, the longest it may be (checked when run).

    Called by `combiner.attention.combiner_attention`, which checks and scales.
    """
    if not causal:
        raise ValueError("variant 'logsparse' is causal only: the paper defers its bidirectional form to an "
                         "appendix that was not released; use 'fixed', 'axial' or 'mixture' with causal=False.")
    batch, heads, length = ops.shape(q)[0], ops.shape(q)[1], q.shape[2]
    if length is None:
        if max_length is None:
            raise ValueError("variant 'logsparse' needs a static sequence length or max_length, the longest "
                             "length it will be called with (its number of levels depends on it).")
        levels, length = num_levels(max_length), checked_length(q, max_length)
    else:
        levels = num_levels(length)
    positions = ops.arange(length)
    parts = [(ops.sum(q * k, axis=-1, keepdims=True), None)]  # the direct self logit
    region_values = []
    for level in range(levels):
        size = 2 ** level
        blocks = -(-length // size)

        def to_blocks(x):
            x = ops.pad(x, [[0, 0], [0, 0], [0, blocks * size - length], [0, 0]])
            return ops.reshape(x, (batch, heads, blocks, size, x.shape[-1]))

        qb, kb, vb = to_blocks(q), to_blocks(k), to_blocks(v)
        if size == 1:  # a block of one token is the token itself (no summary, as in JAX)
            key_bar, value_bar = kb[:, :, :, 0], vb[:, :, :, 0]
        else:  # a padded last block is never used: only blocks before a query's own block are.
            key_bar, value_bar = block_summaries(qb, kb, vb, dropout_rate, seed)
        key_prev, value_prev = shift(key_bar, 2), shift(value_bar, 2)  # each block sees the block before it
        logits = ops.reshape(ops.einsum("bhnsd,bhnd->bhns", qb, key_prev), (batch, heads, blocks * size))
        keep = ((positions // size) % 2 == 1)[:, None]
        parts.append((logits[:, :, :length, None], keep))
        region_values.append(value_prev)

    weights = joint_softmax(parts, direct=2, dropout_rate=dropout_rate, seed=seed)  # self and p - 1 are direct
    out = ops.cast(weights[0], v.dtype) * v
    for level, (w, value_prev) in enumerate(zip(weights[1:], region_values)):
        size = 2 ** level
        blocks = -(-length // size)
        w = ops.pad(ops.cast(w, v.dtype), [[0, 0], [0, 0], [0, blocks * size - length], [0, 0]])
        w = ops.reshape(w, (batch, heads, blocks, size, 1))
        spread = ops.reshape(w * value_prev[:, :, :, None, :], (batch, heads, blocks * size, v.shape[-1]))
        out = out + spread[:, :, :length]
    return out
