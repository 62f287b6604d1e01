"""RoutingAttention: the standard layer checks, k-means updates under a jit fit step, the commitment loss,
head order (routing first, then local) and the config."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from common.attention import local_attention
from common.kmeans import OnlineKMeans
from common.layers import layer_norm
from routing_transformer.attention import RoutingAttention, routing_attention
from tests.layer_checks import check_config_round_trip, run_layer_checks, wrap_in_model

BATCH, LENGTH, DIM = 2, 16, 16
BASE = dict(key_dim=4, num_clusters=2, window=8, block_size=4, look_back=1, max_relative_position=4, seed=3)


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal((BATCH, LENGTH, DIM)).astype(np.float32)


@pytest.mark.parametrize("local_heads, routing_heads", [(2, 2), (4, 0), (0, 4)])
def test_standard_layer_checks(local_heads, routing_heads):
    run_layer_checks(RoutingAttention, dict(BASE, local_heads=local_heads, routing_heads=routing_heads), _x(),
                     (BATCH, LENGTH, DIM))


def test_relative_tables_exist_as_configured():
    layer = RoutingAttention(local_heads=2, routing_heads=2, **BASE)
    layer(_x())
    assert layer.routing_relative_keys.shape == (9, 4) and layer.relative_keys.shape == (9, 4)
    assert layer.kmeans.centroids.shape == (2, 2, 4)
    layer = RoutingAttention(local_heads=2, routing_heads=2, **dict(BASE, max_relative_position=0))
    layer(_x())
    assert layer.routing_relative_keys is None and layer.relative_keys is None
    local_only = RoutingAttention(local_heads=2, routing_heads=0, **BASE)
    local_only(_x())
    assert local_only.kmeans is None and not local_only.non_trainable_weights


def test_jit_fit_step_moves_centroids_and_inference_does_not():
    x = _x()
    layer = RoutingAttention(local_heads=2, routing_heads=2, **BASE)
    model = wrap_in_model(layer, x)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=True)
    before = [np.array(w) for w in (layer.kmeans.centroids, layer.kmeans.ema_sum, layer.kmeans.ema_count)]
    model.predict(x, verbose=0)
    model(x, training=False)
    layer(x)
    for b, w in zip(before, (layer.kmeans.centroids, layer.kmeans.ema_sum, layer.kmeans.ema_count)):
        np.testing.assert_array_equal(np.asarray(w), b)
    model.fit(x, np.zeros_like(x), epochs=1, batch_size=BATCH, verbose=0)
    after = [np.asarray(w) for w in (layer.kmeans.centroids, layer.kmeans.ema_sum, layer.kmeans.ema_count)]
    for b, a in zip(before, after):
        assert not np.allclose(a, b)
    # One EMA step from zero counts: (1 - decay) x the batch's counts, which add up to every routing token.
    np.testing.assert_allclose(after[2].sum(-1), (1 - 0.999) * BATCH * LENGTH, rtol=1e-4)


@pytest.mark.parametrize("key_update", ["separate", "joint"])
def test_keys_make_a_kmeans_step_of_their_own_unless_joint(key_update):
    """share_qk=False: the original clusters queries and keys in two calls, two EMA steps per batch (queries,
    then keys); "joint" makes one step from both. Assignments are the routing's (the centroids before)."""
    x, decay = _x(4), 0.9
    layer = RoutingAttention(local_heads=2, routing_heads=2,
                             **dict(BASE, share_qk=False, key_update=key_update, decay=decay))
    layer(x)
    q, k, v = layer.split_heads(*layer.project_heads(tf.constant(x)))["routing"]
    _, aux = routing_attention(q, k, v, **layer.routing_options())
    reference = OnlineKMeans(2, 2, decay=decay)
    reference.build(q.shape)
    reference.set_weights(layer.kmeans.get_weights())
    if key_update == "separate":
        reference.update(aux["queries"], aux["query_assignment"])
        reference.update(aux["keys"], aux["key_assignment"])
    else:
        reference.update(tf.concat([aux["queries"], aux["keys"]], 2),
                         tf.concat([aux["query_assignment"], aux["key_assignment"]], 2))
    layer(x, training=True)
    for want, got in zip(reference.weights, layer.kmeans.weights):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
    # From zero counts: one step of 2 x BATCH x LENGTH tokens, or two steps of BATCH x LENGTH each.
    tokens = BATCH * LENGTH
    steps = (1 - decay) * (decay * tokens + tokens) if key_update == "separate" else (1 - decay) * 2 * tokens
    np.testing.assert_allclose(np.asarray(layer.kmeans.ema_count).sum(-1), steps, rtol=1e-5)


def _routed_q(layer, x):
    q = layer.project(tf.constant(x), layer.query)
    return q[:, :layer.routing_heads]


def test_commitment_loss_is_added_once_per_call_and_counts_queries_and_keys():
    x = _x(1)
    layer = RoutingAttention(local_heads=2, routing_heads=2, **dict(BASE, beta=0.5))
    layer(x)
    assert len(layer.losses) == 1
    queries = layer_norm(_routed_q(layer, x))
    single = layer.kmeans.commitment_loss(queries, layer.kmeans.nearest(queries))
    np.testing.assert_allclose(float(layer.losses[0]), 2 * float(single), rtol=1e-6)
    assert float(single) > 0
    layer(x)
    assert len(layer.losses) == 1  # losses are reset per call


def test_model_fit_loss_includes_commitment_loss():
    x = _x(2)
    layer = RoutingAttention(local_heads=2, routing_heads=2, **dict(BASE, beta=1.0))
    model = wrap_in_model(layer, x)
    prediction = np.asarray(model(x, training=False))
    commitment = float(sum(model.losses))
    assert commitment > 1e-2
    target = np.zeros_like(x)
    mse = float(np.mean((prediction - target) ** 2))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse", jit_compile=True)
    history = model.fit(x, target, epochs=1, batch_size=BATCH, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], mse + commitment, rtol=1e-5)


@pytest.mark.parametrize("relative", [False, True])
def test_routing_heads_come_first(relative):
    x = tf.constant(_x(3))
    r, local = 1, 2
    layer = RoutingAttention(local_heads=local, routing_heads=r, head_projection=False,
                             **dict(BASE, max_relative_position=4 if relative else 0))
    layer(x)
    # Independent projections (whatever the initialiser did), so that sharing q and k would show.
    rng = np.random.default_rng(5)
    for kernel, _ in (layer.query, layer.key, layer.value):
        kernel.assign(0.3 * rng.standard_normal(kernel.shape).astype(np.float32))
    q, k, v = (layer.project(x, w) for w in (layer.query, layer.key, layer.value))
    heads = np.asarray(layer.attend(q, k, v))
    assert heads.shape == (BATCH, r + local, LENGTH, 4)
    routed, _ = routing_attention(q[:, :r], None, v[:, :r], centroids=layer.kmeans.centroids, window=8,
                                  relative_keys=layer.routing_relative_keys,
                                  relative_values=layer.routing_relative_values)
    tables = dict(relative_keys=layer.relative_keys, relative_values=layer.relative_values) if relative else {}
    # With share_qk only the local heads have key weights (unused weights would get all-zero gradients).
    assert layer.share_qk and k.shape[1] == local and layer.key[0].shape == (x.shape[-1], local, 4)
    local_out = local_attention(q[:, r:], k, v[:, r:], block_size=4, look_back=1, **tables)
    np.testing.assert_allclose(heads[:, :r], np.asarray(routed), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(heads[:, r:], np.asarray(local_out), rtol=1e-5, atol=1e-6)
    # The local heads use their own keys (only the routing heads share q and k).
    shared = local_attention(q[:, r:], q[:, r:], v[:, r:], block_size=4, look_back=1, **tables)
    assert not np.allclose(heads[:, r:], np.asarray(shared), atol=1e-4)


def test_projections_are_initialised_independently():
    """q, k and v (and every other kernel) must not start equal: one seeded initialiser instance reused for
    several weights gives them identical values in Keras 3."""
    layer = RoutingAttention(local_heads=2, routing_heads=2, **BASE)
    layer(_x())
    kernels = {name: np.asarray(w[0]) for name, w in (("query", layer.query), ("key", layer.key),
                                                      ("value", layer.value))}
    identical = [(a, b) for a in kernels for b in kernels if a < b and np.array_equal(kernels[a], kernels[b])]
    assert identical == [], f"identical initial kernels: {identical}"


def test_head_projection_is_one_matrix_shared_by_heads():
    x = tf.constant(_x(4))
    layer = RoutingAttention(local_heads=1, routing_heads=1, **BASE)
    layer(x)
    q, k, v = (layer.project(x, w) for w in (layer.query, layer.key, layer.value))
    with_projection = np.asarray(layer.attend(q, k, v))
    layer.head_kernel, kernel = None, layer.head_kernel
    without = np.asarray(layer.attend(q, k, v))
    np.testing.assert_allclose(with_projection, without @ np.asarray(kernel), rtol=1e-5, atol=1e-6)


def test_config_round_trip_keeps_routing_options():
    options = dict(local_heads=3, routing_heads=1, key_dim=8, num_clusters=5, window=7, block_size=16,
                   look_back=2, share_qk=False, routing="balanced", max_relative_position=12,
                   local_relative=False, routing_relative=True, decay=0.99, beta=0.01, key_update="joint",
                   require_coverage=True,
                   head_projection=False, keep_weights=True, count_epsilon=0.01, value_dim=6, seed=9)
    layer = RoutingAttention(**options)
    check_config_round_trip(layer)
    config = layer.get_config()
    for key, value in options.items():
        assert config[key] == value, key
    clone = RoutingAttention.from_config(config)
    assert (clone.num_heads, clone.local_heads, clone.routing_heads) == (4, 3, 1)
    assert (clone.kmeans.num_heads, clone.kmeans.num_clusters, clone.kmeans.decay, clone.kmeans.beta) == (
        1, 5, 0.99, 0.01)
    assert clone.kernel_options == {"block_size": 16, "look_back": 2, "keep_weights": True}
    assert clone.max_relative_position == 0  # local_relative=False: no local tables


@pytest.mark.parametrize("kwargs, named", [
    (dict(local_heads=-1, routing_heads=1), "local_heads"), (dict(local_heads=1, routing_heads=1.5), "routing_heads"),
    (dict(local_heads=1, routing_heads=1, num_clusters=0), "num_clusters"),
    (dict(local_heads=1, routing_heads=1, window=0), "window"),
    (dict(local_heads=1, routing_heads=1, routing="nearest"), "routing 'nearest'"),
    (dict(local_heads=1, routing_heads=1, share_qk=False, key_update="both"), "key_update 'both'"),
    (dict(local_heads=0, routing_heads=0), "num_heads")])
def test_invalid_arguments_raise_naming_the_argument(kwargs, named):
    options = dict(BASE)
    options.update(kwargs)
    with pytest.raises(ValueError, match=named):
        RoutingAttention(**options)
