"""The trainer's checkpoints must restore every variable of a zoo model, the RNG state of dropout included."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from apps import checkpoints
from common.layers import SelfAttention
from common.models import DecoderLM
from routing_transformer import RoutingTransformerLM


def decoder_lm():
    attention = SelfAttention(num_heads=2, key_dim=8, kernel="local", kernel_options={"block_size": 4},
                              max_relative_position=4, dropout=0.1)
    return DecoderLM(vocabulary_size=20, num_layers=2, hidden_dim=16, attention=attention, ffn_dim=32,
                     position_axes=(4, 8), dropout=0.1)


def routing_lm():
    return RoutingTransformerLM(vocabulary_size=20, num_layers=2, hidden_dim=16, embedding_dim=8, ffn_dim=32,
                                local_heads=1, routing_heads=1, num_clusters=2, window=8, block_size=8,
                                max_relative_position=8, position_axes=(16,))


def routing_lm_without_dropout():
    return RoutingTransformerLM(vocabulary_size=20, num_layers=1, hidden_dim=16, ffn_dim=32, local_heads=1,
                                routing_heads=1, num_clusters=2, window=8, block_size=8, dropout=0.0)


def save(model, path):
    return tf.train.Checkpoint(**checkpoints.model_objects(model)).save(path)


@pytest.mark.parametrize("make_model", [decoder_lm, routing_lm, routing_lm_without_dropout])
def test_checkpoint_restores_every_variable(make_model, tmp_path):
    ids = tf.constant(np.random.default_rng(0).integers(0, 20, size=(2, 16)), tf.int32)
    model = make_model()
    model(ids, training=True)  # moves the k-means state and the dropout RNG state too
    path = save(model, str(tmp_path / "ckpt"))
    saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("model")]
    assert len(saved) == len(model.variables)

    restored = make_model()
    restored(ids)
    tf.train.Checkpoint(**checkpoints.model_objects(restored)).restore(path).assert_existing_objects_matched()
    for original, loaded in zip(model.variables, restored.variables):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(original), err_msg=original.path)
    np.testing.assert_array_equal(np.asarray(restored(ids)), np.asarray(model(ids)))
    # Same RNG state: the next training call draws the same dropout masks.
    np.testing.assert_array_equal(np.asarray(restored(ids, training=True)), np.asarray(model(ids, training=True)))


class ListHolder(keras.Model):
    """Keeps a weight in a Python list, which Keras 3 hides from TensorFlow's object graph."""

    def build(self, shape):
        self.hidden = [self.add_weight(shape=(3,), name="in_list")]

    def call(self, x):
        return x


def test_variables_in_lists_are_saved_too(tmp_path):
    model = ListHolder()
    model(tf.zeros([1, 1]))
    assert [v.path for v in checkpoints.untracked_variables(model)] == [model.hidden[0].path]
    model.hidden[0].assign([1.0, 2.0, 3.0])
    path = save(model, str(tmp_path / "ckpt"))
    restored = ListHolder()
    restored(tf.zeros([1, 1]))
    tf.train.Checkpoint(**checkpoints.model_objects(restored)).restore(path)
    np.testing.assert_array_equal(np.asarray(restored.hidden[0]), [1.0, 2.0, 3.0])
