"""FeedForward against numpy computed from the layer's own weights, for every activation."""

import math

import numpy as np
import pytest
import tensorflow as tf

from common.layers import FeedForward
from tests.layer_checks import run_layer_checks

ACTIVATIONS = ["relu", "gelu", "gelu_tanh", "gelu_sigmoid", "geglu"]


def _erf(x):
    return np.vectorize(math.erf)(x)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


NUMPY_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0))),
    "gelu_tanh": _gelu_tanh,
    "gelu_sigmoid": lambda x: x / (1.0 + np.exp(-1.702 * x)),
}


def _inputs(seed=0, shape=(2, 5, 6)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _randomise_biases(layer, seed=1):
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        if "bias" in weight.path:
            weight.assign(rng.standard_normal(weight.shape).astype(np.float32))


def _dense(x, dense_layer):
    out = x.astype(np.float64) @ np.asarray(dense_layer.kernel, np.float64)
    if dense_layer.use_bias:
        out = out + np.asarray(dense_layer.bias, np.float64)
    return out


def _numpy_feed_forward(layer, x):
    inner = _dense(x, layer.inner)
    if layer.activation == "geglu":
        hidden = _gelu_tanh(inner) * _dense(x, layer.gate)
    else:
        hidden = NUMPY_ACTIVATIONS[layer.activation](inner)
    return _dense(hidden, layer.outer)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_matches_numpy_from_weights(activation, use_bias):
    x = _inputs()
    layer = FeedForward(16, activation=activation, use_bias=use_bias)
    layer.build(x.shape)
    _randomise_biases(layer)
    np.testing.assert_allclose(np.asarray(layer(x)), _numpy_feed_forward(layer, x), rtol=1e-4, atol=1e-5)


def test_activations_differ_from_each_other():
    # The same weights under different activations give different outputs: each name picks its function.
    x = _inputs() * 2.0
    reference = FeedForward(16, activation="relu")
    reference.build(x.shape)
    outputs = {}
    for activation in ["relu", "gelu", "gelu_tanh", "gelu_sigmoid"]:
        layer = FeedForward(16, activation=activation)
        layer.build(x.shape)
        layer.set_weights(reference.get_weights())
        outputs[activation] = np.asarray(layer(x))
    names = sorted(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(outputs[a], outputs[b], atol=1e-4), (a, b)


def test_geglu_has_a_gate_and_others_do_not():
    x = _inputs()
    geglu = FeedForward(8, activation="geglu", use_bias=False)
    geglu.build(x.shape)
    assert geglu.gate is not None and tuple(geglu.gate.kernel.shape) == (6, 8)
    assert len(geglu.trainable_weights) == 3
    relu = FeedForward(8, activation="relu", use_bias=False)
    relu.build(x.shape)
    assert relu.gate is None and len(relu.trainable_weights) == 2


def test_use_bias_false_creates_no_bias():
    x = _inputs()
    for activation in ACTIVATIONS:
        layer = FeedForward(8, activation=activation, use_bias=False)
        layer(x)
        assert not any("bias" in w.path for w in layer.weights), activation
    with_bias = FeedForward(8, activation="geglu", use_bias=True)
    with_bias(x)
    assert sum("bias" in w.path for w in with_bias.weights) == 3


def test_output_dim():
    x = _inputs()
    layer = FeedForward(16, activation="gelu_sigmoid", output_dim=3)
    out = layer(x)
    assert tuple(out.shape) == (2, 5, 3)
    assert tuple(layer.outer.kernel.shape) == (16, 3)
    assert layer.compute_output_shape((2, 5, 6)) == (2, 5, 3)
    np.testing.assert_allclose(np.asarray(out), _numpy_feed_forward(layer, x), rtol=1e-4, atol=1e-5)


def test_output_initializer_defaults_to_kernel_initializer():
    layer = FeedForward(8, kernel_initializer="zeros")
    layer.build((2, 3, 4))
    assert not np.any(np.asarray(layer.outer.kernel))
    layer = FeedForward(8, kernel_initializer="zeros", output_initializer="ones")
    layer.build((2, 3, 4))
    assert np.all(np.asarray(layer.outer.kernel) == 1.0) and not np.any(np.asarray(layer.inner.kernel))


def test_dropout_only_in_training():
    x = _inputs()
    layer = FeedForward(32, dropout=0.5, seed=3)
    inference = np.asarray(layer(x, training=False))
    np.testing.assert_allclose(inference, _numpy_feed_forward(layer, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(layer(x)), inference)
    assert not np.allclose(np.asarray(layer(x, training=True)), inference, atol=1e-4)


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        FeedForward(8, activation="swish")


@pytest.mark.parametrize("hidden_dim", [0, -4, 2.5])
def test_non_positive_hidden_dim_raises(hidden_dim):
    with pytest.raises(ValueError, match="hidden_dim"):
        FeedForward(hidden_dim)


def test_config_keeps_options():
    config = FeedForward(12, activation="geglu", use_bias=False, dropout=0.1, output_dim=5, seed=7).get_config()
    assert (config["hidden_dim"], config["activation"], config["use_bias"], config["dropout"],
            config["output_dim"], config["seed"]) == (12, "geglu", False, 0.1, 5, 7)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_standard_layer_checks(activation):
    x = _inputs(seed=4, shape=(2, 4, 6))
    run_layer_checks(FeedForward, dict(hidden_dim=8, activation=activation, output_dim=5), x, (2, 4, 5))


@pytest.mark.parametrize("length, chunk_size", [(12, 4), (13, 5), (6, 8)])
def test_chunks_give_the_same_outputs_and_gradients(length, chunk_size):
    """chunk_size only changes what the backward pass keeps (each chunk is recomputed), not the numbers."""
    x = tf.constant(_inputs(seed=5, shape=(2, length, 6)))
    whole = FeedForward(16, activation="gelu_sigmoid")
    chunked = FeedForward(16, activation="gelu_sigmoid", chunk_size=chunk_size)
    whole(x), chunked(x)
    chunked.set_weights(whole.get_weights())

    def outputs_and_gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return [y] + tape.gradient(loss, [x] + layer.trainable_variables)

    for got, want in zip(outputs_and_gradients(chunked), outputs_and_gradients(whole)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_chunks_refuse_dropout():
    with pytest.raises(ValueError, match="redraw its dropout masks"):
        FeedForward(8, dropout=0.1, chunk_size=4)
