"""FactorizedPositionEmbedding: mixed-radix sum of per-axis tables, offset, maximum length."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.layers import FactorizedPositionEmbedding
from tests.layer_checks import run_layer_checks

DIM = 8


def _inputs(length, batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, length, DIM)).astype(np.float32)


def _built(axis_sizes):
    layer = FactorizedPositionEmbedding(axis_sizes)
    layer.build((None, None, DIM))
    return layer, [np.asarray(t) for t in layer.tables]


def test_factorized_embedding_is_sum_of_per_axis_rows():
    layer, tables = _built((4, 5, 3))
    assert [t.shape for t in tables] == [(4, DIM), (5, DIM), (3, DIM)]
    out = np.asarray(layer(_inputs(60)))
    assert out.shape == (1, 60, DIM)
    expected = np.stack([tables[0][i // 15] + tables[1][(i // 3) % 5] + tables[2][i % 3] for i in range(60)])
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-6)
    # All 60 positions get distinct embeddings.
    assert len({tuple(np.round(row, 5)) for row in out[0]}) == 60


def test_output_does_not_depend_on_input_values():
    layer, _ = _built((4, 5, 3))
    a = np.asarray(layer(_inputs(10, seed=1)))
    b = np.asarray(layer(_inputs(10, batch=3, seed=2)))
    np.testing.assert_array_equal(a, b)


def test_single_axis_is_a_plain_table():
    layer, (table,) = _built((12,))
    assert layer.max_length == 12
    np.testing.assert_array_equal(np.asarray(layer(_inputs(12)))[0], table)
    np.testing.assert_array_equal(np.asarray(layer(_inputs(5)))[0], table[:5])


def test_offset():
    layer, tables = _built((4, 5, 3))
    full = np.asarray(layer(_inputs(60)))[0]
    np.testing.assert_array_equal(np.asarray(layer(_inputs(7), offset=20))[0], full[20:27])
    np.testing.assert_array_equal(np.asarray(layer(_inputs(1), offset=59))[0], full[59:60])
    # A tensor offset (incremental decoding inside a traced function) gives the same embeddings.
    np.testing.assert_array_equal(np.asarray(layer(_inputs(3), offset=tf.constant(31)))[0], full[31:34])


def test_length_beyond_max_length_raises():
    layer, _ = _built((4, 5, 3))
    with pytest.raises(ValueError, match="exceeds"):
        layer(_inputs(61))
    with pytest.raises(ValueError, match="exceeds"):
        layer(_inputs(10), offset=51)
    layer(_inputs(10), offset=50)  # exactly fits


def test_cast_to_input_dtype():
    layer = FactorizedPositionEmbedding((6,), dtype="mixed_bfloat16")
    out = layer(keras.ops.cast(_inputs(4), "bfloat16"))
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"


@pytest.mark.parametrize("axis_sizes", [(), (4, 0), (-1,)])
def test_bad_axis_sizes_raise(axis_sizes):
    with pytest.raises(ValueError, match="axis_sizes"):
        FactorizedPositionEmbedding(axis_sizes)


def test_config_and_output_shape():
    layer = FactorizedPositionEmbedding((4, 5, 3))
    assert layer.get_config()["axis_sizes"] == [4, 5, 3]
    assert layer.compute_output_shape((2, 7, DIM)) == (1, 7, DIM)


@pytest.mark.parametrize("axis_sizes", [(4, 5, 3), (16,)])
def test_standard_layer_checks(axis_sizes):
    x = _inputs(7, seed=5)
    # The output [1, 7, 8] is broadcast against a [2, 7, 8] target so that fit sees the input's batch size.
    target = np.random.default_rng(6).standard_normal(x.shape).astype(np.float32)
    run_layer_checks(FactorizedPositionEmbedding, dict(axis_sizes=axis_sizes), x, (1, 7, DIM), fit_target=target)


def test_channel_tables_hold_a_vector_per_channel():
    """channel_tables: no channel table; the row and column tables have a row per (index, channel), and
    position (r, c, ch) sums rows[r, ch] + columns[c, ch] (T2T's image position embedding)."""
    layer = FactorizedPositionEmbedding((4, 5, 3), channel_tables=True)
    layer.build((None, None, DIM))
    rows, columns = [np.asarray(t) for t in layer.tables]
    assert rows.shape == (4, 3, DIM) and columns.shape == (5, 3, DIM)
    out = np.asarray(layer(_inputs(60)))[0]
    expected = np.stack([rows[i // 15, i % 3] + columns[(i // 3) % 5, i % 3] for i in range(60)])
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(layer(_inputs(4), offset=tf.constant(40)))[0], out[40:44])
    assert layer.get_config()["channel_tables"] is True
    with pytest.raises(ValueError, match="channel_tables"):
        FactorizedPositionEmbedding((3,), channel_tables=True)


def test_channel_tables_standard_layer_checks():
    x = _inputs(7, seed=7)
    target = np.random.default_rng(8).standard_normal(x.shape).astype(np.float32)
    run_layer_checks(FactorizedPositionEmbedding, dict(axis_sizes=(2, 2, 3), channel_tables=True), x, (1, 7, DIM),
                     fit_target=target)
