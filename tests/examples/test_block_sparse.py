"""block_sparse_attention: equal to dense attention under the expanded layout (random per-head and shared
layouts, causal and bidirectional, lengths shorter than the layout), equal to sparse_attention with a pattern's
pooled layout and exact `keep`, the released fixed layout's block count, and the layout checks."""

import numpy as np
import pytest
import tensorflow as tf

from common.attention import dense_attention
from examples.block_layouts import block_sparse_attention
from sparse_transformer import attention_mask, sparse_attention

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1:UserWarning")

TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(seed, length, heads, batch=2, key_dim=4, value_dim=3):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.standard_normal((batch, heads, length, dim)).astype(np.float32))
            for dim in (key_dim, key_dim, value_dim)]


def _expanded(layout, block_size, length, causal):
    """The element mask of a layout: each active block all True, cut to `length`, then j <= i if causal."""
    layout = np.asarray(layout, bool)
    mask = np.kron(layout, np.ones((block_size, block_size), bool))[:, :length, :length]
    return mask & np.tril(np.ones((length, length), bool)) if causal else mask


def _random_layout(seed, heads, blocks):
    layout = np.random.default_rng(seed).random((heads, blocks, blocks)) < 0.4
    layout[0, 1] = False  # a query block with no key: its rows are zero
    return layout


# (heads, layout heads, layout blocks, block_size, length)
LAYOUT_CASES = [(2, 2, 4, 4, 16), (2, 1, 4, 4, 16), (3, 3, 5, 3, 11), (2, 1, 6, 4, 9), (4, 4, 3, 5, 15),
                (2, 2, 8, 2, 5)]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("heads,layout_heads,blocks,block_size,length", LAYOUT_CASES,
                         ids=[f"{h}h-layout{lh}x{b}-bs{bs}-n{n}" for h, lh, b, bs, n in LAYOUT_CASES])
def test_equals_dense_attention_under_the_expanded_layout(heads, layout_heads, blocks, block_size, length,
                                                          causal):
    layout = _random_layout(blocks * 10 + block_size, layout_heads, blocks)
    q, k, v = _inputs(length, length, heads)
    got = block_sparse_attention(q, k, v, layout=layout, block_size=block_size, causal=causal)
    mask = np.broadcast_to(_expanded(layout, block_size, length, causal), (heads, length, length))
    want = dense_attention(q, k, v, causal=False, mask=tf.constant(mask)[None])
    assert got.shape == (2, heads, length, 3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_gradients_equal_dense_attention_under_the_expanded_layout(causal):
    heads, length, block_size = 2, 14, 4
    layout = _random_layout(3, heads, 4)
    q, k, v = _inputs(4, length, heads)
    mask = tf.constant(_expanded(layout, block_size, length, causal))[None]
    grads = []
    for fn in (lambda *x: block_sparse_attention(*x, layout=layout, block_size=block_size, causal=causal),
               lambda *x: dense_attention(*x, causal=False, mask=mask)):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = tf.reduce_sum(fn(q, k, v) * tf.range(length, dtype=tf.float32)[:, None])
        grads.append(tape.gradient(loss, [q, k, v]))
    for name, got, want in zip("qkv", *grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), err_msg=name, **TOL)


def test_two_dimensional_layout_is_shared_by_every_head():
    layout = _random_layout(5, 1, 4)
    q, k, v = _inputs(6, 16, 3)
    np.testing.assert_allclose(np.asarray(block_sparse_attention(q, k, v, layout=layout[0], block_size=4)),
                               np.asarray(block_sparse_attention(q, k, v, layout=np.repeat(layout, 3, 0),
                                                                 block_size=4)), **TOL)


def test_a_layout_for_a_longer_length_serves_a_shorter_one():
    """The layout is cut to the blocks the length needs: the output equals the first positions of the same
    causal attention on a longer sequence with the same prefix."""
    layout = _random_layout(7, 2, 6)
    q, k, v = _inputs(8, 24, 2)
    full = np.asarray(block_sparse_attention(q, k, v, layout=layout, block_size=4))
    for length in (5, 12, 17):
        cut = block_sparse_attention(q[:, :, :length], k[:, :, :length], v[:, :, :length], layout=layout,
                                     block_size=4)
        np.testing.assert_allclose(np.asarray(cut), full[:, :, :length], err_msg=f"length={length}", **TOL)


def _pooled_layout(mask, block_size):
    """Max-pool a [heads, n, n] element mask to [heads, blocks, blocks] (xformers' pattern_to_layout)."""
    heads, length = mask.shape[0], mask.shape[-1]
    blocks = -(-length // block_size)
    padded = np.zeros((heads, blocks * block_size, blocks * block_size), bool)
    padded[:, :length, :length] = mask
    return padded.reshape(heads, blocks, block_size, blocks, block_size).any(axis=(2, 4))


def _fixed_keep(stride, summary, num_summary_patterns):
    """The fixed pattern's predicate (block or summary), written here in TF."""
    def keep(query, key, heads):
        first = stride - (heads % num_summary_patterns + 1) * summary
        offset = key % stride
        return (query // stride == key // stride) | ((offset >= first) & (offset < first + summary))
    return keep


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("length,stride,summary,block_size", [(24, 6, 1, 4), (30, 8, 3, 4), (19, 8, 3, 2)])
def test_pooled_pattern_layout_with_keep_equals_sparse_attention(length, stride, summary, block_size, causal):
    """Fixed with a summary (and a stride) that is no multiple of the block: the pooled layout over-covers,
    `keep` cuts it back to the exact pattern."""
    heads, num_summary_patterns = 4, 2
    options = dict(pattern="fixed", stride=stride, summary=summary, causal=causal,
                   num_summary_patterns=num_summary_patterns)
    mask = np.asarray(attention_mask(length, num_heads=heads, **options))
    layout = _pooled_layout(mask, block_size)
    assert layout.sum() * block_size ** 2 > mask.sum()  # the blocks alone cover more than the pattern
    q, k, v = _inputs(length, length, heads)
    got = block_sparse_attention(q, k, v, layout=layout, block_size=block_size, causal=causal,
                                 keep=_fixed_keep(stride, summary, num_summary_patterns))
    np.testing.assert_allclose(np.asarray(got), np.asarray(sparse_attention(q, k, v, **options)), **TOL)


def test_released_fixed_layout_has_192_blocks_per_head():
    """Section 1.5: fixed at n=1024, l=128, c=32, 4 heads with distinct summaries, blocks of 32: 192 active
    blocks per head (equal across heads, as blocksparse requires)."""
    mask = np.asarray(attention_mask(1024, pattern="fixed", stride=128, summary=32, num_heads=4,
                                     num_summary_patterns=4))
    layout = _pooled_layout(mask, 32)
    assert layout.reshape(4, -1).sum(-1).tolist() == [192] * 4
    np.testing.assert_array_equal(_expanded(layout, 32, 1024, True), mask)  # exact at block granularity


def test_rows_with_no_visible_key_are_zero():
    layout = np.zeros((1, 3, 3), bool)
    layout[0, 2, 0] = True
    q, k, v = _inputs(9, 12, 2)
    out = np.asarray(block_sparse_attention(q, k, v, layout=layout, block_size=4))
    assert (out[:, :, :8] == 0).all() and np.abs(out[:, :, 8:]).min() > 0


@pytest.mark.parametrize("layout,block_size,match", [
    (np.ones((2, 3, 3)), 4, r"length 16 needs 4 blocks of block_size 4 but the layout covers only 3 blocks "
                            r"\(12 positions\)"),
    (np.ones((1, 2, 2)), 4, r"needs 4 blocks .* covers only 2 blocks"),
    (np.ones((3, 4, 4)), 4, r"layout has 3 heads but q has 2"),
    (np.ones((2, 4, 5)), 4, r"as many key as query blocks; got shape \(2, 4, 5\)"),
    (np.ones((4,)), 4, r"layout must be \[heads, query_blocks, key_blocks\]"),
    (np.ones((1, 1, 4, 4)), 4, r"layout must be \[heads, query_blocks, key_blocks\]"),
    (np.ones((1, 4, 4)), 0, r"block_size must be an integer >= 1; got 0"),
], ids=["too_short", "much_too_short", "head_count", "non_square", "rank_1", "rank_4", "block_size"])
def test_bad_layouts_raise(layout, block_size, match):
    q, k, v = _inputs(0, 16, 2)
    with pytest.raises(ValueError, match=match):
        block_sparse_attention(q, k, v, layout=layout, block_size=block_size)


def test_static_length_is_required():
    spec = tf.TensorSpec([1, 2, None, 4], tf.float32)
    with pytest.raises(ValueError, match=r"static length"):
        tf.function(lambda q, k, v: block_sparse_attention(q, k, v, layout=np.ones((1, 4, 4)), block_size=4)
                    ).get_concrete_function(spec, spec, spec)
