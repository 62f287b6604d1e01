"""The Toeplitz form of the relative terms: skew and unskew against their index formula, and each other's
transpose; the table rows of a block's distances and their gradient."""

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


def test_toeplitz_rows_hold_the_clipped_distances():
    table = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)  # max_relative_position 3
    rows = relative.toeplitz_rows(tf.constant(table), queries=3, keys=4, offset=-2).numpy()
    # Row r is distance r - 2 - 2 for r in 0..5: -4 (clipped to -3), -3, -2, -1, 0, 1.
    np.testing.assert_array_equal(rows, table[[0, 0, 1, 2, 3, 4]])


def test_toeplitz_rows_gradient_is_the_gradient_of_the_gather():
    """Clipped distances share a table row: their gradients add up there, as automatic differentiation's."""
    rng = np.random.default_rng(3)
    table = tf.constant(rng.standard_normal((7, 2)), tf.float32)
    grad_rows = tf.constant(rng.standard_normal((6, 2)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(table)
        rows = relative.toeplitz_rows(table, queries=3, keys=4, offset=-2)
    want = tf.convert_to_tensor(tape.gradient(rows, table, output_gradients=grad_rows)).numpy()
    got = relative.toeplitz_rows_gradient(grad_rows, table, queries=3, keys=4, offset=-2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got[0], grad_rows.numpy()[0] + grad_rows.numpy()[1], rtol=1e-6)


def test_skew_rejects_a_wrong_width():
    with pytest.raises(ValueError, match="queries \\+ keys - 1"):
        relative.skew(tf.zeros((2, 4)), 4)
