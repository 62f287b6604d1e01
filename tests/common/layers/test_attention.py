"""SelfAttention against a manual computation from its weights, relative positions, causality, errors."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.attention import dense_attention, local_attention
from common.layers import SelfAttention
from tests.layer_checks import run_layer_checks

TOL = dict(rtol=1e-4, atol=1e-5)
BATCH, LENGTH, DIM = 2, 12, 8
LOCAL = dict(kernel="local", kernel_options={"block_size": 4, "look_back": 1})


def _inputs(seed=0, length=LENGTH, batch=BATCH, dim=DIM):
    return np.random.default_rng(seed).standard_normal((batch, length, dim)).astype(np.float32)


def _built(x, seed=1, **kwargs):
    layer = SelfAttention(**kwargs)
    layer.build(x.shape)
    rng = np.random.default_rng(seed)
    for weight in layer.weights:  # biases and tables get non-trivial values
        if "bias" in weight.path or "relative" in weight.path:
            weight.assign(0.5 * rng.standard_normal(weight.shape).astype(np.float32))
    return layer


def _project(x, weights):
    kernel, bias = (None if w is None else np.asarray(w) for w in weights)
    y = np.einsum("bld,dhk->bhlk", x, kernel)
    return y if bias is None else y + bias[None, :, None, :]


def _manual(layer, x, kernel_fn, **options):
    q, k, v = (tf.constant(_project(x, w), tf.float32) for w in (layer.query, layer.key, layer.value))
    heads = np.asarray(kernel_fn(q, k, v, causal=layer.causal, **options))
    kernel, bias = layer.output_projection
    out = np.einsum("bhld,hdo->blo", heads, np.asarray(kernel))
    return out if bias is None else out + np.asarray(bias)


def _numpy_dense_attention(q, k, v, causal):
    logits = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bhkd->bhqd", weights, v)


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_dense_matches_manual_computation(use_bias, causal):
    x = _inputs()
    layer = _built(x, num_heads=2, key_dim=4, use_bias=use_bias, causal=causal)
    out = np.asarray(layer(x))
    np.testing.assert_allclose(out, _manual(layer, x, dense_attention), **TOL)
    # And against an independent float64 numpy softmax attention.
    q, k, v = (_project(x.astype(np.float64), w) for w in (layer.query, layer.key, layer.value))
    kernel, bias = layer.output_projection
    expected = np.einsum("bhld,hdo->blo", _numpy_dense_attention(q, k, v, causal), np.asarray(kernel))
    if use_bias:
        expected = expected + np.asarray(bias)
    np.testing.assert_allclose(out, expected, **TOL)


@pytest.mark.parametrize("use_bias", [False, True])
def test_local_matches_manual_computation(use_bias):
    x = _inputs(seed=2, length=10)  # not a multiple of the block size
    layer = _built(x, num_heads=2, key_dim=4, use_bias=use_bias, **LOCAL)
    out = np.asarray(layer(x))
    np.testing.assert_allclose(out, _manual(layer, x, local_attention, block_size=4, look_back=1), **TOL)
    # Local attention is not dense attention: queries beyond the window see fewer keys.
    assert not np.allclose(out, _manual(layer, x, dense_attention), **TOL)


def test_bias_weights_only_with_use_bias():
    x = _inputs()
    with_bias = _built(x, num_heads=3, key_dim=4, value_dim=5, use_bias=True)
    shapes = {w.name: tuple(w.shape) for w in with_bias.weights}
    assert shapes == {"query_kernel": (DIM, 3, 4), "query_bias": (3, 4), "key_kernel": (DIM, 3, 4),
                      "key_bias": (3, 4), "value_kernel": (DIM, 3, 5), "value_bias": (3, 5),
                      "output_kernel": (3, 5, DIM), "output_bias": (DIM,)}
    without = _built(x, num_heads=3, key_dim=4)
    assert not any("bias" in w.name for w in without.weights) and len(without.weights) == 4


@pytest.mark.parametrize("kernel", ["dense", "local"])
def test_relative_positions_tables_exist_and_are_used(kernel):
    x = _inputs(seed=3)
    options = LOCAL if kernel == "local" else {}
    layer = _built(x, num_heads=2, key_dim=4, value_dim=6, max_relative_position=3, **options)
    assert tuple(layer.relative_keys.shape) == (7, 4)
    assert tuple(layer.relative_values.shape) == (7, 6)
    out = np.asarray(layer(x))
    tables = dict(relative_keys=tf.constant(np.asarray(layer.relative_keys)),
                  relative_values=tf.constant(np.asarray(layer.relative_values)))
    if kernel == "local":
        np.testing.assert_allclose(out, _manual(layer, x, local_attention, block_size=4, look_back=1, **tables),
                                   **TOL)
    else:
        np.testing.assert_allclose(out, _manual(layer, x, dense_attention, **tables), **TOL)
    # Without the tables the result differs: they are really used.
    fn = local_attention if kernel == "local" else dense_attention
    extra = dict(block_size=4, look_back=1) if kernel == "local" else {}
    assert not np.allclose(out, _manual(layer, x, fn, **extra), **TOL)
    # Changing the relative value table changes the output.
    layer.relative_values.assign(np.asarray(layer.relative_values) + 1.0)
    assert not np.allclose(np.asarray(layer(x)), out, **TOL)


def test_no_relative_tables_by_default():
    x = _inputs()
    layer = _built(x, num_heads=2, key_dim=4)
    assert layer.relative_keys is None and layer.relative_values is None
    assert not any("relative" in w.name for w in layer.weights)


def test_value_dim_and_output_dim():
    x = _inputs(seed=4)
    layer = _built(x, num_heads=2, key_dim=3, value_dim=5, output_dim=7)
    assert tuple(layer.value[0].shape) == (DIM, 2, 5)
    assert tuple(layer.output_projection[0].shape) == (2, 5, 7)
    out = np.asarray(layer(x))
    assert out.shape == (BATCH, LENGTH, 7)
    assert layer.compute_output_shape((BATCH, LENGTH, DIM)) == (BATCH, LENGTH, 7)
    np.testing.assert_allclose(out, _manual(layer, x, dense_attention), **TOL)


@pytest.mark.parametrize("options", [{}, LOCAL, dict(LOCAL, max_relative_position=2)],
                         ids=["dense", "local", "local_relative"])
def test_layer_is_causal(options):
    x = _inputs(seed=5)
    layer = _built(x, num_heads=2, key_dim=4, **options)
    out = np.asarray(layer(x))
    rng = np.random.default_rng(6)
    for t in [0, 3, 4, 7, 10]:
        changed = x.copy()
        changed[:, t + 1:] = rng.standard_normal(changed[:, t + 1:].shape)
        new = np.asarray(layer(changed))
        np.testing.assert_allclose(new[:, :t + 1], out[:, :t + 1], rtol=1e-5, atol=1e-6)
        assert not np.allclose(new[:, t + 1:], out[:, t + 1:], atol=1e-4)


def test_non_causal_layer_sees_the_future():
    x = _inputs(seed=7)
    layer = _built(x, num_heads=2, key_dim=4, causal=False)
    changed = x.copy()
    changed[:, -1] += 1.0
    assert not np.allclose(np.asarray(layer(changed))[:, 0], np.asarray(layer(x))[:, 0], atol=1e-5)


@pytest.mark.parametrize("options", [{}, LOCAL], ids=["dense", "local"])
def test_dropout_only_in_training(options):
    x = _inputs(seed=8)
    layer = _built(x, num_heads=2, key_dim=4, dropout=0.5, seed=3, **options)
    reference = SelfAttention(num_heads=2, key_dim=4, **options)
    reference.build(x.shape)
    reference.set_weights(layer.get_weights())
    expected = np.asarray(reference(x))
    np.testing.assert_allclose(np.asarray(layer(x, training=False)), expected, **TOL)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, **TOL)
    trained = np.asarray(layer(x, training=True))
    assert not np.allclose(trained, expected, atol=1e-4)
    # Still causal with dropout.
    changed = x.copy()
    changed[:, 6:] += 1.0
    assert np.isfinite(trained).all()
    np.testing.assert_allclose(np.asarray(layer(changed, training=False))[:, :6], expected[:, :6], **TOL)


def test_unknown_kernel_raises_listing_choices():
    with pytest.raises(ValueError) as error:
        SelfAttention(num_heads=2, key_dim=4, kernel="no_such_kernel")
    message = str(error.value)
    assert "no_such_kernel" in message and "'dense'" in message and "'local'" in message


@pytest.mark.parametrize("kwargs, name", [(dict(num_heads=0, key_dim=4), "num_heads"),
                                          (dict(num_heads=2, key_dim=-1), "key_dim"),
                                          (dict(num_heads=2, key_dim=4, value_dim=-3), "value_dim"),
                                          (dict(num_heads=True, key_dim=4), "num_heads"),
                                          (dict(num_heads=2, key_dim=4.0), "key_dim")])
def test_bad_sizes_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SelfAttention(**kwargs)


def test_rank_two_input_raises():
    with pytest.raises(ValueError, match=r"\[batch, length, dim\]"):
        SelfAttention(num_heads=2, key_dim=4)(np.zeros((3, DIM), np.float32))
    with pytest.raises(ValueError, match=r"\[batch, length, dim\]"):
        SelfAttention(num_heads=2, key_dim=4).build((3, DIM))


def test_config_keeps_options():
    layer = SelfAttention(num_heads=2, key_dim=4, value_dim=6, max_relative_position=3, use_bias=True,
                          causal=False, dropout=0.1, output_dim=5, seed=9, **LOCAL)
    clone = SelfAttention.from_config(layer.get_config())
    for name in ["num_heads", "key_dim", "value_dim", "kernel", "kernel_options", "causal", "use_bias",
                 "max_relative_position", "dropout", "output_dim", "seed"]:
        assert getattr(clone, name) == getattr(layer, name), name


@pytest.mark.parametrize("kwargs", [dict(num_heads=2, key_dim=4, use_bias=True),
                                    dict(num_heads=2, key_dim=4, value_dim=3, max_relative_position=2, **LOCAL)],
                         ids=["dense", "local_relative"])
def test_standard_layer_checks(kwargs):
    x = _inputs(seed=9, length=10)
    run_layer_checks(SelfAttention, kwargs, x, x.shape)


def test_fan_based_initialisers_see_the_projection_matrices():
    """A [dim, heads, head_dim] kernel is a dim x (heads head_dim) matrix: variance 1 / fan_in must use dim,
    not heads x dim as Keras' convolution-style fans of a rank-3 shape would."""
    init = keras.initializers.VarianceScaling(1.0, mode="fan_in", distribution="untruncated_normal")
    layer = SelfAttention(num_heads=8, key_dim=32, kernel_initializer=init)
    layer.build((1, 4, 256))
    assert abs(float(np.std(np.asarray(layer.query[0]))) - 1 / math.sqrt(256)) < 0.003
    assert abs(float(np.std(np.asarray(layer.output_projection[0]))) - 1 / math.sqrt(8 * 32)) < 0.003
    keys, values = np.asarray(layer.key[0]), np.asarray(layer.value[0])
    assert not np.allclose(keys, values)  # every weight draws its own values
