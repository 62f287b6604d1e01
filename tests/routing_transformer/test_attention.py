"""routing_attention (balanced routing, the original's): cluster membership, attention inside clusters
against dense attention and a numpy reference, averaging of duplicates, causality of the effective matrix,
relative positions by rank, gradients, argument checks and the absence of length x length tensors."""

import numpy as np
import pytest
import tensorflow as tf

from common.attention import dense_attention
from common.layers import layer_norm
from routing_transformer.attention import routing_attention
from tests.kernel_checks import effective_matrix
from tests.routing_transformer._reference import np_layer_norm, np_members, np_routing

TOL = dict(rtol=1e-5, atol=1e-5)


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _effective(q, centroids, window, **options):
    """The kernel's effective attention matrix [batch, heads, length, length] (shared QK: k is None)."""
    return effective_matrix(routing_attention, q, None, centroids=tf.constant(centroids), window=window, **options)


def _two_group_inputs(length=16, dim=6, noise=0.1, seed=0):
    """Group A (even positions) near +u, group B (odd positions) near -u; centroids at the normalised means."""
    rng = np.random.default_rng(seed)
    u = _normal(rng, dim)
    sign = np.where(np.arange(length) % 2 == 0, 1.0, -1.0)[:, None]
    q = (sign * u + noise * _normal(rng, length, dim))[None, None].astype(np.float32)
    qn = np_layer_norm(q)[0, 0]
    centroids = np.stack([qn[sign[:, 0] > 0].mean(0), qn[sign[:, 0] < 0].mean(0)])[None].astype(np.float32)
    return q, centroids, sign[:, 0] > 0


def test_two_separated_groups_attend_only_inside_their_group():
    length = 16
    q, centroids, in_a = _two_group_inputs(length)
    members = np_members(q, centroids, length // 2)
    np.testing.assert_array_equal(members[0, 0, 0], np.flatnonzero(in_a))
    np.testing.assert_array_equal(members[0, 0, 1], np.flatnonzero(~in_a))
    weights = _effective(q, centroids, window=length // 2)[0, 0]
    same = in_a[:, None] == in_a[None, :]
    earlier = np.arange(length)[None, :] <= np.arange(length)[:, None]
    assert np.all(weights[~same] == 0.0)
    assert np.all(weights[same & ~earlier] == 0.0)
    assert np.all(weights[same & earlier] > 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, **TOL)
    assert weights[0, 0] == pytest.approx(1.0) and weights[1, 1] == pytest.approx(1.0)


def _partition_inputs(seed, heads=2, clusters=4, window=4, dim=8, batch=2):
    """Tokens near one-hot directions, `window` tokens per direction in random order: top-`window` membership
    is then a partition of the sequence (window x clusters == length)."""
    rng = np.random.default_rng(seed)
    length = clusters * window
    group = np.stack([np.stack([rng.permutation(np.repeat(np.arange(clusters), window)) for _ in range(heads)])
                      for _ in range(batch)])
    directions = np.eye(dim, dtype=np.float32)[:clusters]
    q = directions[group] + 0.1 * _normal(rng, batch, heads, length, dim)
    centroids = np.broadcast_to(np_layer_norm(directions), (heads, clusters, dim)).astype(np.float32)
    v = _normal(rng, batch, heads, length, 5)
    return q.astype(np.float32), v, centroids, group


def test_partition_matches_dense_attention_with_cluster_mask():
    q, v, centroids, group = _partition_inputs(seed=1)
    window = 4
    members = np_members(q, centroids, window)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for c in range(centroids.shape[1]):
                np.testing.assert_array_equal(members[b, h, c], np.flatnonzero(group[b, h] == c))
    got, aux = routing_attention(tf.constant(q), None, tf.constant(v), centroids=tf.constant(centroids),
                                 window=window)
    qn = layer_norm(tf.constant(q))
    mask = tf.constant(group[..., :, None] == group[..., None, :])
    want = dense_attention(qn, qn, tf.constant(v), causal=True, mask=mask, scale=1.0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)
    np.testing.assert_allclose(np.asarray(aux["queries"]), np.asarray(qn), **TOL)
    np.testing.assert_array_equal(np.asarray(aux["query_assignment"]), group)
    # Not the plain causal dense attention: the cluster mask matters.
    plain = dense_attention(qn, qn, tf.constant(v), causal=True, scale=1.0)
    assert not np.allclose(np.asarray(got), np.asarray(plain), atol=1e-3)


def test_random_partition_with_opposite_centroids_matches_dense():
    """With centroids c and -c, the top-w of one cluster and the top-w of the other split 2w tokens."""
    rng = np.random.default_rng(2)
    length, window, dim = 12, 6, 4
    q, v = _normal(rng, 2, 1, length, dim), _normal(rng, 2, 1, length, 3)
    c = np_layer_norm(_normal(rng, dim))
    centroids = np.stack([c, -c])[None].astype(np.float32)
    members = np_members(q, centroids, window)
    group = np.zeros((2, 1, length), int)
    for b in range(2):
        group[b, 0, members[b, 0, 1]] = 1
        assert sorted(np.concatenate(members[b, 0])) == list(range(length))
    got, _ = routing_attention(tf.constant(q), None, tf.constant(v), centroids=tf.constant(centroids),
                               window=window)
    qn = layer_norm(tf.constant(q))
    mask = tf.constant(group[..., :, None] == group[..., None, :])
    want = dense_attention(qn, qn, tf.constant(v), causal=True, mask=mask, scale=1.0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def _overlap_inputs(seed=3):
    """clusters x window > length with random centroids: some tokens in several clusters, some in none."""
    rng = np.random.default_rng(seed)
    q, v = _normal(rng, 1, 2, 12, 4), _normal(rng, 1, 2, 12, 3)
    centroids = np_layer_norm(_normal(rng, 2, 3, 4)).astype(np.float32)
    return q, v, centroids


def test_duplicates_are_averaged_and_unrouted_tokens_are_zero():
    q, v, centroids = _overlap_inputs()
    window = 5
    want, members, count = np_routing(q, v, centroids, window)
    assert (count >= 2).any() and (count == 0).any(), "the example must have duplicates and unrouted tokens"
    got, _ = routing_attention(tf.constant(q), None, tf.constant(v), centroids=tf.constant(centroids),
                               window=window)
    got = np.asarray(got)
    np.testing.assert_allclose(got, want, **TOL)
    assert np.all(got[count == 0] == 0.0)
    # A duplicated token: the mean of its clusters' outputs, each computed as a cluster on its own.
    b, h, t = np.argwhere(count >= 2)[0]
    outputs = []
    for c in range(centroids.shape[1]):
        idx = members[b, h, c]
        if t in idx:
            sub = idx[idx <= t]
            qn = np_layer_norm(q[b, h, sub])
            logits = qn[-1] @ qn.T
            w = np.exp(logits - logits.max())
            outputs.append((w / w.sum()) @ v[b, h, sub])
    assert len(outputs) == count[b, h, t]
    np.testing.assert_allclose(got[b, h, t], np.mean(outputs, axis=0), **TOL)
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3)


def test_the_original_average_divides_by_the_count_plus_epsilon():
    """count_epsilon=0.01 is the original's `scatter_cluster_items`: a token's summed outputs over count + 0.01;
    with causal routing every token is in one cluster, so its output is the exact one over 1.01."""
    q, v, centroids = _overlap_inputs()
    options = dict(centroids=tf.constant(centroids), window=5)
    want, _, count = np_routing(q, v, centroids, 5, count_epsilon=0.01)
    assert (count >= 2).any() and (count == 0).any()
    got, _ = routing_attention(tf.constant(q), None, tf.constant(v), count_epsilon=0.01, **options)
    np.testing.assert_allclose(np.asarray(got), want, **TOL)
    exact, _ = routing_attention(tf.constant(q), None, tf.constant(v), routing="causal", **options)
    shrunk, _ = routing_attention(tf.constant(q), None, tf.constant(v), routing="causal", count_epsilon=0.01,
                                  **options)
    np.testing.assert_allclose(np.asarray(shrunk), np.asarray(exact) / 1.01, **TOL)


def test_effective_matrix_is_causal_and_rows_sum_to_one_for_routed_tokens():
    rng = np.random.default_rng(4)
    length, window = 16, 5
    q = _normal(rng, 2, 2, length, 4)
    centroids = np_layer_norm(_normal(rng, 2, 3, 4)).astype(np.float32)
    weights = _effective(q, centroids, window)
    _, members, count = np_routing(q, np.zeros(q.shape[:3] + (1,)), centroids, window)
    assert np.all(np.triu(weights, k=1) == 0.0)
    assert np.all(weights >= 0.0)
    sums = weights.sum(-1)
    assert (count == 0).any()
    np.testing.assert_allclose(sums[count > 0], 1.0, **TOL)
    assert np.all(sums[count == 0] == 0.0)
    # Not causal: the same routing without the causal mask sees later tokens.
    open_weights = _effective(q, centroids, window, causal=False)
    assert np.any(np.triu(open_weights, k=1) > 0.0)


def test_membership_depends_on_later_tokens():
    """Balanced top-k membership is decided over the whole sequence: a later token that is nearer to the
    centroid pushes an earlier one out of the cluster, which changes the earlier token's output. This is
    the original's behaviour (documented in `routing_attention`): the kernel is causal only for fixed
    membership."""
    centroid = np.array([[[1.0, -1.0, 1.0, -1.0]]], np.float32)  # layer-normalised already
    q = np.array([[[[1.0, -1.0, 1.0, -0.5], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]]], np.float32)
    v = np.array([[[[1.0], [2.0], [3.0]]]], np.float32)
    before, _ = routing_attention(tf.constant(q), None, tf.constant(v), centroids=tf.constant(centroid), window=1)
    q_future = q.copy()
    q_future[0, 0, 2] = centroid[0, 0]  # only position 2 changes
    after, _ = routing_attention(tf.constant(q_future), None, tf.constant(v), centroids=tf.constant(centroid),
                                 window=1)
    np.testing.assert_allclose(np.asarray(before)[0, 0, :, 0], [1.0, 0.0, 0.0], **TOL)
    np.testing.assert_allclose(np.asarray(after)[0, 0, :, 0], [0.0, 0.0, 3.0], **TOL)


def test_fixed_membership_future_changes_do_not_leak():
    """Changing v at later positions, and q at later positions in ways that keep the membership, changes no
    earlier output."""
    q, v, centroids, group = _partition_inputs(seed=5, batch=1)
    window, t = 4, 9
    base, _ = routing_attention(tf.constant(q), None, tf.constant(v), centroids=tf.constant(centroids),
                                window=window)
    rng = np.random.default_rng(6)
    q2, v2 = q.copy(), v.copy()
    q2[:, :, t + 1:] += 0.05 * _normal(rng, *q2[:, :, t + 1:].shape)
    v2[:, :, t + 1:] = _normal(rng, *v2[:, :, t + 1:].shape)
    np.testing.assert_array_equal(np_members(q2, centroids, window), np_members(q, centroids, window))
    out, _ = routing_attention(tf.constant(q2), None, tf.constant(v2), centroids=tf.constant(centroids),
                               window=window)
    np.testing.assert_array_equal(np.asarray(out)[:, :, :t + 1], np.asarray(base)[:, :, :t + 1])
    assert not np.allclose(np.asarray(out)[:, :, t + 1:], np.asarray(base)[:, :, t + 1:])


def test_unshared_keys_run_and_are_causal():
    rng = np.random.default_rng(7)
    length, window = 12, 4
    q, k = _normal(rng, 1, 2, length, 4), _normal(rng, 1, 2, length, 4)
    centroids = np_layer_norm(_normal(rng, 2, 3, 4)).astype(np.float32)
    eye = tf.broadcast_to(tf.eye(length), (1, 2, length, length))
    weights, aux = routing_attention(tf.constant(q), tf.constant(k), eye, centroids=tf.constant(centroids),
                                     window=window, share_qk=False)
    weights = np.asarray(weights)
    assert np.all(np.isfinite(weights))
    assert np.all(np.triu(weights, k=1) == 0.0)
    assert np.any(weights > 0.0)
    np.testing.assert_allclose(np.asarray(aux["keys"]), np_layer_norm(k), **TOL)
    shared = _effective(q, centroids, window)
    assert not np.allclose(weights, shared, atol=1e-3)


def test_shared_qk_with_other_keys_raises():
    rng = np.random.default_rng(8)
    q, k, v = (tf.constant(_normal(rng, 1, 1, 8, 4)) for _ in range(3))
    centroids = tf.constant(np_layer_norm(_normal(rng, 1, 2, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="share_qk"):
        routing_attention(q, k, v, centroids=centroids, window=4, share_qk=True)
    routing_attention(q, q, v, centroids=centroids, window=4, share_qk=True)  # k = q is allowed


def test_relative_positions_use_ranks_inside_the_cluster():
    q, v, centroids = _overlap_inputs(seed=9)
    rng = np.random.default_rng(10)
    window, m = 5, 2  # m < window - 1: clipping matters
    tables = dict(relative_keys=_normal(rng, 2 * m + 1, 4), relative_values=_normal(rng, 2 * m + 1, 3))
    want, members, _ = np_routing(q, v, centroids, window, **tables)
    # Ranks differ from positions in this example.
    assert any(np.any(np.diff(idx) > 1) for idx in members.reshape(-1, window))
    got, _ = routing_attention(tf.constant(q), None, tf.constant(v), centroids=tf.constant(centroids),
                               window=window, **{key: tf.constant(t) for key, t in tables.items()})
    np.testing.assert_allclose(np.asarray(got), want, **TOL)
    without, _ = routing_attention(tf.constant(q), None, tf.constant(v), centroids=tf.constant(centroids),
                                   window=window)
    assert not np.allclose(np.asarray(got), np.asarray(without), atol=1e-3)


def test_relative_logits_of_one_cluster():
    """One cluster holding every token: logits are LN(q_i) . (LN(q_j) + R_k[rank_j - rank_i])."""
    rng = np.random.default_rng(11)
    length, m = 6, 3
    q = _normal(rng, 1, 1, length, 4)
    rel_k = _normal(rng, 2 * m + 1, 4)
    centroids = np_layer_norm(_normal(rng, 1, 1, 4)).astype(np.float32)
    weights = _effective(q, centroids, length, relative_keys=tf.constant(rel_k))[0, 0]
    qn = np_layer_norm(q[0, 0])
    for i in range(length):
        logits = np.array([qn[i] @ (qn[j] + rel_k[np.clip(j - i, -m, m) + m]) for j in range(i + 1)])
        w = np.exp(logits - logits.max())
        np.testing.assert_allclose(weights[i, :i + 1], w / w.sum(), **TOL)


def test_gradients_reach_q_and_v_not_centroids():
    q, v, centroids = _overlap_inputs(seed=12)
    q, v = tf.constant(q), tf.constant(v)
    centroids = tf.Variable(centroids)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q, v])
        out, _ = routing_attention(q, None, v, centroids=centroids, window=5)
        loss = tf.reduce_sum(out * tf.constant(np.random.default_rng(0).standard_normal(out.shape), tf.float32))
    grad_q, grad_v, grad_c = tape.gradient(loss, [q, v, centroids])
    for grad in (grad_q, grad_v):
        assert grad is not None and np.all(np.isfinite(grad)) and np.any(np.asarray(grad) != 0)
    assert grad_c is None or not np.any(np.asarray(grad_c))
    # Tokens routed nowhere are read by no cluster: their q and v get exactly zero gradient; the others not.
    _, _, count = np_routing(np.asarray(q), np.asarray(v), np.asarray(centroids), 5)
    assert (count == 0).any()
    for grad in (np.asarray(grad_q), np.asarray(grad_v)):
        assert np.all(grad[count == 0] == 0.0)
        assert np.all(np.abs(grad[count > 0]).max(-1) > 0.0)


@pytest.mark.parametrize("case, named", [
    ("coverage", "does not cover the sequence length 8"), ("centroid_heads", "do not match q"),
    ("centroid_dim", "do not match q"), ("window_zero", "window must be"), ("centroid_rank", "centroids must be"),
    ("routing", "unknown routing 'nearest'")])
def test_bad_inputs_raise_naming_the_problem(case, named):
    rng = np.random.default_rng(13)
    q, v = tf.constant(_normal(rng, 1, 2, 8, 4)), tf.constant(_normal(rng, 1, 2, 8, 3))
    centroids = tf.constant(_normal(rng, 2, 3, 4))
    options = dict(centroids=centroids, window=2)
    if case == "coverage":
        options.update(require_coverage=True)  # 3 x 2 < 8
    elif case == "centroid_heads":
        options.update(centroids=tf.constant(_normal(rng, 3, 3, 4)))
    elif case == "centroid_dim":
        options.update(centroids=tf.constant(_normal(rng, 2, 3, 5)))
    elif case == "window_zero":
        options.update(window=0)
    elif case == "centroid_rank":
        options.update(centroids=tf.constant(_normal(rng, 2, 3)))
    elif case == "routing":
        options.update(routing="nearest")
    with pytest.raises(ValueError, match=named):
        routing_attention(q, None, v, **options)
    # The valid neighbours of the bad cases run.
    routing_attention(q, None, v, centroids=centroids, window=8)
    routing_attention(q, None, v, centroids=centroids, window=3, require_coverage=True)


@pytest.mark.parametrize("routing,clusters,share_qk,causal", [
    ("balanced", 3, True, True), ("balanced", 3, True, False), ("balanced", 3, False, True),
    ("balanced", 3, False, False), ("causal", 1, True, True), ("causal", 1, True, False)])
def test_a_sequence_shorter_than_the_window_is_in_every_cluster(routing, clusters, share_qk, causal):
    """Fewer tokens than `window` (also with an unknown length): with balanced routing every cluster holds
    every token, so every row is dense attention over layer_norm(q) with scale 1 and rank distances = position
    distances, averaged over identical clusters. Causal routing's window then holds every earlier member of the
    token's own cluster: dense with a single cluster."""
    rng = np.random.default_rng(15)
    q, k, v = (tf.constant(_normal(rng, 2, 2, 5, 4)) for _ in range(3))
    tables = dict(relative_keys=tf.constant(_normal(rng, 7, 4)), relative_values=tf.constant(_normal(rng, 7, 4)))
    want = dense_attention(layer_norm(q), layer_norm(q if share_qk else k), v, causal=causal, scale=1.0, **tables)
    options = dict(centroids=tf.constant(_normal(rng, 2, clusters, 4)), window=8, causal=causal, share_qk=share_qk,
                   routing=routing, **tables)
    k = None if share_qk else k
    got, _ = routing_attention(q, k, v, **options)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)
    unknown = tf.TensorSpec([2, 2, None, 4])
    traced = tf.function(lambda q, v: routing_attention(q, k, v, **options)[0], input_signature=[unknown, unknown])
    np.testing.assert_allclose(traced(q, v).numpy(), np.asarray(want), **TOL)


def _large_dims(fn, length):
    graph = fn.get_concrete_function().graph
    found = []
    for op in graph.get_operations():
        for tensor in op.outputs:
            if tensor.shape.rank is None:
                found.append((op.name, "unknown rank"))
                continue
            big = [d for d in tensor.shape.as_list() if d is None or d >= length]
            if len(big) >= 2:
                found.append((op.name, tensor.shape))
    return found


def test_no_length_by_length_tensor():
    length, window, clusters, heads = 1024, 64, 16, 2
    rng = np.random.default_rng(14)
    q = tf.constant(_normal(rng, 1, heads, length, 8))
    v = tf.constant(_normal(rng, 1, heads, length, 8))
    centroids = tf.constant(_normal(rng, heads, clusters, 8))
    tables = dict(relative_keys=tf.constant(_normal(rng, 129, 8)), relative_values=tf.constant(_normal(rng, 129, 8)))

    routed = tf.function(lambda: routing_attention(q, None, v, centroids=centroids, window=window, **tables)[0])
    assert _large_dims(routed, length) == []
    # The check itself sees a length x length tensor where there is one.
    dense = tf.function(lambda: dense_attention(q, q, v))
    assert _large_dims(dense, length) != []


@pytest.mark.parametrize("length, window", [(24, 5), (24, 6), (20, 8)])
def test_strided_membership_takes_every_stride_th_of_each_ranking(length, window):
    """The original's cluster-strided heads: each cluster takes ranks 0, s, 2s, ... (s = length // window) of
    its centroid's ranking, nearest first; attention inside clusters, relative ranks and averaging as usual."""
    rng = np.random.default_rng(11)
    q, v = _normal(rng, 2, 2, length, 8), _normal(rng, 2, 2, length, 6)
    centroids = _normal(rng, 2, 3, 8)
    rel_k, rel_v = 0.3 * _normal(rng, 7, 8), 0.3 * _normal(rng, 7, 6)
    got = routing_attention(tf.constant(q), None, tf.constant(v), centroids=tf.constant(centroids), window=window,
                            membership="strided", relative_keys=tf.constant(rel_k), relative_values=tf.constant(rel_v))
    want, members, count = np_routing(q, v, centroids, window, rel_k, rel_v, membership="strided")
    np.testing.assert_allclose(got[0].numpy(), want, **TOL)
    # Not the nearest tokens: the picks spread over the whole ranking (its last pick is rank (window - 1) x s).
    assert not np.array_equal(members, np_members(q, centroids, window))
    assert (count == 0).any() and (count > 0).any()


def test_strided_membership_needs_balanced_routing():
    q = tf.zeros((1, 1, 8, 4))
    with pytest.raises(ValueError, match="membership='strided' .* needs routing='balanced'"):
        routing_attention(q, None, q, centroids=tf.ones((1, 2, 4)), window=4, routing="causal", membership="strided")
    with pytest.raises(ValueError, match="unknown membership 'farthest'"):
        routing_attention(q, None, q, centroids=tf.ones((1, 2, 4)), window=4, membership="farthest")


@pytest.mark.parametrize("routing", ["balanced", "causal"])
def test_kept_weights_give_the_recomputed_gradients(routing):
    """keep_weights only changes what the backward pass stores: the same outputs and gradients (q, v, tables)."""
    rng = np.random.default_rng(21)
    q, v = tf.constant(_normal(rng, 2, 2, 12, 4)), tf.constant(_normal(rng, 2, 2, 12, 3))
    tables = [tf.constant(_normal(rng, 7, 4)), tf.constant(_normal(rng, 7, 3))]
    centroids = tf.constant(np_layer_norm(_normal(rng, 2, 3, 4)).astype(np.float32))
    cotangent = tf.constant(_normal(rng, 2, 2, 12, 3))

    def outputs_and_gradients(keep_weights):
        with tf.GradientTape() as tape:
            tape.watch([q, v, *tables])
            out, _ = routing_attention(q, None, v, centroids=centroids, window=4, routing=routing,
                                       relative_keys=tables[0], relative_values=tables[1], keep_weights=keep_weights)
            loss = tf.reduce_sum(out * cotangent)
        return [out.numpy()] + [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, [q, v, *tables])]

    for label, kept, recomputed in zip(["out", "q", "v", "relative_keys", "relative_values"],
                                       outputs_and_gradients(True), outputs_and_gradients(False)):
        assert np.abs(recomputed).max() > 0, label
        np.testing.assert_allclose(kept, recomputed, **TOL, err_msg=label)
