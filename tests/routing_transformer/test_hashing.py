"""Routing by random-projection hashing (the original's `hash_items` baseline): buckets are the sign bits of an
orthonormal projection; attention inside buckets against a numpy reference and dense attention; the layer and
model without k-means (no centroids, no clustering loss, a fixed projection); decoding equals the full pass."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from apps import sample
from common.attention import dense_attention
from common.layers import layer_norm
from routing_transformer.attention import RoutingAttention, routing_attention
from routing_transformer.model import RoutingTransformerLM
from routing_transformer.routing_scores import RandomRotation, cluster_scores, hash_bits, hash_buckets
from tests.layer_checks import check_config_round_trip, check_keras_round_trip

TOL = dict(rtol=1e-5, atol=1e-5)


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _np_buckets(x, projection):
    bits = np.einsum("bhld,hnd->bhln", np.asarray(x, np.float64), np.asarray(projection, np.float64)) > 0
    return (bits * 2 ** np.arange(projection.shape[1])).sum(-1)


def test_buckets_are_the_sign_bits_of_the_projection():
    rng = np.random.default_rng(0)
    x, projection = _normal(rng, 2, 3, 50, 8), _normal(rng, 3, 3, 8)
    buckets = np.asarray(hash_buckets(tf.constant(x), tf.constant(projection)))
    np.testing.assert_array_equal(buckets, _np_buckets(x, projection))
    assert set(np.unique(buckets)) == set(range(8))  # 300 vectors reach every one of the 8 buckets
    scores = np.asarray(cluster_scores(tf.constant(x), hash_projection=tf.constant(projection)))
    np.testing.assert_array_equal(scores, np.transpose(np.eye(8)[buckets], (0, 1, 3, 2)))


def test_random_rotation_is_orthonormal_per_head_and_seeded():
    first = np.asarray(RandomRotation(seed=3)((4, 3, 16)), np.float64)
    for head in first:
        np.testing.assert_allclose(head @ head.T, np.eye(3), atol=1e-5)
    np.testing.assert_array_equal(first, np.asarray(RandomRotation(seed=3)((4, 3, 16))))
    assert not np.allclose(first, np.asarray(RandomRotation(seed=4)((4, 3, 16))))
    with pytest.raises(ValueError, match="bits <= dim"):
        RandomRotation(seed=0)((1, 5, 4))


@pytest.mark.parametrize("clusters, bits", [(2, 1), (8, 3), (64, 6)])
def test_hash_bits_of_a_power_of_two(clusters, bits):
    assert hash_bits(clusters) == bits


@pytest.mark.parametrize("clusters", [0, 1, 3, 6, 12])
def test_hash_bits_refuses_what_is_not_a_power_of_two(clusters):
    with pytest.raises(ValueError, match="power of two"):
        hash_bits(clusters)


def test_causal_hash_routing_is_causal_attention_inside_buckets():
    """routing='causal' with a window as long as the sequence: every token sees the earlier tokens of its own
    bucket, which is dense causal attention masked to equal buckets."""
    rng = np.random.default_rng(1)
    q, v, projection = _normal(rng, 2, 2, 24, 8), _normal(rng, 2, 2, 24, 5), _normal(rng, 2, 2, 8)
    got, aux = routing_attention(tf.constant(q), None, tf.constant(v), hash_projection=tf.constant(projection),
                                 window=24, routing="causal")
    qn = layer_norm(tf.constant(q))
    buckets = _np_buckets(qn, projection)
    np.testing.assert_array_equal(np.asarray(aux["query_assignment"]), buckets)
    mask = tf.constant(buckets[..., :, None] == buckets[..., None, :])
    want = dense_attention(qn, qn, tf.constant(v), causal=True, mask=mask, scale=1.0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)
    assert len(np.unique(buckets)) == 4


def _np_balanced_hash_routing(q, v, projection, window):
    """Numpy float64 reference: cluster c takes the top-`window` of its bucket one-hot, ties by position
    (its bucket's earliest members, then the earliest others), attention causal by position inside it, a
    token's outputs averaged over its clusters, zero in none."""
    qn = np.asarray(layer_norm(tf.constant(q)), np.float64)
    v = np.asarray(v, np.float64)
    buckets = _np_buckets(qn, projection)
    batch, heads, length, _ = q.shape
    total, count = np.zeros(v.shape), np.zeros((batch, heads, length))
    for b, h in np.ndindex(batch, heads):
        for c in range(2 ** projection.shape[1]):
            members = np.sort(np.argsort(-(buckets[b, h] == c).astype(float), kind="stable")[:window])
            for i in members:
                keys = [j for j in members if j <= i]
                logits = np.array([qn[b, h, i] @ qn[b, h, j] for j in keys])
                weights = np.exp(logits - logits.max())
                total[b, h, i] += (weights / weights.sum()) @ v[b, h, keys]
                count[b, h, i] += 1
    return total / np.maximum(count, 1)[..., None]


def test_balanced_hash_routing_matches_a_numpy_reference():
    rng = np.random.default_rng(2)
    q, v, projection = _normal(rng, 2, 2, 20, 8), _normal(rng, 2, 2, 20, 4), _normal(rng, 2, 2, 8)
    got, _ = routing_attention(tf.constant(q), None, tf.constant(v), hash_projection=tf.constant(projection),
                               window=6)
    np.testing.assert_allclose(np.asarray(got), _np_balanced_hash_routing(q, v, projection, 6), **TOL)


def test_centroids_and_a_projection_together_or_neither_are_refused():
    rng = np.random.default_rng(3)
    q, v = tf.constant(_normal(rng, 1, 2, 8, 4)), tf.constant(_normal(rng, 1, 2, 8, 4))
    for options in (dict(), dict(centroids=tf.constant(_normal(rng, 2, 2, 4)),
                                 hash_projection=tf.constant(_normal(rng, 2, 1, 4)))):
        with pytest.raises(ValueError, match="exactly one of centroids"):
            routing_attention(q, None, v, window=4, **options)
    with pytest.raises(ValueError, match="hash_projection"):
        routing_attention(q, None, v, window=4, hash_projection=tf.constant(_normal(rng, 3, 1, 4)))


# --- the layer and the model ---------------------------------------------------------------------------------

def _layer(**overrides):
    return RoutingAttention(**dict(dict(local_heads=1, routing_heads=2, key_dim=4, num_clusters=4, window=4,
                                        block_size=4, hash_items=True, seed=5), **overrides))


def test_the_layer_routes_by_a_fixed_projection_without_k_means_or_loss():
    layer = _layer()
    x = tf.constant(np.random.default_rng(4).standard_normal((2, 16, 12)).astype(np.float32))
    layer(x, training=True)
    assert layer.kmeans is None and layer.losses == []
    assert tuple(layer.hash_projection.shape) == (2, 2, 4)
    assert all(w is not layer.hash_projection for w in layer.trainable_weights)
    before = np.asarray(layer.hash_projection).copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x, training=True) ** 2)
    gradients = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None for g in gradients)
    np.testing.assert_array_equal(np.asarray(layer.hash_projection), before)


def test_the_layer_round_trips_with_its_projection():
    layer = _layer()
    check_config_round_trip(layer)
    assert RoutingAttention.from_config(layer.get_config()).hash_items is True
    x = np.random.default_rng(5).standard_normal((2, 16, 12)).astype(np.float32)
    inputs = keras.Input(shape=(16, 12))
    model = keras.Model(inputs, layer(inputs))
    restored = check_keras_round_trip(model, x)
    np.testing.assert_array_equal(np.asarray(restored.layers[-1].hash_projection),
                                  np.asarray(layer.hash_projection))


def test_a_cluster_count_that_is_not_a_power_of_two_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        _layer(num_clusters=3)
    _layer(num_clusters=3, hash_items=False)  # k-means takes any count


def _model(**overrides):
    keras.utils.set_random_seed(0)
    model = RoutingTransformerLM(**dict(dict(
        vocabulary_size=40, num_layers=2, hidden_dim=32, embedding_dim=16, ffn_dim=32, local_heads=2,
        routing_heads=2, num_clusters=4, window=6, block_size=4, max_relative_position=4, hash_items=True,
        seed=1), **overrides))
    model.build((None, None))
    return model


@pytest.mark.parametrize("routing, num_layers, skip_first", [("causal", 2, 0), ("balanced", 2, 1)])
def test_decoding_a_hashing_model_follows_the_full_pass(routing, num_layers, skip_first):
    """Causal routing decodes exactly; balanced routing in one (the last) layer equals the full pass on every
    prefix."""
    model = _model(routing=routing, num_layers=num_layers, skip_first=skip_first)
    ids = np.random.default_rng(6).integers(0, 40, (2, 20)).astype(np.int32)
    prompt_length = 5
    got = tf.function(sample.incremental_logits)(model, ids, prompt_length).numpy()
    if routing == "causal":
        want = model(ids).numpy()[:, prompt_length:]
    else:
        want = np.stack([model(ids[:, :t + 1]).numpy()[:, t] for t in range(prompt_length, 20)], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_a_hashing_model_trains_with_fit_and_keeps_its_projection():
    model = _model(routing="causal")
    projections = [np.asarray(block.attention.hash_projection).copy() for block in model.blocks]
    ids = np.random.default_rng(7).integers(0, 40, (8, 17)).astype(np.int32)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ids[:, :-1], ids[:, 1:], batch_size=4, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    for block, before in zip(model.blocks, projections):
        np.testing.assert_array_equal(np.asarray(block.attention.hash_projection), before)
    assert RoutingTransformerLM.from_config(model.get_config()).get_config()["hash_items"] is True
