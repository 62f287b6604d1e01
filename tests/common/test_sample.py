"""common.sample: greedy and sampled generation, top-k filtering, windows, seeds, loading, the command line."""

import os
import shutil

import keras
import numpy as np
import pytest

from common import sample
from common.layers import SelfAttention
from common.models import DecoderLM
from tests.common.train_helpers import (  # noqa: F401  (fixtures)
    assert_one_line_error, assert_same_arrays, clean_gin, corpus, run_module, trained, variables_by_position)

pytestmark = pytest.mark.usefixtures("clean_gin")

VOCAB, WINDOW = 16, 16


@pytest.fixture(scope="module")
def model():
    """A tiny untrained causal LM with dense attention: near-flat logits, so samples vary with the seed."""
    keras.utils.set_random_seed(3)
    lm = DecoderLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, ffn_dim=32,
                   attention=SelfAttention(num_heads=2, key_dim=8))
    lm(np.zeros([1, WINDOW], np.int32))
    return lm


def _next_logits(model, context):
    """The model's logits for the token after `context`, read directly (no window, no padding)."""
    ids = np.array([list(context) + [0]], np.int32)  # logits at position t predict token t from ids < t
    return np.asarray(model(ids, training=False))[0, len(context)].astype(np.float64)


def _greedy(model, prompt, num_tokens, window=None):
    ids = list(prompt)
    for _ in range(num_tokens):
        context = ids if window is None else ids[-(window - 1):]
        ids.append(int(np.argmax(_next_logits(model, context))))
    return ids[len(prompt):]


PROMPT = [3, 1, 4]


def test_temperature_zero_is_the_greedy_continuation(model):
    expected = _greedy(model, PROMPT, 10)
    assert sample.generate(model, PROMPT, 10, WINDOW, temperature=0) == expected
    assert len(expected) == 10 and all(0 <= t < VOCAB for t in expected)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_one_is_greedy_at_any_temperature(model, temperature):
    got = sample.generate(model, PROMPT, 8, WINDOW, temperature=temperature, top_k=1, seed=7)
    assert got == _greedy(model, PROMPT, 8)


def test_same_seed_same_sample_other_seed_other_sample(model):
    first = sample.generate(model, PROMPT, 24, WINDOW, temperature=1.0, seed=11)
    assert sample.generate(model, PROMPT, 24, WINDOW, temperature=1.0, seed=11) == first
    others = [sample.generate(model, PROMPT, 24, WINDOW, temperature=1.0, seed=s) for s in (12, 13)]
    assert any(o != first for o in others)
    assert first != _greedy(model, PROMPT, 24)  # it samples: 24 near-flat draws are not all the argmax
    assert all(0 <= t < VOCAB for t in first)


def test_empty_prompt_raises(model):
    with pytest.raises(ValueError, match="empty"):
        sample.generate(model, [], 3, WINDOW)


def test_prompt_longer_than_the_window_uses_its_last_window_minus_one_tokens(model):
    window = 8
    prompt = list(np.random.default_rng(0).integers(0, VOCAB, size=3 * window))
    got = sample.generate(model, prompt, 6, window, temperature=0)
    assert got == _greedy(model, prompt, 6, window=window)
    assert got == sample.generate(model, prompt[-(window - 1):], 6, window, temperature=0)
    # With a sampling temperature too (same seed, same draws).
    assert (sample.generate(model, prompt, 6, window, temperature=1.0, seed=5)
            == sample.generate(model, prompt[-(window - 1):], 6, window, temperature=1.0, seed=5))


@pytest.mark.parametrize("top_k", [1, 3, 7])
def test_filter_logits_keeps_exactly_the_top_k(top_k):
    logits = np.random.default_rng(top_k).permutation(np.linspace(-3.0, 4.0, VOCAB))  # distinct values
    filtered = sample.filter_logits(logits, temperature=0.5, top_k=top_k)
    kept = np.flatnonzero(np.isfinite(filtered))
    assert sorted(kept) == sorted(np.argsort(logits)[-top_k:])
    np.testing.assert_allclose(filtered[kept], logits[kept] / 0.5)
    assert np.all(filtered[np.isinf(filtered)] < 0)


@pytest.mark.parametrize("top_k", [0, VOCAB, VOCAB + 5])
def test_filter_logits_without_a_binding_top_k_keeps_all(top_k):
    logits = np.linspace(-1.0, 1.0, VOCAB)
    np.testing.assert_allclose(sample.filter_logits(logits, temperature=2.0, top_k=top_k), logits / 2.0)


# --- a trained model directory ------------------------------------------------------------------------------

def test_load_trained_model_restores_the_trained_variables(trained):
    model_dir, trained_model, _ = trained
    loaded, experiment = sample.load_trained_model(model_dir)
    assert experiment.sequence_length == 32 and loaded.num_layers == 2 and loaded.hidden_dim == 32
    assert_same_arrays(variables_by_position(trained_model), variables_by_position(loaded), atol=0.0,
                       what="load_trained_model vs the model training ended with")


def test_load_trained_model_without_a_checkpoint_is_a_user_error(trained, tmp_path):
    shutil.copy(os.path.join(trained[0], "operative_config.gin"), tmp_path / "operative_config.gin")
    with pytest.raises(sample.train.UserError, match="no checkpoint"):
        sample.load_trained_model(str(tmp_path))
    with pytest.raises(sample.train.UserError, match="operative_config.gin"):
        sample.load_trained_model(str(tmp_path / "nothing_here"))


def test_cli_prints_the_prompt_and_its_continuation(trained):
    result = run_module("common.sample", f"--model_dir={trained[0]}", "--prompt=def ", "--length=12",
                        "--temperature=0")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("def ")
    assert len(result.stdout) > len("def \n")  # 12 new bytes decode to at least one character


def test_cli_without_a_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "untrained").mkdir()
    result = run_module("common.sample", f"--model_dir={tmp_path / 'untrained'}", "--prompt=x", "--length=3")
    line = assert_one_line_error(result)
    assert "untrained" in line
