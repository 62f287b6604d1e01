"""Incremental decoding of every causal Combiner variant (combiner/decoding.py): the prompt's pass plus one cached
step per position gives the full pass's logits, a step reads only the positions its pattern needs, and
bidirectional layers refuse to decode."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras import ops

from combiner import CombinerAttention, CombinerLM
from combiner.summaries import LOCAL_SUMMARIES
from apps import sample
from common.models import DecoderLM

VOCAB, SEGMENT = 32, 4
# 19 tokens: not a multiple of the segment; crosses the 16-token logsparse block. Prompts: one token, a partial
# segment, a segment boundary.
LENGTH, PROMPTS = 19, (1, 6, 8)


def _initializer():
    """N(0, 0.5): attention far from uniform and logits of order 5, so dropping any part of a step (a region
    kind, the direct entries) moves the logits by 1 to 8, far above the tolerance."""
    return keras.initializers.RandomNormal(stddev=0.5)


def _model(use_bias, **attention):
    keras.utils.set_random_seed(0)
    if use_bias:  # the preset: pre-LN, biases everywhere
        return CombinerLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, num_heads=2, ffn_dim=32,
                          max_length=32, segment_length=SEGMENT, initializer=_initializer(), seed=1, **attention)
    # Post-LN (the row projection then sees the raw block input), no biases, value_dim != key_dim.
    layers = [CombinerAttention(num_heads=2, key_dim=8, value_dim=3, segment_length=SEGMENT, use_bias=False,
                                kernel_initializer=_initializer(), seed=i, **attention) for i in range(2)]
    return DecoderLM(VOCAB, 2, 16, layers, 32, position_axes=(32,), norm_placement="post",
                     embeddings_initializer=_initializer(), seed=1)


# (biases, attention options, the prompt length of the fast run). Every other prompt length is a slow run; the fast
# runs still give every variant several prompt lengths, biases on and off, and each pooling and activation.
FAST_POOLINGS = {"identity-max": 6, "relu-mean": 1, "deepset-sum": 8}
CASES = [(True, dict(variant="fixed", local_summary=s), FAST_POOLINGS.get(s)) for s in LOCAL_SUMMARIES]
CASES += [(True, dict(variant="logsparse"), 6), (True, dict(variant="mixture"), 6)]
CASES += [(True, dict(variant="axial", row_summary=s), p)
          for s, p in (("none", 1), ("wsum", 8), ("proj", 6), ("wsum_proj", 1))]
CASES += [(False, dict(variant="fixed", local_summary="deepset-sum"), 6), (False, dict(variant="logsparse"), 1),
          (False, dict(variant="axial", row_summary="proj"), 8),
          (False, dict(variant="axial", row_summary="wsum_proj"), 6), (False, dict(variant="mixture"), 1)]


@pytest.mark.parametrize("use_bias,attention,prompt", [
    pytest.param(use_bias, attention, prompt, marks=() if prompt == fast else pytest.mark.slow,
                 id=f"{'bias' if use_bias else 'nobias'}-{'-'.join(attention.values())}-prompt{prompt}")
    for use_bias, attention, fast in CASES for prompt in PROMPTS])
def test_incremental_logits_equal_the_full_pass(use_bias, attention, prompt):
    model = _model(use_bias, **attention)
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, LENGTH)).astype(np.int32)
    full = np.asarray(model(ids))
    assert np.abs(full).max() > 1  # peaked enough for the comparison to mean something
    incremental = tf.function(sample.incremental_logits)(model, ids, prompt).numpy()
    np.testing.assert_allclose(incremental, full[:, prompt:], rtol=0, atol=1e-4)


def test_logsparse_decodes_from_a_prompt_of_run_time_length():
    """A prompt whose length is known only at run time (a serving signature): the model's max_length bounds the
    levels of the prompt's pass and of its block caches; one trace serves every prompt length."""
    model = _model(True, variant="logsparse")
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, LENGTH)).astype(np.int32)
    full = np.asarray(model(ids))
    run = tf.function(lambda ids, prompt: sample.incremental_logits(model, ids, prompt),
                      input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32)])
    for prompt in (1, 2, 5, 8, 9, 17):
        np.testing.assert_allclose(run(ids, prompt).numpy(), full[:, prompt:], rtol=0, atol=1e-4,
                                   err_msg=f"prompt {prompt}")
    assert run.experimental_get_tracing_count() == 1


# A prompt of 11 tokens, then the steps at 11 (completing segment/row 2) and 12 (first of row 3), m = 4. Every
# variant needs the prompt positions of the own segment, 8 .. 10 (its direct part, and the summaries of the
# segment it completes); axial with row_summary "none" also the keys at the query's column (its region keys),
# mixture the queries, keys and values of the query's column (column direct part and column summaries).
PROMPT, STEPS = 11, (11, 12)
OWN_SEGMENT = [8, 9, 10]
NEEDED = {"fixed": {}, "logsparse": {}, "axial-proj": {}, "axial-none": {"keys": [0, 3, 4, 7]},
          "mixture": {name: [0, 3, 4, 7] for name in ("queries", "keys", "values")}}


def _with_nan(x, positions, axis):
    x = np.array(x)
    index = [slice(None)] * x.ndim
    index[axis] = list(positions)
    x[tuple(index)] = np.nan
    return x


@pytest.mark.parametrize("case", sorted(NEEDED))
def test_a_step_reads_only_what_its_pattern_needs(case):
    """The steps run on caches whose queries, keys, values and layer inputs are NaN at every prompt position
    they must not read (earlier segments and rows reach them only through the region caches, which stay
    clean): the outputs do not change. Poisoning one position they do need gives NaN (the test can fail)."""
    variant, _, row_summary = case.partition("-")
    layer = CombinerAttention(num_heads=2, key_dim=4, variant=variant, segment_length=SEGMENT,
                              local_summary="deepset-max", row_summary=row_summary or "proj", use_bias=True,
                              kernel_initializer=_initializer(), seed=0)
    x = np.random.default_rng(1).standard_normal((2, STEPS[-1] + 1, 8)).astype(np.float32)
    layer(x)
    q, k, v = (np.asarray(y) for y in layer.project_heads(x))
    names = ("inputs", "queries", "keys", "values")

    @tf.function
    def run(poisoned):
        prompt = [y[:, :PROMPT] if y.ndim == 3 else y[:, :, :PROMPT] for y in (x, q, k, v)]
        cache = layer.start_cache(*prompt, STEPS[-1] + 1)
        dirty = layer.start_cache(*poisoned, STEPS[-1] + 1)
        cache = dict(cache, **{name: dirty[name] for name in names if name in cache})
        outs = []
        for position in STEPS:
            out, cache = layer.attend_next(x[:, position:position + 1], *(y[:, :, position:position + 1]
                                                                          for y in (q, k, v)),
                                           cache, tf.constant(position))
            outs.append(out)
        return ops.concatenate(outs, axis=1)

    def poisoned(keep):  # NaN at the prompt positions not in keep[name]
        return [_with_nan(y[:, :PROMPT] if y.ndim == 3 else y[:, :, :PROMPT],
                          np.setdiff1d(np.arange(PROMPT), keep[name]), 1 if y.ndim == 3 else 2)
                for name, y in zip(names, (x, q, k, v))]

    clean = np.asarray(run(poisoned({name: np.arange(PROMPT) for name in names})))
    assert np.isfinite(clean).all()
    keep = {name: OWN_SEGMENT + NEEDED[case].get(name, []) for name in names}
    np.testing.assert_allclose(np.asarray(run(poisoned(keep))), clean, rtol=0, atol=1e-6)
    assert np.isnan(np.asarray(run(poisoned(dict(keep, keys=[8, 9]))))).any()  # key 10 is needed


@pytest.mark.parametrize("variant", ["fixed", "axial", "mixture"])
def test_bidirectional_layers_cannot_decode(variant):
    layer = CombinerAttention(num_heads=2, key_dim=4, variant=variant, segment_length=SEGMENT, causal=False)
    x = np.zeros((1, 8, 8), np.float32)
    layer(x)
    with pytest.raises(ValueError, match=f"needs causal attention; this Combiner-{variant} .*causal=False"):
        layer.prefill(x, 12)
