"""CombinerAttention: the standard layer checks (causal and bidirectional, in an encoder), the weights each option
owns, a manual computation of the row projection, and the config."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from combiner.attention import CombinerAttention, combiner_attention
from tests.layer_checks import check_config_round_trip, run_layer_checks

BATCH, LENGTH, DIM = 2, 16, 16
BASE = dict(num_heads=2, key_dim=4, segment_length=4, seed=3)


def _x(seed=0, length=LENGTH):
    return np.random.default_rng(seed).standard_normal((BATCH, length, DIM)).astype(np.float32)


@pytest.mark.parametrize("options", [
    dict(variant="fixed", local_summary="deepset-max"),
    dict(variant="fixed", causal=False, use_bias=True),
    dict(variant="logsparse", dropout=0.1, max_length=LENGTH),
    dict(variant="axial", row_summary="proj", use_bias=True, projection_dropout=0.1),
    dict(variant="axial", row_summary="wsum_proj", causal=False, value_dim=3),
    dict(variant="mixture"),
    dict(variant="mixture", causal=False, dropout=0.1),
], ids=["fixed-deepset", "fixed-bidirectional", "logsparse", "axial-proj", "axial-wsum_proj-bidirectional",
        "mixture", "mixture-bidirectional"])
def test_standard_layer_checks(options):
    run_layer_checks(CombinerAttention, dict(BASE, **options), _x(), (BATCH, LENGTH, DIM))


def test_weights_each_option_owns():
    def names(**options):
        layer = CombinerAttention(**dict(BASE, **options))
        layer(_x())
        return sorted(w.path.split("/")[-1] for w in layer.weights)

    base = ["key_kernel", "output_kernel", "query_kernel", "value_kernel"]
    assert names(variant="fixed") == base
    assert names(variant="fixed", local_summary="deepset-mean") == sorted(
        base + ["query_pooling_kernel", "key_pooling_kernel"])
    assert names(variant="axial", row_summary="wsum") == base
    assert names(variant="axial", row_summary="proj") == sorted(
        base + ["row_output_kernel", "row_key_kernel", "gamma", "beta"])
    with_bias = names(variant="axial", row_summary="proj", use_bias=True)
    assert "row_output_bias" in with_bias and "row_key_bias" in with_bias
    # Options of other variants are ignored: no row projection for fixed, no pooling kernels for axial.
    assert names(variant="fixed", row_summary="proj") == base
    assert names(variant="axial", local_summary="deepset-max", row_summary="none") == base


def test_row_projection_matches_manual_computation():
    """Region keys = W_k' LN(x + W_o' concat_heads(o)) + biases, o the per-head row summaries."""
    x = _x(1)
    layer = CombinerAttention(**dict(BASE, variant="axial", row_summary="proj", use_bias=True, value_dim=3))
    layer.build(x.shape)
    rng = np.random.default_rng(2)
    for weight in layer.weights:  # biases and the norm get non-trivial values
        if "bias" in weight.path or "gamma" in weight.path or "beta" in weight.path:
            weight.assign(0.5 * rng.standard_normal(weight.shape).astype(np.float32))
    w = {weight.path.split("/")[-1]: np.asarray(weight) for weight in layer.weights}

    def project(name):
        return tf.constant(np.einsum("bld,dhk->bhlk", x, w[f"{name}_kernel"]) + w[f"{name}_bias"][None, :, None])

    def manual_projection(summaries):
        y = np.einsum("bhld,hdo->blo", np.asarray(summaries), w["row_output_kernel"]) + w["row_output_bias"]
        y = x + y
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5) * w["gamma"] + w["beta"]
        return tf.constant(np.einsum("blo,ohk->bhlk", y, w["row_key_kernel"]) + w["row_key_bias"][None, :, None],
                           tf.float32)

    heads = combiner_attention(project("query"), project("key"), project("value"), variant="axial",
                               segment_length=4, row_summary="proj", row_projection=manual_projection)
    want = np.einsum("bhld,hdo->blo", np.asarray(heads), w["output_kernel"]) + w["output_bias"]
    np.testing.assert_allclose(np.asarray(layer(x)), want, rtol=1e-4, atol=1e-4)


def test_bidirectional_layer_in_an_encoder():
    """A bidirectional Combiner layer sees the future: changing the last token changes the first output."""
    inputs = keras.Input((LENGTH, DIM))
    encoder = keras.Model(inputs, CombinerAttention(**dict(BASE, variant="axial", causal=False))(inputs))
    x = _x(4)
    changed = x.copy()
    changed[:, -1] += 1.0
    assert np.abs(np.asarray(encoder(changed))[:, 0] - np.asarray(encoder(x))[:, 0]).max() > 1e-4


def test_logsparse_layer_at_a_run_time_length():
    """With max_length, a logsparse layer traced for any batch and length up to it equals its static calls."""
    layer = CombinerAttention(**dict(BASE, variant="logsparse", max_length=LENGTH, use_bias=True))
    layer(_x())
    run = tf.function(layer, input_signature=[tf.TensorSpec([None, None, DIM], tf.float32)])
    for length in (1, 2, 5, 8, 9, 16):
        x = _x(length, length)
        np.testing.assert_array_equal(run(x).numpy(), np.asarray(layer(x)), err_msg=f"length {length}")
    assert run.experimental_get_tracing_count() == 1
    assert CombinerAttention.from_config(layer.get_config()).max_length == LENGTH


def test_config():
    layer = CombinerAttention(**dict(BASE, variant="mixture", causal=False, dropout=0.2, projection_dropout=0.1))
    config = layer.get_config()
    for key in ("kernel", "kernel_options", "max_relative_position"):
        assert key not in config
    assert config["variant"] == "mixture" and config["segment_length"] == 4 and config["causal"] is False
    assert config["projection_dropout"] == 0.1 and config["row_summary"] == "proj"
    check_config_round_trip(layer)
