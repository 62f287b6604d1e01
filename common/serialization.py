"""Helpers for layers that hold other layers in their config."""

import keras


def as_layer(layer_or_config):
    """A layer from a layer or from its serialised form (what `serialize_keras_object` returns)."""
    if isinstance(layer_or_config, dict):
        return keras.saving.deserialize_keras_object(layer_or_config)
    return layer_or_config


def fresh_copy(layer, name):
    """A new, unbuilt layer with the same config as `layer` (or a serialised layer), under a new name."""
    config = keras.saving.serialize_keras_object(layer) if not isinstance(layer, dict) else dict(layer)
    config = dict(config, config=dict(config["config"], name=name))
    config.pop("build_config", None)  # Built later, by its owner, for the owner's input shape.
    return keras.saving.deserialize_keras_object(config)
