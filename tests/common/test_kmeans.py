"""OnlineKMeans: the EMA update against a numpy hand computation, per-head counts, padding, the commitment
loss and its gradients, training/inference behaviour, serialisation and argument checks."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from common.kmeans import OnlineKMeans
from tests.layer_checks import check_config_round_trip, check_keras_round_trip

HEADS, CLUSTERS, DIM, BATCH, LENGTH = 2, 3, 4, 2, 5
DECAY, EPS = 0.9, 1e-5


def _known_state():
    rng = np.random.default_rng(1)
    centroids = rng.standard_normal((HEADS, CLUSTERS, DIM)).astype(np.float32)
    ema_sum = rng.standard_normal((HEADS, CLUSTERS, DIM)).astype(np.float32)
    ema_count = np.array([[1.0, 2.0, 3.0], [0.5, 4.0, 0.25]], np.float32)
    return centroids, ema_sum, ema_count


def _built_layer(decay=DECAY, beta=1e-4, state=None):
    layer = OnlineKMeans(HEADS, CLUSTERS, decay=decay, beta=beta, epsilon=EPS, seed=3)
    layer.build((None, HEADS, None, DIM))
    centroids, ema_sum, ema_count = state or _known_state()
    layer.centroids.assign(centroids)
    layer.ema_sum.assign(ema_sum)
    layer.ema_count.assign(ema_count)
    return layer


def _inputs(centroids):
    """Vectors close to chosen centroids, so that the assignment is unambiguous and differs between heads;
    two all-zero (padding) vectors."""
    rng = np.random.default_rng(2)
    wanted = np.zeros((BATCH, HEADS, LENGTH), np.int64)
    wanted[:, 0] = [[0, 0, 0, 1, 2], [0, 1, 0, 0, 0]]  # head 0 mostly cluster 0
    wanted[:, 1] = [[2, 2, 1, 2, 2], [2, 2, 2, 0, 2]]  # head 1 mostly cluster 2
    x = np.zeros((BATCH, HEADS, LENGTH, DIM), np.float32)
    for b in range(BATCH):
        for h in range(HEADS):
            for t in range(LENGTH):
                x[b, h, t] = 3.0 * centroids[h, wanted[b, h, t]] + 0.05 * rng.standard_normal(DIM)
    x[0, 0, 4] = 0.0  # padding in head 0
    x[1, 1, 2] = 0.0  # padding in head 1
    return x


def _np_assignment(x, centroids):
    return np.argmax(np.einsum("bhld,hcd->bhlc", x, centroids), axis=-1)


def _np_statistics(x, assignment):
    hot = np.eye(CLUSTERS)[assignment] * np.any(x != 0, axis=-1)[..., None]
    count = np.zeros((HEADS, CLUSTERS))
    total = np.zeros((HEADS, CLUSTERS, DIM))
    for b in range(BATCH):
        for h in range(HEADS):
            for t in range(LENGTH):
                count[h] += hot[b, h, t]
                total[h] += np.outer(hot[b, h, t], x[b, h, t])
    return count, total, hot


def _np_ema(count, total, state, decay=DECAY):
    _, ema_sum, ema_count = (s.astype(np.float64) for s in state)
    ema_count = decay * ema_count + (1 - decay) * count
    ema_sum = decay * ema_sum + (1 - decay) * total
    n = ema_count.sum(-1, keepdims=True)
    smoothed = (ema_count + EPS) / (n + CLUSTERS * EPS) * n
    return ema_count, ema_sum, ema_sum / smoothed[..., None]


def test_ema_update_matches_hand_computation_per_head():
    state = _known_state()
    x = _inputs(state[0])
    assignment = _np_assignment(x, state[0])
    count, total, hot = _np_statistics(x, assignment)
    # The example separates the heads, and the original's reshape quirk would count differently here.
    quirk_count = hot.reshape(-1, HEADS, CLUSTERS).sum(0)
    assert not np.allclose(quirk_count, count)
    # Padding is not counted: 2 x 5 tokens per head, one of them all zeros.
    np.testing.assert_array_equal(count.sum(-1), [9, 9])
    want_count, want_sum, want_centroids = _np_ema(count, total, state)

    layer = _built_layer()
    got_assignment = layer(tf.constant(x), training=True)
    np.testing.assert_array_equal(np.asarray(got_assignment), assignment)
    np.testing.assert_allclose(np.asarray(layer.ema_count), want_count, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.ema_sum), want_sum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.centroids), want_centroids, rtol=1e-5, atol=1e-6)


def test_statistics_are_per_head_and_skip_padding():
    state = _known_state()
    x = _inputs(state[0])
    assignment = _np_assignment(x, state[0])
    count, total, _ = _np_statistics(x, assignment)
    layer = _built_layer()
    got_count, got_total = layer.statistics(tf.constant(x), tf.constant(assignment))
    np.testing.assert_array_equal(np.asarray(got_count), count)
    np.testing.assert_allclose(np.asarray(got_total), total, rtol=1e-6, atol=1e-6)
    # A padding vector assigned anywhere adds nothing.
    x_pad = x.copy()
    x_pad[0, 0, :] = 0.0
    got_count, _ = layer.statistics(tf.constant(x_pad), tf.constant(assignment))
    assert np.asarray(got_count)[0].sum() == count[0].sum() - np.any(x[0, 0] != 0, axis=-1).sum()


def _np_commitment(x, centroids, beta):
    chosen = centroids[np.arange(HEADS)[None, :, None], _np_assignment(x, centroids)]
    return beta * np.mean((x.astype(np.float64) - chosen) ** 2)


def test_commitment_loss_value_inference():
    state = _known_state()
    x = np.random.default_rng(5).standard_normal((BATCH, HEADS, LENGTH, DIM)).astype(np.float32)
    layer = _built_layer(beta=0.5)
    layer(tf.constant(x), training=False)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), _np_commitment(x, state[0], 0.5), rtol=1e-5)


def test_commitment_loss_uses_the_centroids_the_tokens_were_assigned_to_when_training():
    """The original computes the loss before assigning the new means (control dependency on the loss);
    the assignment is made against the old centroids, so the loss must use those too."""
    state = _known_state()
    x = np.random.default_rng(5).standard_normal((BATCH, HEADS, LENGTH, DIM)).astype(np.float32)
    layer = _built_layer(beta=0.5, decay=0.5)
    layer(tf.constant(x), training=True)
    assert not np.allclose(np.asarray(layer.centroids), state[0])
    np.testing.assert_allclose(float(layer.losses[0]), _np_commitment(x, state[0], 0.5), rtol=1e-5)


def test_commitment_loss_gradient_reaches_inputs_not_centroids():
    layer = _built_layer(beta=1.0)
    assert layer.trainable_weights == []
    assert {id(w) for w in layer.non_trainable_weights} == {id(layer.centroids), id(layer.ema_sum),
                                                             id(layer.ema_count)}
    x = tf.constant(np.random.default_rng(6).standard_normal((BATCH, HEADS, LENGTH, DIM)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        tape.watch(layer.centroids.value)
        loss = layer.commitment_loss(x, layer.nearest(x))
    grad_x = tape.gradient(loss, x)
    grad_c = tape.gradient(loss, layer.centroids.value)
    assert grad_x is not None and np.any(np.asarray(grad_x) != 0)
    # d/dx beta * mean((x - c)^2) = 2 beta (x - c) / size
    chosen = np.asarray(layer.centroids)[np.arange(HEADS)[None, :, None], np.asarray(layer.nearest(x))]
    np.testing.assert_allclose(np.asarray(grad_x), 2 * (np.asarray(x) - chosen) / x.shape.num_elements(),
                               rtol=1e-5, atol=1e-7)
    assert grad_c is None or not np.any(np.asarray(grad_c))


def test_centroids_move_only_when_training():
    state = _known_state()
    x = tf.constant(_inputs(state[0]))
    layer = _built_layer()
    for training in (False, None):
        layer(x, training=training)
        np.testing.assert_array_equal(np.asarray(layer.centroids), state[0])
        np.testing.assert_array_equal(np.asarray(layer.ema_sum), state[1])
        np.testing.assert_array_equal(np.asarray(layer.ema_count), state[2])
    layer(x, training=True)
    assert not np.allclose(np.asarray(layer.centroids), state[0])
    assert not np.allclose(np.asarray(layer.ema_count), state[2])


def test_keras_round_trip_restores_state():
    x = _inputs(_known_state()[0])
    inputs = keras.Input(shape=x.shape[1:])
    layer = OnlineKMeans(HEADS, CLUSTERS, decay=DECAY, seed=3)
    model = keras.Model(inputs, layer(inputs))
    # State that a fresh layer (same seed) would not have: the round trip must load it from the file.
    layer(tf.constant(x), training=True)
    layer(tf.constant(x) * 0.5, training=True)
    restored = check_keras_round_trip(model, x)
    restored_layer = restored.layers[-1]
    assert isinstance(restored_layer, OnlineKMeans)
    for name in ("centroids", "ema_sum", "ema_count"):
        np.testing.assert_array_equal(np.asarray(getattr(restored_layer, name)), np.asarray(getattr(layer, name)))
    fresh = OnlineKMeans(HEADS, CLUSTERS, decay=DECAY, seed=3)
    fresh.build((None, HEADS, None, DIM))
    assert not np.array_equal(np.asarray(fresh.centroids), np.asarray(layer.centroids))


def test_config_round_trip():
    layer = OnlineKMeans(3, 5, decay=0.75, beta=0.25, epsilon=1e-3, seed=7, name="km")
    check_config_round_trip(layer)
    clone = OnlineKMeans.from_config(layer.get_config())
    for key in ("num_heads", "num_clusters", "decay", "beta", "epsilon", "seed", "name"):
        assert getattr(clone, key) == getattr(layer, key), key


def test_initial_centroids_are_normalised_and_seeded():
    a, b = OnlineKMeans(2, 3, seed=4), OnlineKMeans(2, 3, seed=4)
    for layer in (a, b):
        layer.build((None, 2, None, 8))
    c = np.asarray(a.centroids)
    np.testing.assert_array_equal(c, np.asarray(b.centroids))
    np.testing.assert_allclose(c.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(c.var(-1), 1, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(a.ema_sum), c)
    np.testing.assert_array_equal(np.asarray(a.ema_count), 0)


@pytest.mark.parametrize("kwargs, named", [
    (dict(num_heads=2, num_clusters=0), "num_clusters"), (dict(num_heads=2, num_clusters=-1), "num_clusters"),
    (dict(num_heads=2, num_clusters=2.0), "num_clusters"), (dict(num_heads=2, num_clusters=True), "num_clusters"),
    (dict(num_heads=0, num_clusters=2), "num_heads"), (dict(num_heads=2, num_clusters=2, decay=1.0), "decay"),
    (dict(num_heads=2, num_clusters=2, decay=-0.1), "decay"), (dict(num_heads=2, num_clusters=2, decay=1.5), "decay")])
def test_invalid_arguments_raise_naming_the_argument(kwargs, named):
    with pytest.raises(ValueError, match=named):
        OnlineKMeans(**kwargs)


# --- ema=False: centroids trained by gradient -----------------------------------------------------------------

def _gradient_layer(beta=0.5):
    layer = OnlineKMeans(HEADS, CLUSTERS, decay=DECAY, beta=beta, epsilon=EPS, ema=False, seed=3)
    layer.build((None, HEADS, None, DIM))
    layer.centroids.assign(_known_state()[0])
    return layer


def test_without_ema_the_centroids_are_trainable_and_there_is_no_ema_sum():
    layer = _gradient_layer()
    assert [id(w) for w in layer.trainable_weights] == [id(layer.centroids)]
    assert [id(w) for w in layer.non_trainable_weights] == [id(layer.ema_count)]
    assert not hasattr(layer, "ema_sum")


def test_without_ema_the_loss_is_q_loss_plus_beta_e_loss_with_the_original_gradients():
    """loss = mean((sg(x) - c)^2) + beta * mean((x - sg(c))^2): d/dc = 2 (c - x) / size summed over the vectors
    assigned to c, d/dx = 2 beta (x - c) / size."""
    beta = 0.5
    layer = _gradient_layer(beta)
    centroids = np.asarray(layer.centroids, np.float64)
    x = tf.constant(np.random.default_rng(6).standard_normal((BATCH, HEADS, LENGTH, DIM)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = layer.commitment_loss(x, layer.nearest(x))
    grad_x, grad_c = tape.gradient(loss, [x, layer.centroids])
    xs = np.asarray(x, np.float64)
    assignment = _np_assignment(xs, centroids)
    chosen = centroids[np.arange(HEADS)[None, :, None], assignment]
    size = xs.size
    np.testing.assert_allclose(float(loss), (1 + beta) * np.mean((xs - chosen) ** 2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_x), 2 * beta * (xs - chosen) / size, rtol=1e-5, atol=1e-7)
    want_c = np.zeros_like(centroids)
    for b, h, t in np.ndindex(BATCH, HEADS, LENGTH):
        want_c[h, assignment[b, h, t]] += 2 * (chosen[b, h, t] - xs[b, h, t]) / size
    np.testing.assert_allclose(np.asarray(tf.convert_to_tensor(grad_c)), want_c, rtol=1e-5, atol=1e-7)


def test_without_ema_training_moves_only_the_count_average():
    state = _known_state()
    layer = _gradient_layer()
    x = _inputs(state[0])
    layer(tf.constant(x), training=True)
    np.testing.assert_array_equal(np.asarray(layer.centroids), state[0])
    count, _, _ = _np_statistics(x, _np_assignment(x, state[0]))
    np.testing.assert_allclose(np.asarray(layer.ema_count), (1 - DECAY) * count, rtol=1e-6)


def test_without_ema_an_optimizer_step_moves_the_centroids_against_the_gradient():
    layer = _gradient_layer()
    before = np.asarray(layer.centroids).copy()
    x = tf.constant(_inputs(before))
    optimizer = keras.optimizers.SGD(learning_rate=0.1)
    with tf.GradientTape() as tape:
        loss = layer.commitment_loss(x, layer.nearest(x))
    gradient = tape.gradient(loss, layer.centroids)
    optimizer.apply_gradients([(gradient, layer.centroids)])
    np.testing.assert_allclose(np.asarray(layer.centroids),
                               before - 0.1 * np.asarray(tf.convert_to_tensor(gradient)), rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(layer.centroids), before)
    # Toward the vectors: the q_loss falls.
    after = layer.commitment_loss(x, layer.nearest(x))
    assert float(after) < float(loss)


def test_without_ema_the_config_and_a_keras_round_trip_keep_the_trained_centroids():
    layer = OnlineKMeans(HEADS, CLUSTERS, ema=False, seed=3)
    assert OnlineKMeans.from_config(layer.get_config()).ema is False
    x = _inputs(_known_state()[0])
    inputs = keras.Input(shape=x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    layer.centroids.assign(_known_state()[0])
    restored = check_keras_round_trip(model, x)
    np.testing.assert_array_equal(np.asarray(restored.layers[-1].centroids), _known_state()[0])
