"""The original's strided and cluster-strided heads in RoutingAttention: head order and key weights, each kind
of head computed by its kernel, the cluster-strided heads' own k-means (two EMA steps of decay 0.99, queries
then keys) and loss, decoding, the config, and the arguments the original refuses."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from apps import sample
from common.attention import get_kernel, strided_attention
from common.kmeans import OnlineKMeans
from routing_transformer.attention import CLUSTER_STRIDED_DECAY, RoutingAttention, routing_attention
from routing_transformer.model import RoutingTransformerLM
from tests.layer_checks import check_config_round_trip, run_layer_checks

BATCH, LENGTH, DIM = 2, 16, 24
HEADS = dict(local_heads=2, routing_heads=2, cluster_strided_heads=1, strided_heads=1)
BASE = dict(key_dim=4, num_clusters=2, window=8, block_size=4, look_back=1, max_relative_position=4, seed=3)


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal((BATCH, LENGTH, DIM)).astype(np.float32)


def _layer(**overrides):
    layer = RoutingAttention(**dict(HEADS, **BASE, **overrides))
    layer(_x())
    return layer


def test_standard_layer_checks():
    run_layer_checks(RoutingAttention, dict(HEADS, **BASE), _x(), (BATCH, LENGTH, DIM))


def test_heads_in_the_original_order_and_only_routing_heads_share_queries_as_keys():
    layer = _layer()
    assert layer.head_groups == (("routing", 2), ("cluster_strided", 1), ("strided", 1), ("local", 2))
    assert layer.num_heads == 6 and layer.key[0].shape == (DIM, 4, 4)  # every head but the 2 routing ones
    assert layer.cluster_strided_kmeans.centroids.shape == (1, 2, 4) and layer.kmeans.centroids.shape == (2, 2, 4)
    assert layer.cluster_strided_relative_keys.shape == (9, 4)
    assert layer.cluster_strided_kmeans.decay == CLUSTER_STRIDED_DECAY == 0.99
    assert not np.allclose(layer.cluster_strided_kmeans.centroids, layer.kmeans.centroids[:1])
    assert _layer(share_qk=False).key[0].shape == (DIM, 6, 4)


@pytest.mark.parametrize("share_qk", [True, False])
def test_each_kind_of_head_is_its_kernel_on_its_projections(share_qk):
    layer = _layer(share_qk=share_qk)
    x = tf.constant(_x(1))
    q, k, v = layer.project_heads(x)
    groups = layer.split_heads(q, k, v)
    assert [g[0].shape[1] for g in groups.values()] == [2, 1, 1, 2]
    (q_r, k_r, v_r), (q_c, k_c, v_c), (q_s, k_s, v_s), (q_l, k_l, v_l) = groups.values()
    assert (k_r is None) == share_qk and k_c is not None
    routing = layer.routing_options()
    cluster = dict(centroids=layer.cluster_strided_kmeans.centroids, window=8, share_qk=False, membership="strided",
                   relative_keys=layer.cluster_strided_relative_keys,
                   relative_values=layer.cluster_strided_relative_values)
    outputs = [routing_attention(q_r, k_r, v_r, **routing)[0], routing_attention(q_c, k_c, v_c, **cluster)[0],
               strided_attention(q_s, k_s, v_s, stride=4),
               get_kernel("local")(q_l, k_l, v_l, block_size=4, look_back=1, relative_keys=layer.relative_keys,
                                   relative_values=layer.relative_values)]
    want = tf.einsum("bhld,de->bhle", tf.concat(outputs, axis=1), layer.head_kernel)
    np.testing.assert_allclose(layer.attend_heads(q, k, v)[0].numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_cluster_strided_heads_train_their_own_kmeans_with_queries_then_keys():
    layer = _layer()
    x = tf.constant(_x(2))
    q, k, v = layer.project_heads(x)
    _, auxes = layer.attend_heads(q, k, v)
    reference = OnlineKMeans(1, 2, decay=0.99)
    reference.build((None, 1, None, 4))
    reference.set_weights(layer.cluster_strided_kmeans.get_weights())
    routing_before = [np.array(w) for w in layer.kmeans.get_weights()]
    routing_aux = auxes["routing"]
    routing_loss = 2 * layer.kmeans.commitment_loss(routing_aux["queries"], routing_aux["query_assignment"])
    aux = auxes["cluster_strided"]
    loss = (reference.commitment_loss(aux["queries"], aux["query_assignment"])  # with the centroids before
            + reference.commitment_loss(aux["keys"], aux["key_assignment"]))
    reference.update(aux["queries"], aux["query_assignment"])
    reference.update(aux["keys"], aux["key_assignment"])
    layer(x, training=True)
    for got, want in zip(layer.cluster_strided_kmeans.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not all(np.allclose(a, b) for a, b in zip(layer.kmeans.get_weights(), routing_before))
    assert len(layer.losses) == 2
    np.testing.assert_allclose(float(layer.losses[1]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(float(layer.losses[0]), float(routing_loss), rtol=1e-5)


def test_config_round_trip_keeps_the_head_counts():
    layer = RoutingAttention(**dict(HEADS, **BASE))
    check_config_round_trip(layer)
    clone = RoutingAttention.from_config(layer.get_config())
    assert clone.head_groups == layer.head_groups


@pytest.mark.parametrize("kwargs, message", [
    (dict(routing_heads=1, cluster_strided_heads=2), r"cluster_strided_heads \(2\) must be at most routing_heads"),
    (dict(routing="causal"), "needs routing='balanced'"),
    (dict(strided_heads=-1), "strided_heads must be an integer >= 0")])
def test_what_the_original_cannot_build_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RoutingAttention(**dict(HEADS, **BASE, **kwargs))


def test_model_puts_strided_heads_in_every_layer_and_refuses_skipped_cluster_strided_layers():
    model = RoutingTransformerLM(vocabulary_size=32, num_layers=3, hidden_dim=24, ffn_dim=32, local_heads=2,
                                 routing_heads=2, strided_heads=2, skip_first=1, num_clusters=2, window=8,
                                 block_size=4, max_relative_position=4)
    assert [block.attention.head_groups for block in model.blocks] == [
        (("strided", 2), ("local", 4))] + [(("routing", 2), ("strided", 2), ("local", 2))] * 2
    assert RoutingTransformerLM.from_config(model.get_config()).preset["strided_heads"] == 2
    with pytest.raises(ValueError, match="set skip_first = 0"):
        RoutingTransformerLM(vocabulary_size=32, num_layers=2, hidden_dim=24, routing_heads=2, local_heads=1,
                             cluster_strided_heads=1, skip_first=1)
    with pytest.raises(ValueError, match=r"divisible by the number of heads \(local \+ routing \+ strided"):
        RoutingTransformerLM(vocabulary_size=32, num_layers=2, hidden_dim=24, local_heads=2, strided_heads=3)


def _small_model(**overrides):
    keras.utils.set_random_seed(0)
    model = RoutingTransformerLM(**dict(dict(vocabulary_size=40, num_layers=2, hidden_dim=24, embedding_dim=16,
                                             ffn_dim=32, local_heads=2, num_clusters=3, window=8, block_size=4,
                                             max_relative_position=4, seed=1), **overrides))
    model.build((None, None))
    return model


def test_strided_heads_decode_as_the_full_pass():
    model = _small_model(strided_heads=2, routing_heads=2, routing="causal", skip_first=1)
    ids = np.random.default_rng(0).integers(0, 40, (2, 24)).astype(np.int32)
    got = tf.function(sample.incremental_logits)(model, ids, 5).numpy()
    np.testing.assert_allclose(got, model(ids).numpy()[:, 5:], atol=1e-4, rtol=0)


def test_cluster_strided_heads_decode_the_last_position_as_the_full_pass():
    """Membership comes from the ranking over the cache's length, positions after the step blanked (the
    original's fast decoding): at the last position nothing is blanked, so a single layer's step equals the
    full pass there; before it, the decoded rows differ from a full pass over the prefix (the stride is the
    cache's length over the window, not the prefix's)."""
    model = _small_model(num_layers=1, routing_heads=1, cluster_strided_heads=1, local_heads=2)
    ids = np.stack([np.random.default_rng(seed).permutation(40)[:24] for seed in (0, 1)]).astype(np.int32)
    got = tf.function(sample.incremental_logits)(model, ids, 5).numpy()
    np.testing.assert_allclose(got[:, -1], model(ids).numpy()[:, -1], atol=1e-4, rtol=0)
    assert np.all(np.isfinite(got))
