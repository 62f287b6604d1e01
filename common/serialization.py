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


def fresh_initializer(initializer):
    """A new initializer with the same config, for one weight.

    An unseeded Keras 3 initializer draws its seed when it is created, so one instance used for several
    weights gives them all the same values (q, k and v would start identical). Every weight therefore gets
    its own instance. (A seeded initializer still repeats its draw: seed the run with
    `keras.utils.set_random_seed` instead.)
    """
    return keras.initializers.get(keras.initializers.serialize(keras.initializers.get(initializer)))
