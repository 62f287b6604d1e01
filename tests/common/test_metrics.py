"""LanguageModelLoss, BitsPerToken and Perplexity against numpy cross-entropy."""

import math

import keras
import numpy as np
import pytest

from common.metrics import BitsPerToken, LanguageModelLoss, Perplexity

VOCAB = 7


def _batch(seed, batch, length, pad_id=0, pad_fraction=0.3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(batch, length)).astype(np.int32)
    ids[rng.random((batch, length)) < pad_fraction] = pad_id
    logits = (2.0 * rng.standard_normal((batch, length, VOCAB))).astype(np.float32)
    return ids, logits


def _nats(ids, logits):
    logits = logits.astype(np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, ids[..., None].astype(np.int64), axis=-1)[..., 0]
    return log_z - picked


def _mean_nats(batches, ignore_id):
    total, count = 0.0, 0
    for ids, logits in batches:
        keep = np.ones(ids.shape, bool) if ignore_id is None else ids != ignore_id
        total += _nats(ids, logits)[keep].sum()
        count += keep.sum()
    return total / count


def test_loss_ignores_ignore_id():
    ids, logits = _batch(0, 3, 9)
    assert (ids == 0).any() and (ids != 0).any()
    loss = float(LanguageModelLoss(ignore_id=0)(ids, logits))
    np.testing.assert_allclose(loss, _mean_nats([(ids, logits)], 0), rtol=1e-5)
    # Not the mean over all tokens.
    assert not np.isclose(loss, _mean_nats([(ids, logits)], None), rtol=1e-4)


def test_loss_without_ignore_id_averages_all_tokens():
    ids, logits = _batch(1, 3, 9)
    loss = float(LanguageModelLoss()(ids, logits))
    np.testing.assert_allclose(loss, _mean_nats([(ids, logits)], None), rtol=1e-5)


def test_loss_with_every_token_ignored_is_zero_not_nan():
    ids, logits = _batch(2, 2, 4)
    ids[:] = 3
    assert float(LanguageModelLoss(ignore_id=3)(ids, logits)) == 0.0


def test_loss_is_compatible_with_bfloat16_logits():
    ids, logits = _batch(3, 2, 5)
    loss = float(LanguageModelLoss()(ids, keras.ops.cast(logits, "bfloat16")))
    np.testing.assert_allclose(loss, _mean_nats([(ids, logits)], None), rtol=2e-2)


@pytest.mark.parametrize("ignore_id", [0, None])
def test_bits_per_token_accumulates_weighted_by_token_count(ignore_id):
    first, second = _batch(4, 1, 3, pad_fraction=0.0), _batch(5, 4, 11)
    metric = BitsPerToken(ignore_id=ignore_id)
    metric.update_state(*first)
    np.testing.assert_allclose(float(metric.result()), _mean_nats([first], ignore_id) / math.log(2), rtol=1e-5)
    metric.update_state(*second)
    expected = _mean_nats([first, second], ignore_id) / math.log(2)
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-5)
    per_batch_average = (_mean_nats([first], ignore_id) + _mean_nats([second], ignore_id)) / 2 / math.log(2)
    assert not np.isclose(expected, per_batch_average, rtol=1e-3)  # the two batches really differ


def test_perplexity_is_exp_of_mean_nats():
    first, second = _batch(6, 2, 5), _batch(7, 3, 8)
    metric = Perplexity(ignore_id=0)
    metric.update_state(*first)
    metric.update_state(*second)
    np.testing.assert_allclose(float(metric.result()), math.exp(_mean_nats([first, second], 0)), rtol=1e-5)


def test_perfect_predictions():
    ids = np.array([[1, 2, 3]], np.int32)
    logits = np.full((1, 3, VOCAB), -1e4, np.float32)
    logits[0, np.arange(3), ids[0]] = 0.0
    bits, ppl = BitsPerToken(), Perplexity()
    bits.update_state(ids, logits)
    ppl.update_state(ids, logits)
    np.testing.assert_allclose(float(bits.result()), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(ppl.result()), 1.0, atol=1e-6)


def test_uniform_predictions_give_log2_vocabulary_bits():
    ids, _ = _batch(8, 2, 6, pad_fraction=0.0)
    metric = BitsPerToken()
    metric.update_state(ids, np.zeros((2, 6, VOCAB), np.float32))
    np.testing.assert_allclose(float(metric.result()), math.log2(VOCAB), rtol=1e-6)


def test_sample_weight_scales_token_weights():
    ids, logits = _batch(9, 2, 6, pad_fraction=0.0)
    weights = np.zeros((2, 6), np.float32)
    weights[0] = 1.0
    metric = BitsPerToken()
    metric.update_state(ids, logits, sample_weight=weights)
    np.testing.assert_allclose(float(metric.result()), _mean_nats([(ids[:1], logits[:1])], None) / math.log(2),
                               rtol=1e-5)


@pytest.mark.parametrize("cls", [BitsPerToken, Perplexity])
def test_reset_state(cls):
    first, second = _batch(10, 2, 5), _batch(11, 2, 7)
    metric = cls(ignore_id=0)
    metric.update_state(*first)
    metric.reset_state()
    assert float(metric.total_nats) == 0.0 and float(metric.count) == 0.0
    metric.update_state(*second)
    fresh = cls(ignore_id=0)
    fresh.update_state(*second)
    np.testing.assert_allclose(float(metric.result()), float(fresh.result()), rtol=1e-6)


def test_config_round_trip():
    loss = LanguageModelLoss(ignore_id=5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is LanguageModelLoss and restored.ignore_id == 5 and restored.name == loss.name
    for cls in (BitsPerToken, Perplexity):
        metric = cls(ignore_id=2, name=f"my_{cls.__name__}")
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(restored) is cls
        assert restored.ignore_id == 2 and restored.name == metric.name
        clone = cls.from_config(metric.get_config())
        assert clone.get_config() == metric.get_config()
    assert BitsPerToken().name == "bits_per_token" and Perplexity().name == "perplexity"
