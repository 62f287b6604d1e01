"""export_saved_model: a SavedModel whose serving signature reproduces the model's logits at any shape."""

import keras
import numpy as np
import tensorflow as tf

from common.export import export_saved_model
from common.layers import SelfAttention
from common.models import DecoderLM

VOCAB = 13


def _model():
    keras.utils.set_random_seed(0)
    attention = SelfAttention(num_heads=2, key_dim=4, kernel="local", kernel_options={"block_size": 4},
                              max_relative_position=3)
    return DecoderLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=8, attention=attention, ffn_dim=16,
                     position_axes=(64,))


def test_serving_signature_reproduces_logits_at_any_shape(tmp_path):
    model = _model()
    assert not model.built
    export_dir = str(tmp_path / "saved_model")
    export_saved_model(model, export_dir)  # builds the model itself
    loaded = tf.saved_model.load(export_dir)
    assert "serving_default" in loaded.signatures
    serve = loaded.signatures["serving_default"]

    args, kwargs = serve.structured_input_signature
    assert args == ()
    assert list(kwargs) == ["token_ids"]
    spec = kwargs["token_ids"]
    assert spec.shape.as_list() == [None, None] and spec.dtype == tf.int32
    assert list(serve.structured_outputs) == ["logits"]
    assert serve.structured_outputs["logits"].dtype == tf.float32

    rng = np.random.default_rng(1)
    for batch, length in [(1, 5), (3, 37), (2, 8)]:  # lengths inside, across and exactly at block boundaries
        ids = rng.integers(0, VOCAB, size=(batch, length)).astype(np.int32)
        expected = np.asarray(model(ids, training=False))
        outputs = serve(token_ids=tf.constant(ids))
        assert set(outputs) == {"logits"}
        logits = outputs["logits"].numpy()
        assert logits.shape == (batch, length, VOCAB)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_export_of_a_trained_model_keeps_its_weights(tmp_path):
    model = _model()
    ids = np.random.default_rng(2).integers(0, VOCAB, size=(2, 6)).astype(np.int32)
    model(ids)
    before = np.asarray(model(ids))
    for weight in model.trainable_weights:  # new weights after building, as after training
        weight.assign(weight + 0.1 * np.random.default_rng(3).standard_normal(weight.shape).astype(np.float32))
    after = np.asarray(model(ids))
    assert not np.allclose(before, after, atol=1e-4)
    export_dir = str(tmp_path / "exported")
    export_saved_model(model, export_dir)
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    np.testing.assert_allclose(serve(token_ids=tf.constant(ids))["logits"].numpy(), after, rtol=1e-5, atol=1e-5)
