"""Incremental decoding of the sparse kernel: every step equals its row of the exact reference mask, a
SparseTransformerLM decoded token by token gives the logits of its full pass (every pattern kind, lengths that
are not multiples of the stride, prompts of one and more tokens), a step reads exactly the positions its
pattern needs, and what cannot be decoded is a clear error."""

import re

import numpy as np
import pytest
import tensorflow as tf

import keras

from common import kv_cache
from apps import sample
from common.attention import dense_attention, get_decoder
from common.models import DecoderLM
from sparse_transformer import SparseAttention, SparseTransformerLM, attention_mask

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1:UserWarning")

RNG = np.random.default_rng(0)
VOCAB = 40


def _qkv(length, heads=4, key_dim=4, value_dim=3, batch=2):
    q, k = (RNG.standard_normal((batch, heads, length, key_dim)).astype(np.float32) for _ in range(2))
    v = RNG.standard_normal((batch, heads, length, value_dim)).astype(np.float32)
    return q, k, v


def _rows_by_steps(q, k, v, prompt_length, **options):
    """The sparse decoder started on the first prompt_length positions, then one step per position in a
    `tf.while_loop`, as `apps.sample` runs it."""
    start, step = get_decoder("sparse")
    length = q.shape[2]
    q, k, v = (tf.constant(x) for x in (q, k, v))

    @tf.function
    def run():
        rows = tf.TensorArray(tf.float32, size=length - prompt_length)

        def body(position, cache, rows):
            new = slice(position, position + 1)
            out, cache = step(None, q[:, :, new], k[:, :, new], v[:, :, new], cache, position, **options)
            return position + 1, cache, rows.write(position - prompt_length, out[:, :, 0])

        cache = start(None, q[:, :, :prompt_length], k[:, :, :prompt_length], v[:, :, :prompt_length], length,
                      **options)
        _, _, rows = tf.while_loop(lambda position, *_: position < length, body,
                                   (tf.constant(prompt_length), cache, rows))
        return tf.transpose(rows.stack(), [1, 2, 0, 3])

    return run().numpy()


@pytest.mark.parametrize("pattern", ["all", "local", "strided", "block", "summary", "fixed", "local+strided",
                                     "local|strided", "fixed|all", "summary+local+strided"])
@pytest.mark.parametrize("stride,summary,num_summary_patterns", [(4, 1, 2), (5, 2, 1)])
def test_steps_equal_the_reference_mask(pattern, stride, summary, num_summary_patterns):
    """Length 19 is a multiple of neither stride; rows of `summary` alone before the first summary position see
    no key and are zero, as in the full kernel."""
    q, k, v = _qkv(19)
    options = dict(pattern=pattern, stride=stride, summary=summary, num_summary_patterns=num_summary_patterns)
    mask = attention_mask(19, num_heads=4, **options)
    expected = np.asarray(dense_attention(q, k, v, mask=mask[None]))
    for prompt_length in (1, 6):
        got = _rows_by_steps(q, k, v, prompt_length, causal=True, query_chunk_size=None, **options)
        np.testing.assert_allclose(got, expected[:, :, prompt_length:], atol=1e-5, err_msg=f"{prompt_length}")


def _randomise(model, seed=0, std=0.3):
    """Draws every weight from N(0, std): the preset's zero output head would make every logit zero, and its
    small initialisation would make attention nearly uniform, hiding a wrong key set."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(std * rng.standard_normal(weight.shape).astype(np.float32))


def _check_incremental_logits(model, length, prompt_lengths):
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, length)).astype(np.int32)
    model(ids)
    _randomise(model)
    full = np.asarray(model(ids, training=False))
    assert np.abs(np.diff(full, axis=1)).max() > 0.1  # logits that depend on the context
    incremental = tf.function(sample.incremental_logits)
    for prompt_length in prompt_lengths:
        got = incremental(model, ids, prompt_length).numpy()
        np.testing.assert_allclose(got, full[:, prompt_length:], rtol=0, atol=1e-4,
                                   err_msg=f"prompt_length={prompt_length}")


@pytest.mark.parametrize("schedule,num_summary_patterns", [
    ("all", 1), ("local", 1), ("strided", 1), ("block", 1), ("summary", 1), ("fixed", 1), ("fixed", 2),
    ("local+strided", 1), ("local|strided", 1), ("b,bT,b,b", 1)])
def test_decoded_logits_equal_the_full_pass(schedule, num_summary_patterns):
    """SparseTransformerLM with stride 4 and 18 positions (not a multiple of it): prompts of 1 and 7 tokens."""
    keras.utils.set_random_seed(0)
    model = SparseTransformerLM(vocabulary_size=VOCAB, num_layers=max(2, len(schedule.split(","))),
                                hidden_dim=16, num_heads=4, attention_schedule=schedule, stride=4,
                                summary=1, num_summary_patterns=num_summary_patterns, max_length=24, seed=1)
    _check_incremental_logits(model, 18, (1, 7))


def test_decoder_lm_with_sparse_layers_decodes():
    """Post-LN DecoderLM, half-width keys, stride 3 and summary 2 with per-head summaries, 3 layers of different
    patterns, 17 positions."""
    layers = [SparseAttention(4, 2, value_dim=4, pattern=pattern, stride=3, summary=1, num_summary_patterns=2)
              for pattern in ("fixed", "local+strided", "summary|local")]
    model = DecoderLM(VOCAB, 3, 16, layers, 32, norm_placement="post", position_axes=(20,), seed=1)
    _check_incremental_logits(model, 17, (1, 5))


def test_greedy_generation_follows_the_full_pass():
    """The sampling loop's greedy continuation is the argmax of the full model's logits, token after token."""
    keras.utils.set_random_seed(0)
    model = SparseTransformerLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, num_heads=2,
                                attention_schedule="fixed,local+strided", stride=4, summary=1, max_length=16)
    prompt = np.random.default_rng(2).integers(0, VOCAB, (2, 3)).astype(np.int32)
    model(prompt)
    _randomise(model)
    generated = tf.function(sample.generate)(model, prompt, 9, temperature=0.0).numpy()
    ids = prompt
    for _ in range(9):
        logits = np.asarray(model(np.concatenate([ids, ids[:, -1:]], axis=1), training=False))[:, -1]
        ids = np.concatenate([ids, np.argmax(logits, axis=-1)[:, None].astype(np.int32)], axis=1)
    np.testing.assert_array_equal(generated, ids[:, 3:])


STRIDE, SUMMARY = 8, 2


def _expected_reads(atom, t):
    """The slots a step at t reads for one atomic pattern: its candidates, clamped to [0, t] (what the clamp
    stands in for is masked)."""
    if atom == "all":
        return list(range(t + 1))
    if atom == "local":
        return [max(t - STRIDE + 1 + i, 0) for i in range(STRIDE)]
    if atom == "block":
        return [min(t // STRIDE * STRIDE + i, t) for i in range(STRIDE)]
    if atom == "strided":
        return list(range(t, -1, -STRIDE))
    return [min(b + offset, t) for b in range(0, t + 1, STRIDE) for offset in range(STRIDE - SUMMARY, STRIDE)]


@pytest.mark.parametrize("pattern,atoms", [("local", ["local"]), ("block", ["block"]), ("strided", ["strided"]),
                                           ("summary", ["summary"]), ("fixed", ["block", "summary"]),
                                           ("all", ["all"])])
def test_a_step_reads_only_what_its_pattern_needs(pattern, atoms, monkeypatch):
    """At positions 37 and 300 of a 400-slot cache, a step reads exactly the pattern's candidates: the same
    l = 8 slots count for local and block whatever the prefix, t / l + 1 for strided, (t / l + 1) x c for the
    summary; only `all` reads the whole prefix."""
    reads = []
    original = kv_cache.read

    def recording_read(cache, positions):
        reads.append(np.asarray(positions))
        return original(cache, positions)

    monkeypatch.setattr(kv_cache, "read", recording_read)
    start, step = get_decoder("sparse")
    options = dict(pattern=pattern, stride=STRIDE, summary=SUMMARY)
    q, k, v = _qkv(301, heads=2)
    counts = []
    for t in (37, 300):
        reads.clear()
        cache = start(None, q[:, :, :t], k[:, :, :t], v[:, :, :t], 400, **options)  # eager: the read sizes are concrete
        step(None, q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], cache, tf.constant(t), **options)
        assert len(reads) == 2  # keys and values, one gather each
        expected = sorted(position for atom in atoms for position in _expected_reads(atom, t))
        for read in reads:
            assert sorted(read.tolist()) == expected, f"t={t}"
        counts.append(len(reads[0]))
    if pattern in ("local", "block"):
        assert counts == [STRIDE, STRIDE]
    if pattern == "strided":
        assert counts == [37 // STRIDE + 1, 300 // STRIDE + 1]


def test_bidirectional_layers_cannot_decode():
    layer = SparseAttention(2, 4, pattern="fixed", stride=4, summary=1, causal=False)
    x = RNG.standard_normal((1, 6, 8)).astype(np.float32)
    layer(x)
    with pytest.raises(ValueError, match="needs causal attention.*sparse attention has causal=False"):
        layer.prefill(x, 10)


def test_a_cache_of_another_pattern_is_refused():
    q, k, v = _qkv(6)
    start, step = get_decoder("sparse")
    cache = start(None, q, k, v, 8, pattern="fixed", stride=2, summary=1)
    with pytest.raises(ValueError, match=re.escape("cache has 1 head groups but pattern 'local|strided' has 2")):
        step(None, q[:, :, :1], k[:, :, :1], v[:, :, :1], cache, tf.constant(6), pattern="local|strided",
             stride=2)
