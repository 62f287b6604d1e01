"""LayerNorm and layer_norm against a float64 numpy formula, plus the standard layer checks."""

import keras
import numpy as np
import pytest

from common.layers import LayerNorm, layer_norm
from tests.layer_checks import (check_config_round_trip, check_keras_round_trip, check_symbolic_call,
                                run_layer_checks, wrap_in_model)


def _numpy_layer_norm(x, epsilon, gamma=None, beta=None):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + epsilon)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _inputs(seed=0, shape=(2, 5, 8), scale=3.0, shift=1.5):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + shift).astype(np.float32)


@pytest.mark.parametrize("epsilon", [1e-6, 0.5])
def test_layer_norm_matches_numpy_with_random_gain_and_bias(epsilon):
    x = _inputs()
    layer = LayerNorm(epsilon=epsilon)
    layer.build(x.shape)
    rng = np.random.default_rng(1)
    gamma = rng.standard_normal(8).astype(np.float32)
    beta = rng.standard_normal(8).astype(np.float32)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    out = np.asarray(layer(x))
    np.testing.assert_allclose(out, _numpy_layer_norm(x, epsilon, gamma, beta), rtol=1e-5, atol=1e-5)


def test_epsilon_is_respected():
    # Small-variance rows: a large epsilon must shrink the output well below unit variance.
    x = _inputs(scale=0.1)
    small = np.asarray(LayerNorm(epsilon=1e-6)(x))
    large = np.asarray(LayerNorm(epsilon=1.0)(x))
    np.testing.assert_allclose(large, _numpy_layer_norm(x, 1.0), rtol=1e-5, atol=1e-5)
    assert np.abs(large).max() < 0.5 * np.abs(small).max()


@pytest.mark.parametrize("epsilon", [1e-6, 0.25])
def test_layer_norm_function_matches_numpy(epsilon):
    x = _inputs(seed=3)
    np.testing.assert_allclose(np.asarray(layer_norm(x, epsilon)), _numpy_layer_norm(x, epsilon),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(layer_norm(x)), _numpy_layer_norm(x, 1e-6), rtol=1e-5, atol=1e-5)


def test_scale_free_layer_norm_has_no_weights_and_standardises_rows():
    x = _inputs(seed=4)
    layer = LayerNorm(center=False, scale=False)
    out = np.asarray(layer(x), np.float64)
    assert layer.weights == []
    np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(out, np.asarray(layer_norm(x)), rtol=1e-6, atol=1e-6)


def test_center_only_and_scale_only_weights():
    x = _inputs()
    only_scale = LayerNorm(center=False)
    only_scale(x)
    assert [w.name for w in only_scale.weights] == ["gamma"]
    only_center = LayerNorm(scale=False)
    only_center(x)
    assert [w.name for w in only_center.weights] == ["beta"]
    only_center.beta.assign(np.full(8, 2.0, np.float32))
    np.testing.assert_allclose(np.asarray(only_center(x)), _numpy_layer_norm(x, 1e-6) + 2.0, rtol=1e-5,
                               atol=1e-5)


def test_bfloat16_input_returns_bfloat16():
    x = _inputs(seed=5)
    x_bf16 = keras.ops.cast(x, "bfloat16")
    y = layer_norm(x_bf16)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    # Normalisation runs in float32 inside, so the result is the reference up to bfloat16 rounding.
    expected = _numpy_layer_norm(np.asarray(keras.ops.cast(x_bf16, "float32")), 1e-6)
    np.testing.assert_allclose(np.asarray(keras.ops.cast(y, "float32")), expected, rtol=2e-2, atol=2e-2)

    layer = LayerNorm(dtype="mixed_bfloat16")
    out = layer(x_bf16)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in layer.weights)
    np.testing.assert_allclose(np.asarray(keras.ops.cast(out, "float32")), expected, rtol=2e-2, atol=2e-2)


def test_unknown_last_dimension_raises():
    with pytest.raises(ValueError, match="last dimension"):
        LayerNorm().build((2, 3, None))


def test_config_keeps_options():
    config = LayerNorm(epsilon=0.01, center=False, scale=True).get_config()
    assert (config["epsilon"], config["center"], config["scale"]) == (0.01, False, True)


@pytest.mark.parametrize("kwargs", [{}, {"center": False, "scale": False, "epsilon": 1e-3}])
def test_standard_layer_checks(kwargs):
    x = _inputs(seed=6, shape=(2, 4, 6))
    if kwargs.get("scale") is False:
        # No trainable weight: the fit-step check requires one, so only run the other checks.
        layer = LayerNorm(**kwargs)
        assert tuple(layer(x).shape) == x.shape
        check_config_round_trip(layer)
        check_symbolic_call(lambda: LayerNorm(**kwargs), x, x.shape)
        check_keras_round_trip(wrap_in_model(LayerNorm(**kwargs), x), x)
    else:
        run_layer_checks(LayerNorm, kwargs, x, x.shape)
