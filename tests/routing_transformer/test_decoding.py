"""Incremental decoding of RoutingTransformerLM: causal routing equals the full pass; balanced routing equals
a full pass on each prefix for the first routing layer and the original's fast decoding (frozen earlier
inputs) with several; centroids never move; a causal-routing step reads a fixed number of entries."""

import numpy as np
import pytest
import tensorflow as tf

import keras
from keras import ops

from apps import sample
from common.models import DecoderLM
from common.layers import layer_norm
from routing_transformer import decoding
from routing_transformer.attention import RoutingAttention
from routing_transformer.model import RoutingTransformerLM

VOCAB, LENGTH, CLUSTERS, WINDOW = 40, 24, 3, 5  # clusters x window = 15 < 24: late tokens can be in no cluster
SMALL = dict(vocabulary_size=VOCAB, hidden_dim=32, embedding_dim=16, ffn_dim=32, local_heads=2, routing_heads=2,
             num_clusters=CLUSTERS, window=WINDOW, block_size=4, max_relative_position=4, seed=1)


def _model(**overrides):
    keras.utils.set_random_seed(0)  # unseeded initialisers draw their seeds from Python's `random`
    model = RoutingTransformerLM(**dict(SMALL, **overrides))
    model.build((None, None))  # variables first: tf.function creates none
    return model


def incremental_logits(model, ids, prompt_length):
    return tf.function(sample.incremental_logits)(model, ids, prompt_length).numpy()


def _ids(repeats):
    """[2, LENGTH] ids; without repeats, equal tokens cannot tie in a first layer (no absolute positions)."""
    rng = np.random.default_rng(0)
    if repeats:
        return rng.integers(0, 6, (2, LENGTH)).astype(np.int32)
    return np.stack([rng.permutation(VOCAB)[:LENGTH] for _ in range(2)]).astype(np.int32)


def _per_prefix(model, ids, prompt_length):
    """Logits at t from a full pass over the prefix 0 .. t, for t >= prompt_length."""
    return np.stack([model(ids[:, :t + 1]).numpy()[:, t] for t in range(prompt_length, ids.shape[1])], axis=1)


@pytest.mark.parametrize("local_heads,skip_first,prompt_length", [(2, 1, 9), (0, 0, 1)])
def test_causal_routing_decodes_as_the_full_pass(local_heads, skip_first, prompt_length):
    """Several layers, relative positions, repeated tokens, a prompt shorter or longer than the window."""
    model = _model(routing="causal", num_layers=3, skip_first=skip_first, local_heads=local_heads)
    ids = _ids(repeats=True)
    got = incremental_logits(model, ids, prompt_length)
    np.testing.assert_allclose(got, model(ids).numpy()[:, prompt_length:], atol=1e-4, rtol=0)


def _routed_counts(model, ids, layer):
    """counts[b, h, t]: clusters of layer `layer` whose top-`window` over 0 .. t holds t (queries, share_qk)."""
    x = model.block_inputs(model.embed(ids))
    for block in model.blocks[:layer]:
        x = block(x)
    attention = model.blocks[layer].attention
    q = attention.project_heads(x)[0][:, :attention.routing_heads]  # post-LN: the attention reads x itself
    scores = np.einsum("bhld,hcd->bhcl", layer_norm(q), attention.kmeans.centroids.numpy())
    counts = np.zeros(scores.shape[:2] + scores.shape[3:], int)
    for t in range(scores.shape[-1]):
        top = np.argsort(-scores[..., :t + 1], axis=-1, kind="stable")[..., :WINDOW]
        counts[..., t] = (top == t).any(-1).sum(-1)
    return counts


@pytest.mark.parametrize("share_qk", [True, False])
@pytest.mark.parametrize("num_layers,skip_first,prompt_length", [(1, 0, 1), (3, 2, 7)])
def test_balanced_routing_in_one_layer_equals_the_full_pass_on_every_prefix(share_qk, num_layers, skip_first,
                                                                            prompt_length):
    """One routing layer, alone or last: decoding position t equals a full pass over 0 .. t, from prefixes
    shorter than the window (every token in every cluster) to longer than clusters x window."""
    model = _model(num_layers=num_layers, skip_first=skip_first, share_qk=share_qk)
    ids = _ids(repeats=False)
    got = incremental_logits(model, ids, prompt_length)
    np.testing.assert_allclose(got, _per_prefix(model, ids, prompt_length), atol=1e-4, rtol=0)
    if share_qk:  # the rows checked include new tokens in no cluster and in several
        counts = _routed_counts(model, ids, skip_first)[..., WINDOW:]
        assert (counts == 0).any() and (counts >= 2).any()


@pytest.mark.parametrize("routing", ["balanced", "causal"])
def test_the_original_average_over_clusters_decodes_as_the_full_pass(routing):
    """count_epsilon=0.01 (the original's scatter: outputs over count + 0.01) in decoding as in the full pass."""
    model = _model(num_layers=2, skip_first=1, routing=routing, count_epsilon=0.01)
    ids = _ids(repeats=routing == "causal")
    got = incremental_logits(model, ids, 3)
    want = model(ids).numpy()[:, 3:] if routing == "causal" else _per_prefix(model, ids, 3)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    exact = _model(num_layers=2, skip_first=1, routing=routing)
    assert np.abs(exact(ids).numpy() - model(ids).numpy()).max() > 1e-4


def _stepwise_reference(model, ids, prompt_length):
    """The original's fast decoding written with full blocks: the prompt runs once; then every block's input
    at an earlier position stays as computed then, and the new row is the block's last row over those inputs
    and the new one."""
    x = model.block_inputs(model.embed(ids[:, :prompt_length]))
    inputs = []
    for block in model.blocks:
        inputs.append(x)
        x = block(x)
    embedded = model.block_inputs(model.embed(ids))
    rows = []
    for t in range(prompt_length, ids.shape[1]):
        x = embedded[:, t:t + 1]
        for i, block in enumerate(model.blocks):
            inputs[i] = ops.concatenate([inputs[i], x], axis=1)
            x = block(inputs[i])[:, -1:]
        rows.append(model.logits(x)[:, 0])
    return np.stack(rows, axis=1)


def test_balanced_routing_in_several_layers_is_the_original_fast_decoding():
    """With balanced routing in every layer, later layers' cached inputs keep the membership of the prefix they
    were computed with: decoding equals the step-by-step definition, not a full pass on every prefix."""
    model = _model(num_layers=3, skip_first=0)
    ids = _ids(repeats=False)
    prompt_length = 7
    got = incremental_logits(model, ids, prompt_length)
    np.testing.assert_allclose(got, _stepwise_reference(model, ids, prompt_length), atol=1e-4, rtol=0)
    assert np.abs(got - _per_prefix(model, ids, prompt_length)).max() > 1e-3


@pytest.mark.parametrize("routing", ["balanced", "causal"])
def test_decoding_moves_no_centroid_and_adds_no_loss(routing):
    model = _model(routing=routing, num_layers=2, skip_first=0)
    ids = _ids(repeats=True)
    model(ids)
    state = [np.array(w) for layer in model.routing_layers() for w in layer.kmeans.weights]
    losses = len(model.losses)
    tf.function(sample.generate)(model, ids[:, :5], 4, temperature=1.0)  # prefill, then decoding steps
    after = [np.array(w) for layer in model.routing_layers() for w in layer.kmeans.weights]
    for before, now in zip(state, after):
        np.testing.assert_array_equal(before, now)
    assert len(model.losses) == losses


@pytest.mark.parametrize("routing", ["causal", "balanced"])
def test_mixed_precision_decoding_follows_the_full_pass(routing):
    """prefill reads the weights in bfloat16 as `call` does (it is not called through __call__).

    Incremental and full bfloat16 logits may differ by bfloat16 rounding (~0.016 per ulp at logits of ~3,
    depending on the CPU's kernels): the bound is twice the full bfloat16 pass's own distance from float32 on
    the same weights, measured here."""
    def routing_lm(policy):
        # A seed whose centroids put no token on a near-tie, where bfloat16 rounding flips its cluster and the
        # bound below measures the flip instead of the rounding (at this size about half the seeds have one).
        keras.utils.set_random_seed(6)
        attention = RoutingAttention(local_heads=2, routing_heads=2, key_dim=8, num_clusters=CLUSTERS,
                                     window=WINDOW, block_size=4, routing=routing, max_relative_position=4,
                                     dtype=policy)
        lm = DecoderLM(vocabulary_size=VOCAB, num_layers=1, hidden_dim=32, attention=attention, ffn_dim=32,
                       dtype=policy)
        lm.build((None, None))
        return lm

    model, reference = routing_lm("mixed_bfloat16"), routing_lm("float32")
    reference.set_weights(model.get_weights())
    ids = _ids(repeats=False)
    got = incremental_logits(model, ids, 4)
    assert got.dtype == np.float32
    full = _per_prefix(model, ids, 4)
    rounding = np.abs(full - _per_prefix(reference, ids, 4)).max()
    assert 0 < rounding < 0.1
    np.testing.assert_allclose(got, full, atol=2 * rounding, rtol=0)
    layer = model.blocks[0].attention  # called alone too
    x = ops.cast(np.random.default_rng(2).standard_normal((2, 6, 32)), "bfloat16")
    out, _ = tf.function(layer.prefill)(x, 8)
    np.testing.assert_array_equal(np.asarray(ops.cast(out, "float32")), np.asarray(ops.cast(layer(x), "float32")))


def test_greedy_generation_follows_the_full_pass():
    """Causal routing: greedy `generate` picks the argmax of the full pass's logits over what it generated."""
    model = _model(routing="causal", num_layers=2)
    prompt = _ids(repeats=True)[:, :6]
    new = tf.function(sample.generate)(model, prompt, 8, temperature=0.0).numpy()
    logits = model(np.concatenate([prompt, new], axis=1)).numpy()
    np.testing.assert_array_equal(new, logits[:, 6:].argmax(-1))


def test_a_causal_routing_step_reads_a_fixed_number_of_entries(monkeypatch):
    """Whatever the prefix, a step gathers one window per row and `window` keys and values per row, and reads
    no per-position cache of the whole prefix."""
    reads = []
    original = decoding.kv_cache.read_rows

    def recording_read(cache, positions, rows, num_rows):
        reads.append(tuple(positions.shape))
        return original(cache, positions, rows, num_rows)

    monkeypatch.setattr(decoding.kv_cache, "read_rows", recording_read)
    for prefix_wide in ("read", "read_all"):  # any prefix-wide read would fail
        monkeypatch.setattr(decoding.kv_cache, prefix_wide, None)
    rng = np.random.default_rng(3)
    q, v = (tf.constant(rng.standard_normal((2, 2, 40, 8)).astype(np.float32)) for _ in range(2))
    options = dict(centroids=tf.constant(rng.standard_normal((2, CLUSTERS, 8)).astype(np.float32)),
                   window=WINDOW, routing="causal", share_qk=True)
    for prefix in (10, 39):
        @tf.function
        def decode_at(prefix=prefix):
            cache = decoding.start(None, q[:, :, :prefix], None, v[:, :, :prefix], 40, **options)
            return decoding.step(None, q[:, :, prefix:prefix + 1], None, v[:, :, prefix:prefix + 1], cache,
                                 tf.constant(prefix), **options)[0]
        decode_at()
    assert sorted(set(reads)) == [(2, 2, 1), (2, 2, WINDOW)]


@pytest.mark.parametrize("options,message", [
    (dict(routing="causal", share_qk=False), "share_qk"),
    (dict(causal=False), "causal"),
    (dict(routing="nearest"), "unknown routing"),
])
def test_what_cannot_be_decoded_is_a_clear_error(options, message):
    rng = np.random.default_rng(4)
    q = tf.constant(rng.standard_normal((1, 2, 6, 8)).astype(np.float32))
    options = dict(dict(centroids=tf.constant(rng.standard_normal((2, CLUSTERS, 8)).astype(np.float32)),
                        window=WINDOW, routing="balanced", share_qk=True), **options)
    with pytest.raises(ValueError, match=message):
        decoding.start(None, q, q, q, 8, **options)


def test_decoding_past_the_coverage_raises_with_require_coverage():
    model = _model(num_layers=1, require_coverage=True)
    ids = _ids(repeats=False)[:, :CLUSTERS * WINDOW + 1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not cover the decoding length"):
        incremental_logits(model, ids, 3)
    incremental_logits(model, ids[:, :CLUSTERS * WINDOW], 3)  # the covered length decodes
