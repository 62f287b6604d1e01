"""The Toeplitz form of the relative terms: skew and unskew against their index formula, and each other's
transpose; a block's distinct table rows, widened to every distance and summed back, and their gradient."""

import numpy as np
import pytest
import tensorflow as tf

from common.attention import relative


@pytest.mark.parametrize("queries,keys", [(1, 1), (1, 5), (2, 2), (4, 8), (8, 4), (5, 7)])
def test_skew_reads_the_distance_of_every_entry(queries, keys):
    scores = np.random.default_rng(queries * 10 + keys).standard_normal((2, 3, queries, queries + keys - 1))
    got = relative.skew(tf.constant(scores, tf.float32), keys).numpy()
    want = np.zeros((2, 3, queries, keys))
    for i in range(queries):
        for j in range(keys):
            want[..., i, j] = scores[..., i, j - i + queries - 1]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("queries,keys", [(1, 3), (2, 2), (4, 8), (8, 4), (5, 7)])
def test_unskew_is_the_transpose_of_skew(queries, keys):
    rng = np.random.default_rng(queries + keys)
    a = rng.standard_normal((3, queries, queries + keys - 1)).astype(np.float32)
    b = rng.standard_normal((3, queries, keys)).astype(np.float32)
    unskewed = relative.unskew(tf.constant(b)).numpy()
    np.testing.assert_allclose(np.sum(relative.skew(tf.constant(a), keys).numpy() * b), np.sum(a * unskewed),
                               rtol=1e-5)
    # Every entry of b lands once, at its distance; the rest are zero.
    assert np.count_nonzero(unskewed) == np.count_nonzero(b)
    np.testing.assert_array_equal(relative.skew(tf.constant(unskewed), keys).numpy(), b)


# (queries, keys, offset, m, causal)
BLOCKS = [
    (3, 4, -2, 3, False),  # one distance clipped
    (4, 8, -4, 1, True),  # causal, most distances clipped
    (4, 4, 0, 10, False),  # a table wider than the block
    (4, 4, 0, 10, True),
    (2, 6, 3, 1, False),  # every distance clipped above
    (4, 4, -8, 2, True),  # every distance clipped below
    (2, 2, 3, 2, True),  # nothing kept
]


def _distances(queries, keys, offset, m, causal):
    return relative.block_distances(tf.zeros((2 * m + 1, 1)), queries, keys, offset, causal)


@pytest.mark.parametrize("queries,keys,offset,m,causal", BLOCKS)
def test_expand_gives_every_distance_its_clipped_table_row(queries, keys, offset, m, causal):
    table = np.arange((2 * m + 1) * 2, dtype=np.float32).reshape(2 * m + 1, 2) + 1
    distances = relative.block_distances(tf.constant(table), queries, keys, offset, causal)
    rows = distances.table_rows(tf.constant(table), "float32")
    got = tf.transpose(distances.expand(tf.transpose(rows))).numpy()
    want = np.stack([table[min(max(d, -m), m) + m] for d in range(offset - queries + 1, offset + keys)])
    if causal:
        want[np.arange(offset - queries + 1, offset + keys) > max(0, offset - queries + 1)] = 0
    np.testing.assert_array_equal(got, want)
    # Each row is read by some distance, once: the matmuls skip no row and repeat none.
    assert len(np.unique(rows.numpy(), axis=0)) == len(rows)


def test_a_causal_window_reads_only_the_rows_at_or_below_zero():
    """The Routing Transformer's local heads: two blocks of 128, m = 128: 129 rows of the 383 distances."""
    distances = _distances(128, 256, -128, 128, True)
    assert (distances.lowest, distances.highest, distances.first, distances.last) == (-255, 127, -128, 0)


@pytest.mark.parametrize("queries,keys,offset,m,causal", BLOCKS)
def test_reduce_is_the_transpose_of_expand(queries, keys, offset, m, causal):
    distances = _distances(queries, keys, offset, m, causal)
    rng = np.random.default_rng(queries + keys + m)
    a = rng.standard_normal((3, distances.last - distances.first + 1)).astype(np.float32)
    b = rng.standard_normal((3, queries + keys - 1)).astype(np.float32)
    np.testing.assert_allclose(np.sum(distances.expand(tf.constant(a)).numpy() * b),
                               np.sum(a * distances.reduce(tf.constant(b)).numpy()), rtol=1e-5)


@pytest.mark.parametrize("queries,keys,offset,m,causal", BLOCKS[:3])
def test_table_gradient_is_the_gradient_of_the_rows(queries, keys, offset, m, causal):
    rng = np.random.default_rng(3)
    table = tf.constant(rng.standard_normal((2 * m + 1, 2)), tf.float32)
    distances = relative.block_distances(table, queries, keys, offset, causal)
    grad_rows = tf.constant(rng.standard_normal((distances.last - distances.first + 1, 2)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(table)
        rows = distances.table_rows(table, "float32")
    want = tf.convert_to_tensor(tape.gradient(rows, table, output_gradients=grad_rows)).numpy()
    np.testing.assert_array_equal(distances.table_gradient(grad_rows, table).numpy(), want)


def test_skew_rejects_a_wrong_width():
    with pytest.raises(ValueError, match="queries \\+ keys - 1"):
        relative.skew(tf.zeros((2, 4)), 4)
