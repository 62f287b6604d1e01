"""apps.sample: cached decoding equals the full pass; greedy, top-k, nucleus, seeds, stop token, bad requests,
loading, the command line."""

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from apps import checkpoints, errors, sample
from common.layers import SelfAttention
from common.models import DecoderLM
from tests.apps.train_helpers import (  # noqa: F401  (fixtures)
    assert_one_line_error, assert_same_arrays, clean_gin, corpus, run_module, trained, variables_by_position)

pytestmark = pytest.mark.usefixtures("clean_gin")

VOCAB, MAX_LENGTH = 16, 48


def _lm(attention, **options):
    keras.utils.set_random_seed(3)
    lm = DecoderLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, ffn_dim=32, attention=attention,
                   position_axes=(MAX_LENGTH,), **options)
    lm(np.zeros([1, MAX_LENGTH], np.int32))
    return lm


@pytest.fixture(scope="module")
def model():
    """A tiny untrained causal LM with dense attention: near-flat logits, so samples vary with the seed."""
    return _lm(SelfAttention(num_heads=2, key_dim=8))


def _greedy(model, prompt, num_tokens):
    """The argmax continuation computed with a full pass per token (no cache)."""
    ids = [list(row) for row in prompt]
    for _ in range(num_tokens):
        logits = np.asarray(model(np.array([row + [0] for row in ids], np.int32), training=False))[:, -1]
        for row, token in zip(ids, np.argmax(logits, axis=-1)):
            row.append(int(token))
    return np.array([row[len(prompt[0]):] for row in ids])


def _generate(model, prompt, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, seed=0, stop_id=-1):
    """`sample.generate` traced for any prompt shape, as the SavedModel signature traces it."""
    run = tf.function(lambda prompt, *arguments: sample.generate(model, prompt, *arguments, max_length=MAX_LENGTH),
                      input_signature=[tf.TensorSpec([None, None], tf.int32)] + [tf.TensorSpec([], dtype) for dtype in (
                          tf.int32, tf.float32, tf.int32, tf.float32, tf.int32, tf.int32)])
    return run(tf.constant(prompt, tf.int32), max_new_tokens, temperature, top_k, top_p, seed, stop_id).numpy()


PROMPT = [[3, 1, 4], [2, 7, 1]]


@pytest.mark.parametrize("attention", [
    SelfAttention(num_heads=2, key_dim=8),
    SelfAttention(num_heads=2, key_dim=8, kernel="local", kernel_options={"block_size": 4, "look_back": 2},
                  max_relative_position=5),
], ids=["dense", "local_relative"])
@pytest.mark.parametrize("options", [{}, {"norm_placement": "post", "embedding_dim": 12},
                                     {"tie_embeddings": True}], ids=["pre", "post_projected", "tied"])
def test_cached_logits_equal_the_full_pass(attention, options):
    lm = _lm(attention, **options)
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 29)).astype(np.int32)
    full = np.asarray(lm(ids))
    for prompt_length in (1, 11):
        cached = tf.function(sample.incremental_logits)(lm, ids, prompt_length).numpy()
        np.testing.assert_allclose(cached, full[:, prompt_length:], atol=1e-4)


def test_cached_logits_under_mixed_precision_match_the_full_pass():
    """prefill and decode read weights in bfloat16 as `call` does (they are not called through __call__).

    Cached and full bfloat16 logits may differ by bfloat16 rounding, which at logits of ~3 is ~0.016 per ulp
    and depends on the CPU's kernels: the bound is the full bfloat16 pass's own distance from float32 on the
    same weights (twice it), measured here, not a fixed number."""
    def local_lm(dtype):
        return _lm(SelfAttention(num_heads=2, key_dim=8, kernel="local", kernel_options={"block_size": 4},
                                 max_relative_position=3, dtype=dtype), dtype=dtype)

    lm, reference = local_lm("mixed_bfloat16"), local_lm("float32")
    reference.set_weights(lm.get_weights())
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 21)).astype(np.int32)
    cached = tf.function(sample.incremental_logits)(lm, ids, 4).numpy()
    assert cached.dtype == np.float32
    full, exact = np.asarray(lm(ids))[:, 4:], np.asarray(reference(ids))[:, 4:]
    rounding = np.abs(full - exact).max()
    assert 0 < rounding < 0.1
    np.testing.assert_allclose(cached, full, atol=2 * rounding)


def test_decoding_an_unbuilt_model_says_to_build_it():
    lm = DecoderLM(vocabulary_size=VOCAB, num_layers=1, hidden_dim=8, ffn_dim=16,
                   attention=SelfAttention(num_heads=2, key_dim=4))
    with pytest.raises(ValueError, match="built model"):
        lm.prefill(np.zeros((1, 3), np.int32), 8)


def test_temperature_zero_is_the_greedy_continuation(model):
    got = _generate(model, PROMPT, 10, temperature=0.0)
    np.testing.assert_array_equal(got, _greedy(model, PROMPT, 10))
    assert got.shape == (2, 10)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 5.0])
def test_top_k_one_is_greedy_at_any_temperature(model, temperature):
    got = _generate(model, PROMPT, 8, temperature=temperature, top_k=1, seed=7)
    np.testing.assert_array_equal(got, _greedy(model, PROMPT, 8))


def test_a_tiny_nucleus_is_greedy(model):
    np.testing.assert_array_equal(_generate(model, PROMPT, 8, top_p=1e-6, seed=3), _greedy(model, PROMPT, 8))


def test_same_seed_same_sample_other_seed_other_sample(model):
    first = _generate(model, PROMPT, 24, seed=11)
    np.testing.assert_array_equal(_generate(model, PROMPT, 24, seed=11), first)
    others = [_generate(model, PROMPT, 24, seed=s) for s in (12, 13)]
    assert any(not np.array_equal(o, first) for o in others)
    assert not np.array_equal(first, _greedy(model, PROMPT, 24))  # it samples: near-flat draws are not all argmax
    assert first.min() >= 0 and first.max() < VOCAB


def test_after_the_stop_token_a_row_repeats_it(model):
    greedy = _greedy(model, PROMPT, 12)
    stop = int(greedy[0, 3])
    got = _generate(model, PROMPT, 12, temperature=0.0, stop_id=stop)
    for row, expected in zip(got, greedy):
        first_stop = list(expected).index(stop) if stop in expected else len(expected)
        np.testing.assert_array_equal(row[:first_stop + 1], expected[:first_stop + 1])
        assert np.all(row[first_stop:] == stop)


def test_zero_new_tokens_is_an_empty_continuation(model):
    assert _generate(model, PROMPT, 0).shape == (2, 0)


@pytest.mark.parametrize("top_k", [1, 3, 7])
def test_filter_logits_keeps_exactly_the_top_k(top_k):
    logits = np.random.default_rng(top_k).permutation(np.linspace(-3.0, 4.0, VOCAB))[None].astype(np.float32)
    filtered = sample.filter_logits(tf.constant(logits), 0.5, top_k, 1.0).numpy()[0]
    kept = np.flatnonzero(np.isfinite(filtered))
    assert sorted(kept) == sorted(np.argsort(logits[0])[-top_k:])
    np.testing.assert_allclose(filtered[kept], logits[0, kept] / 0.5, rtol=1e-6)
    assert np.all(filtered[np.isinf(filtered)] < 0)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_filter_logits_keeps_the_smallest_nucleus_reaching_top_p(top_p):
    logits = np.random.default_rng(1).standard_normal((1, VOCAB)).astype(np.float32) * 2
    filtered = sample.filter_logits(tf.constant(logits), 1.0, 0, top_p).numpy()[0]
    probabilities = np.exp(logits[0] - logits[0].max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities)
    size = int(np.searchsorted(np.cumsum(probabilities[order]), top_p) + 1)  # first prefix reaching top_p
    assert sorted(np.flatnonzero(np.isfinite(filtered))) == sorted(order[:size])


@pytest.mark.parametrize("top_k", [0, VOCAB, VOCAB + 5])
def test_filter_logits_without_a_binding_top_k_or_top_p_keeps_all(top_k):
    logits = np.linspace(-1.0, 1.0, VOCAB)[None].astype(np.float32)
    np.testing.assert_allclose(sample.filter_logits(tf.constant(logits), 2.0, top_k, 1.0).numpy(), logits / 2.0,
                               rtol=1e-6)


@pytest.mark.parametrize("prompt,arguments,message", [
    (np.zeros((1, 0), np.int32), {}, "empty"),
    ([[1, 2, 3]], dict(max_new_tokens=MAX_LENGTH), "maximum length"),
    ([[1, 2, 3]], dict(top_p=0.0), "top_p"),
    ([[1, 2, 3]], dict(top_p=1.5), "top_p"),
    ([[1, 2, 3]], dict(max_new_tokens=-1), "max_new_tokens"),
    ([[1, VOCAB, 3]], {}, "outside the vocabulary"),
    ([[1, -1, 3]], {}, "outside the vocabulary"),
    ([[1, 2, 3]], dict(temperature=-1.0), "temperature"),
    ([[1, 2, 3]], dict(top_k=-2), "top_k"),
])
def test_bad_requests_name_the_problem(model, prompt, arguments, message):
    arguments = dict(dict(max_new_tokens=4), **arguments)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        _generate(model, prompt, **arguments)
    python_arguments = dict(temperature=1.0, top_k=0, top_p=1.0, max_length=MAX_LENGTH)
    python_arguments.update({key: value for key, value in arguments.items() if key != "max_new_tokens"})
    if message != "outside the vocabulary":  # ids are checked by the graph; text prompts are bytes
        with pytest.raises(ValueError, match=message):
            sample.check_arguments(np.shape(prompt)[1], arguments["max_new_tokens"], **python_arguments)


# --- a trained model directory ------------------------------------------------------------------------------

def test_load_trained_model_restores_the_trained_variables(trained):
    model_dir, trained_model, _ = trained
    loaded, experiment = checkpoints.load_trained_model(model_dir)
    assert experiment.sequence_length == 32 and loaded.num_layers == 2 and loaded.hidden_dim == 32
    assert_same_arrays(variables_by_position(trained_model), variables_by_position(loaded), atol=0.0,
                       what="load_trained_model vs the model training ended with")


def test_load_trained_model_without_a_checkpoint_is_a_user_error(trained, tmp_path):
    shutil.copy(os.path.join(trained[0], "operative_config.gin"), tmp_path / "operative_config.gin")
    with pytest.raises(errors.UserError, match="no checkpoint"):
        checkpoints.load_trained_model(str(tmp_path))
    with pytest.raises(errors.UserError, match="operative_config.gin"):
        checkpoints.load_trained_model(str(tmp_path / "nothing_here"))


def test_cli_prints_the_prompt_and_its_continuation(trained):
    result = run_module("apps.sample", f"--model_dir={trained[0]}", "--prompt=def ", "--length=12",
                        "--temperature=0")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("def ")
    assert len(result.stdout) > len("def \n")  # 12 new bytes decode to at least one character


def test_cli_without_a_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "untrained").mkdir()
    result = run_module("apps.sample", f"--model_dir={tmp_path / 'untrained'}", "--prompt=x", "--length=3")
    line = assert_one_line_error(result)
    assert "untrained" in line


@pytest.mark.parametrize("arguments,message", [
    (["--prompt=", "--length=3"], "empty"),
    (["--prompt=x", "--length=-1"], "--length=-1"),
    (["--prompt=x", "--length=0"], "--length=0: give at least 1 token"),
    (["--prompt=def \udcff", "--length=3"], "--prompt is not valid UTF-8"),  # argv byte 0xff
    (["--prompt=x", "--length=3", "--top_p=1.5"], "top_p"),
    (["--prompt=" + "x" * 30, "--length=5"], "maximum length 32"),
])
def test_cli_bad_requests_are_one_line_errors(trained, arguments, message):
    line = assert_one_line_error(run_module("apps.sample", f"--model_dir={trained[0]}", *arguments))
    assert message in line
