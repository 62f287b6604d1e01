"""RoutingTransformerLM: causality (what balanced and causal routing guarantee), k-means updates under a jit
fit step, `.keras` round-trip, the preset config, the original's target dropout and image embeddings, and
argument checks."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras

from common.metrics import LanguageModelLoss
from routing_transformer.model import RoutingTransformerLM
from tests.layer_checks import check_keras_round_trip

VOCAB, LENGTH = 32, 32
SMALL = dict(vocabulary_size=VOCAB, num_layers=3, skip_first=1, hidden_dim=32, embedding_dim=16, ffn_dim=32,
             local_heads=2, routing_heads=2, num_clusters=4, window=8, block_size=8, max_relative_position=8,
             seed=1)


def _model(**overrides):
    return RoutingTransformerLM(**dict(SMALL, **overrides))


def _ids(seed, batch=3):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, LENGTH)).astype(np.int32)


def _future_changes(model, seed=0, positions=range(0, LENGTH - 2, 3)):
    """For each t: the largest change of the logits at positions <= t + 1 when the ids after t are redrawn.

    The logits at position p predict id p from ids < p, so they must not depend on ids > t for p <= t + 1
    (one position more than "changing ids after t changes no logit at positions <= t")."""
    ids = _ids(seed)
    rng = np.random.default_rng(seed + 1)
    base = np.asarray(model(ids, training=False))
    changes = {}
    for t in positions:
        changed = ids.copy()
        changed[:, t + 1:] = (ids[:, t + 1:] + rng.integers(1, VOCAB, ids[:, t + 1:].shape)) % VOCAB
        out = np.asarray(model(changed, training=False))
        changes[t] = float(np.abs(out[:, :t + 2] - base[:, :t + 2]).max())
        assert np.abs(out[:, t + 2:] - base[:, t + 2:]).max() > 0, "the later logits must change"
    return changes


def test_causal_routing_model_is_strictly_causal():
    # Earlier tokens keep their clusters; only where they sit in the sorted order (hence the summation order
    # inside blocks) may move, so allow rounding. A leak through membership is ~1e-2 here.
    changes = _future_changes(_model(routing="causal"))
    assert all(change <= 1e-5 for change in changes.values()), changes


def test_balanced_routing_is_causal_when_membership_cannot_change():
    """window == length: every cluster holds every token whatever the ids, so membership is fixed and the
    attention inside clusters is causal; the whole model then is."""
    changes = _future_changes(_model(window=LENGTH))
    assert all(change == 0.0 for change in changes.values()), changes


def test_local_only_model_is_strictly_causal():
    changes = _future_changes(_model(skip_first=3))
    assert all(change == 0.0 for change in changes.values()), changes


def test_balanced_routing_leaks_future_tokens_through_membership():
    """The original's balanced routing (top-`window` tokens per cluster over the whole sequence) is not
    strictly causal: later ids change which earlier tokens are routed together, so earlier logits change.
    This pins down the documented behaviour; `routing="causal"` is the strictly causal option."""
    keras.utils.set_random_seed(0)  # unseeded initialisers draw their seeds from Python's `random`
    changes = _future_changes(_model())
    leaks = [t for t, change in changes.items() if change > 1e-4]
    assert len(leaks) >= len(changes) // 2, changes


def _fit_once(model, ids):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LanguageModelLoss(), jit_compile=True)
    return model.fit(ids, ids, epochs=1, batch_size=len(ids), verbose=0)


def test_jit_fit_step_moves_routing_centroids_and_round_trips():
    model = _model()
    ids = _ids(3)
    model(ids)
    routing = model.routing_layers()
    assert [layer.name for layer in routing] == ["attention_1", "attention_2"]
    assert model.blocks[0].attention.kmeans is None and model.blocks[0].attention.routing_heads == 0
    assert model.blocks[0].attention.local_heads == 4
    assert not model.blocks[0].attention.non_trainable_weights
    before = [np.array(layer.kmeans.centroids) for layer in routing]
    trainable_before = [np.array(w) for w in model.trainable_weights]
    history = _fit_once(model, ids)
    assert np.isfinite(history.history["loss"][0])
    for layer, b in zip(routing, before):
        assert not np.allclose(np.asarray(layer.kmeans.centroids), b)
    assert any(not np.array_equal(b, np.asarray(w)) for b, w in zip(trainable_before, model.trainable_weights))
    # Round trip after training, so that the centroids differ from a fresh model's.
    restored = check_keras_round_trip(model, ids)
    for layer, loaded in zip(routing, restored.routing_layers()):
        for name in ("centroids", "ema_sum", "ema_count"):
            np.testing.assert_array_equal(np.asarray(getattr(loaded.kmeans, name)),
                                          np.asarray(getattr(layer.kmeans, name)))
    fresh = _model()
    fresh(ids)
    assert not np.allclose(np.asarray(fresh.routing_layers()[0].kmeans.centroids),
                           np.asarray(routing[0].kmeans.centroids))


def test_summaries_are_each_routing_layer_s_cluster_fractions():
    """What the trainer logs (`DecoderLM.summaries`): per k-means layer, the largest and smallest share of the
    EMA cluster counts, named by block index; the local-only first block and a hashing model log none."""
    model = _model()
    ids = _ids(5)
    _fit_once(model, ids)
    summaries = {name: float(value) for name, value in model.summaries().items()}
    assert set(summaries) == {f"routing/layer_{i}/{stat}_cluster_fraction"
                              for i in (1, 2) for stat in ("largest", "smallest")}
    for i, layer in ((1, model.blocks[1].attention), (2, model.blocks[2].attention)):
        counts = np.asarray(layer.kmeans.ema_count, np.float64)
        fractions = counts / counts.sum(axis=-1, keepdims=True)
        assert summaries[f"routing/layer_{i}/largest_cluster_fraction"] == pytest.approx(fractions.max(), rel=1e-5)
        assert summaries[f"routing/layer_{i}/smallest_cluster_fraction"] == pytest.approx(fractions.min(), rel=1e-5)
        assert fractions.max() > fractions.min()  # a real spread after one step, not a uniform start
    hashing = _model(hash_items=True)
    hashing(ids)
    assert hashing.summaries() == {}


@pytest.mark.parametrize("jit_compile", [False, True])
def test_remat_takes_the_kmeans_statistics_once_per_step(jit_compile):
    """The recompute for the gradient does not update the centroids again (the original: `not is_recomputing`):
    with remat the k-means state and the losses of several steps are those without it."""
    batches = [_ids(seed) for seed in (5, 6, 7)]
    runs = {}
    for remat in (False, True):
        model = _model(remat=remat, dropout=0.0)
        model(batches[0])
        if remat:
            model.set_weights(runs[False]["initial"])
        assert all(block.remat == remat for block in model.blocks)
        initial = model.get_weights()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LanguageModelLoss(), jit_compile=jit_compile)
        losses = [float(model.train_on_batch(ids, ids)) for ids in batches]
        state = [np.asarray(w) for layer in model.routing_layers() for w in layer.kmeans.weights]
        runs[remat] = dict(initial=initial, losses=losses, state=state)
    assert np.abs(runs[False]["state"][2]).max() > 0  # the statistics were taken
    np.testing.assert_allclose(runs[True]["losses"], runs[False]["losses"], rtol=1e-5)
    for got, want in zip(runs[True]["state"], runs[False]["state"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _losses_and_gradients_from_the_same_weights(ids, settings):
    """({setting: (training loss, gradients of the trainable weights)}, the last model) for `_model(**options)`
    of each setting, every model starting from the first one's weights."""
    results, initial = {}, None
    for setting, options in settings.items():
        model = _model(**options)
        model(ids)
        if initial is None:
            initial = model.get_weights()
        else:
            model.set_weights(initial)
        with tf.GradientTape() as tape:
            loss = LanguageModelLoss()(ids, model(ids, training=True)) + sum(model.losses)
        results[setting] = (float(loss), [tf.convert_to_tensor(g).numpy()
                                          for g in tape.gradient(loss, model.trainable_weights)])
    return results, model


def test_remat_gives_the_gradients_of_the_plain_model():
    """In training: the recompute routes with the centroids its forward pass read (not those the pass then
    wrote; decay 0 moves them all the way), and the commitment loss (beta 1: a large part of the gradient),
    added inside the recomputed branch, still has its gradient."""
    ids = _ids(8)
    results, model = _losses_and_gradients_from_the_same_weights(
        ids, {remat: dict(remat=remat, dropout=0.0, decay=0.0, beta=1.0) for remat in (False, True)})
    for weight, got, want in zip(model.trainable_weights, results[True][1], results[False][1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=weight.path)


@pytest.mark.parametrize("routing", ["balanced", "causal"])
def test_kept_attention_weights_give_the_gradients_of_the_recomputed_ones(routing):
    """keep_attention_weights changes what the backward pass stores, not the model: the same loss and
    gradients from the same weights, and the option survives the config round trip."""
    ids = _ids(10)
    results, model = _losses_and_gradients_from_the_same_weights(
        ids, {keep: dict(keep_attention_weights=keep, routing=routing, dropout=0.0) for keep in (False, True)})
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-6)
    for weight, got, want in zip(model.trainable_weights, results[True][1], results[False][1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=weight.path)
    assert all(block.attention.keep_weights for block in model.blocks)
    clone = RoutingTransformerLM.from_config(model.get_config())
    assert all(block.attention.keep_weights for block in clone.blocks)


@pytest.mark.parametrize("remat", [False, True])
def test_without_ema_a_jit_fit_step_trains_the_centroids_by_their_gradient(remat):
    """ema=False: the centroids are trainable, an SGD step moves them by -lr x the gradient of the loss (the
    original's q_loss pulls them toward their vectors), under remat too, and the round trip keeps them."""
    model = _model(ema=False, remat=remat, dropout=0.0)
    ids = _ids(9)
    model(ids)
    routing = model.routing_layers()
    centroids = [layer.kmeans.centroids for layer in routing]
    trainable = {id(w) for w in model.trainable_weights}
    assert all(id(c) in trainable for c in centroids)
    initial = model.get_weights()
    with tf.GradientTape() as tape:
        loss = LanguageModelLoss()(ids, model(ids, training=True)) + sum(model.losses)
    gradients = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, centroids)]
    assert all(np.abs(g).max() > 0 for g in gradients)
    model.set_weights(initial)
    before = [np.asarray(c).copy() for c in centroids]
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=LanguageModelLoss(), jit_compile=True)
    model.train_on_batch(ids, ids)
    for centroid, b, g in zip(centroids, before, gradients):
        np.testing.assert_allclose(np.asarray(centroid), b - 0.5 * g, rtol=1e-4, atol=1e-6)
    restored = check_keras_round_trip(model, ids)
    for layer, loaded in zip(routing, restored.routing_layers()):
        np.testing.assert_array_equal(np.asarray(loaded.kmeans.centroids), np.asarray(layer.kmeans.centroids))


def test_fit_loss_includes_commitment_losses():
    model = _model(beta=1.0, dropout=0.0)
    ids = _ids(4)
    logits = np.asarray(model(ids, training=False))
    commitment = float(sum(model.losses))
    assert len(model.losses) == 2 and commitment > 1e-2
    cross_entropy = float(LanguageModelLoss()(ids, logits))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=LanguageModelLoss(), jit_compile=True)
    history = model.fit(ids, ids, epochs=1, batch_size=len(ids), verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], cross_entropy + commitment, rtol=1e-5)


def test_preset_config_round_trips():
    model = _model(routing="causal", decay=0.99, beta=0.5, share_qk=True, dropout=0.2, count_epsilon=0.01)
    config = model.get_config()
    clone = RoutingTransformerLM.from_config(config)
    assert clone.get_config() == config
    for key, value in dict(SMALL, routing="causal", decay=0.99, beta=0.5, dropout=0.2, count_epsilon=0.01).items():
        assert config[key] == value, key
    attention = [block.attention for block in clone.blocks]
    assert [(a.local_heads, a.routing_heads) for a in attention] == [(4, 0), (2, 2), (2, 2)]
    assert all(a.routing == "causal" and a.window == 8 and a.num_clusters == 4 for a in attention)


def test_decoder_input_follows_prepare_decoder():
    """The residual dropout also drops the decoder input unless input_dropout says otherwise (T2T's
    layer_prepostprocess_dropout); embedding_dropout and project_embeddings (emb_dense) pass through and
    round-trip."""
    assert _model(dropout=0.3).input_dropout == 0.3
    assert _model(dropout=0.3, input_dropout=0.0).input_dropout == 0.0
    model = _model(hidden_dim=32, embedding_dim=None, embedding_dropout=0.4, project_embeddings=True)
    assert model.embedding_dropout == 0.4 and model.embedding_projection is not None
    assert model.output_projection is None
    clone = RoutingTransformerLM.from_config(model.get_config())
    assert (clone.embedding_dropout, clone.project_embeddings, clone.input_dropout) == (0.4, True, 0.1)
    check_keras_round_trip(model, _ids(6))


def test_weights_are_not_initialised_to_copies_of_each_other():
    """Distinct weights of one shape must not start identical (a reused seeded initialiser does that)."""
    model = _model()
    model(_ids(5))
    kernels = [(w.path, np.asarray(w)) for w in model.trainable_weights if len(w.shape) >= 2]
    identical = [(a, b) for i, (a, x) in enumerate(kernels) for b, y in kernels[i + 1:]
                 if x.shape == y.shape and np.array_equal(x, y)]
    assert identical == [], f"{len(identical)} pairs of identical initial weights, e.g. {identical[:4]}"


IMAGE = dict(position_axes=(4, 4, 3), local_relative=False, routing_relative=False, ffn_activation="relu")


def test_image_embeddings_preset_parameters_and_initialisation():
    """channel_embeddings: a token table per channel ([vocabulary x channels, width]) and row / column position
    tables with a vector per channel, drawn N(0, 1 / sqrt(channels x hidden_dim)) as T2T's."""
    ids = _ids(6)
    plain, image = _model(**IMAGE), _model(channel_embeddings=True, **IMAGE)
    plain(ids)
    image(ids)
    assert tuple(image.token_embedding.embeddings.shape) == (VOCAB * 3, 16)
    assert [tuple(t.shape) for t in image.position_embedding.tables] == [(4, 3, 32), (4, 3, 32)]
    tokens = VOCAB * 2 * 16  # two more channel tables of width embedding_dim 16
    positions = (4 + 4) * 3 * 32 - (4 + 4 + 3) * 32
    assert image.count_params() - plain.count_params() == tokens + positions
    stds = [np.asarray(t).std() for t in image.position_embedding.tables]
    np.testing.assert_allclose(stds, 1 / math.sqrt(3 * 32), rtol=0.15)


def test_image_embeddings_and_target_dropout_round_trip_after_a_jit_fit_step():
    model = _model(channel_embeddings=True, target_dropout=0.25, **IMAGE)
    ids = _ids(7)
    assert np.isfinite(_fit_once(model, ids).history["loss"][0])
    config = model.get_config()
    assert config["channel_embeddings"] is True and config["target_dropout"] == 0.25
    assert RoutingTransformerLM.from_config(config).get_config() == config
    restored = check_keras_round_trip(model, ids)
    assert restored.channel_embeddings and restored.target_dropout == 0.25


@pytest.mark.parametrize("kwargs, named", [
    (dict(hidden_dim=30), "hidden_dim 30"), (dict(local_heads=3, routing_heads=2, hidden_dim=32), "= 5"),
    (dict(skip_first=4), "skip_first"), (dict(skip_first=-1), "skip_first"),
    (dict(local_heads=0, routing_heads=0), "= 0"), (dict(target_dropout=1.0), "target_dropout"),
    (dict(channel_embeddings=True), "channel_embeddings needs position_axes")])
def test_invalid_arguments_raise_naming_the_argument(kwargs, named):
    with pytest.raises(ValueError, match=named):
        _model(**kwargs)
