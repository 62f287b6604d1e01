"""SparseAttention: the standard layer checks for several patterns, equality with projecting by hand and running
sparse_attention, half-size queries and keys, and the config."""

import numpy as np
import pytest
import tensorflow as tf

from sparse_transformer import SparseAttention, sparse_attention
from tests.layer_checks import check_config_round_trip, run_layer_checks

BATCH, LENGTH, DIM = 2, 14, 8
BASE = dict(num_heads=4, key_dim=4, stride=4, summary=1, seed=3)


def _x(seed=0, length=LENGTH):
    return np.random.default_rng(seed).standard_normal((BATCH, length, DIM)).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(pattern="fixed", num_summary_patterns=2),
    dict(pattern="local|strided"),
    dict(pattern="local+strided", causal=False, value_dim=3, dropout=0.1),
], ids=["fixed-2-summaries", "local|strided", "local+strided-bidirectional"])
def test_standard_layer_checks(options):
    run_layer_checks(SparseAttention, dict(BASE, **options), _x(), (BATCH, LENGTH, DIM))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("pattern", ["fixed", "local|strided", "local+strided"])
def test_equals_projecting_by_hand_and_sparse_attention(pattern, causal):
    """out = sum_h sparse_attention(x Wq + bq, x Wk + bk, x Wv + bv)_h Wo_h + bo, with numpy projections."""
    x = _x(1)
    layer = SparseAttention(**dict(BASE, pattern=pattern, causal=causal, value_dim=3, num_summary_patterns=2))
    layer.build(x.shape)
    rng = np.random.default_rng(2)
    for weight in layer.weights:  # non-zero biases too
        weight.assign(0.3 * rng.standard_normal(weight.shape).astype(np.float32))
    (wq, bq), (wk, bk), (wv, bv), (wo, bo) = [[np.asarray(w) for w in pair] for pair in (
        layer.query, layer.key, layer.value, layer.output_projection)]
    q, k, v = (np.einsum("bld,dhk->bhlk", x, w) + b[None, :, None, :] for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    heads = sparse_attention(*map(tf.constant, (q, k, v)), pattern=pattern, stride=4, summary=1, causal=causal,
                             num_summary_patterns=2)
    want = np.einsum("bhld,hdo->blo", np.asarray(heads), wo) + bo
    np.testing.assert_allclose(np.asarray(layer(x)), want, rtol=1e-5, atol=1e-5)


def test_half_size_queries_and_keys():
    layer = SparseAttention(num_heads=2, key_dim=2, value_dim=4, pattern="fixed", stride=4, summary=1)
    out = layer(_x(3))
    assert out.shape == (BATCH, LENGTH, DIM)
    assert layer.query[0].shape == (DIM, 2, 2) and layer.key[0].shape == (DIM, 2, 2)
    assert layer.value[0].shape == (DIM, 2, 4) and layer.output_projection[0].shape == (2, 4, DIM)


def test_causal_layer_output_ignores_later_positions():
    layer = SparseAttention(**dict(BASE, pattern="fixed"))
    x = _x(4)
    base = np.asarray(layer(x))
    changed = x.copy()
    changed[:, 9:] = 5.0
    np.testing.assert_allclose(np.asarray(layer(changed))[:, :9], base[:, :9], rtol=0, atol=1e-6)


def test_config_round_trip_keeps_pattern_options():
    options = dict(num_heads=4, key_dim=6, value_dim=5, pattern="local+strided|fixed", stride=8, summary=2,
                   num_summary_patterns=2, causal=False, use_bias=False, dropout=0.1, output_dim=12, seed=9)
    layer = SparseAttention(**options)
    check_config_round_trip(layer)
    config = layer.get_config()
    for key, value in options.items():
        assert config[key] == value, key
    assert not {"kernel", "kernel_options", "max_relative_position"} & set(config)
    clone = SparseAttention.from_config(config)
    assert clone.kernel == "sparse"
    assert dict(clone.kernel_options, query_chunk_size=None) == dict(
        pattern="local+strided|fixed", stride=8, summary=2, num_summary_patterns=2, query_chunk_size=None)
    assert clone.max_relative_position == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(pattern="dense"), r"unknown attention pattern 'dense'"),
    (dict(pattern="fixed", summary=5), r"must not exceed the stride \(4\)"),
    (dict(pattern="fixed", num_summary_patterns=3), r"num_heads \(4\) must be divisible by num_summary_patterns"),
    (dict(pattern="local|strided|block"), r"num_heads \(4\) must be divisible by the 3 head groups"),
    (dict(pattern="local", stride=0), r"stride must be an integer >= 1"),
    (dict(pattern="local", num_heads=0), r"num_heads must be an integer >= 1"),
])
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseAttention(**dict(BASE, **kwargs))
