"""The standard checks every zoo layer passes, so that each layer's test stays short.

`run_layer_checks` asserts: config round-trip, symbolic call, eager call shape, `.keras` round-trip with
identical outputs (and identical non-trainable state), and one `jit_compile=True` fit step that changes the
trainable weights and gives a finite loss.
"""

import json
import os
import tempfile

import keras
import numpy as np


def check_config_round_trip(layer):
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    assert json.dumps(clone.get_config(), sort_keys=True, default=str) == json.dumps(config, sort_keys=True,
                                                                                        default=str)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)


def wrap_in_model(layer, input_data):
    """A functional model around `layer`, so that it can be compiled, fitted and saved."""
    inputs = keras.Input(shape=input_data.shape[1:], dtype=str(input_data.dtype))
    return keras.Model(inputs, layer(inputs))


def check_symbolic_call(layer_factory, input_data, expected_output_shape):
    inputs = keras.Input(shape=input_data.shape[1:], dtype=str(input_data.dtype))
    outputs = layer_factory()(inputs)
    assert tuple(outputs.shape[1:]) == tuple(expected_output_shape[1:])


def check_keras_round_trip(model, input_data, atol=0.0):
    expected = np.asarray(model(input_data, training=False))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        restored = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(restored(input_data, training=False)), expected, atol=atol, rtol=0)
    for original, loaded in zip(model.non_trainable_weights, restored.non_trainable_weights):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(original))
    return restored


def check_jit_fit_step(model, input_data, target, loss="mse"):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, jit_compile=True)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(input_data, target, epochs=1, batch_size=len(input_data), verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [np.array(w) for w in model.trainable_weights]
    assert any(not np.array_equal(b, a) for b, a in zip(before, after)), "the fit step changed no weight"


def run_layer_checks(layer_cls, init_kwargs, input_data, expected_output_shape, fit_target=None):
    """Runs every standard check on `layer_cls(**init_kwargs)` called on `input_data`.

    `fit_target` is the target of the fit step; default zeros of `expected_output_shape`. Pass one with the
    input's batch size for layers whose output batch differs from the input's (e.g. position embeddings
    returning [1, length, dim], which the loss broadcasts).
    """
    layer = layer_cls(**init_kwargs)
    output = layer(input_data)
    assert tuple(output.shape) == tuple(expected_output_shape)
    check_config_round_trip(layer)
    check_symbolic_call(lambda: layer_cls(**init_kwargs), input_data, expected_output_shape)
    model = wrap_in_model(layer_cls(**init_kwargs), input_data)
    check_keras_round_trip(model, input_data)
    if fit_target is None:
        fit_target = np.zeros(expected_output_shape, "float32")
    check_jit_fit_step(model, input_data, fit_target)
