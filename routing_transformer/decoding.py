"""Incremental decoding of routing attention: one new token per step against per-layer caches.

As in the original's fast decoding (reference notes, section 4), only the newest token's q, k and v are
computed; earlier positions' normalised keys, values and routing state come from the cache, as they were when
those positions were computed. `start` and `step` are the "routing" kernel's registered decoder
(`common.attention.decoding`): `RoutingAttention` runs them for its routing heads and common's local decoder for
its local heads. Routing needs the queries (with share_qk the keys are the queries, k is None; without it
balanced routing needs every position's query scores); it does not read the layer input x.

routing="causal" (strictly causal, exact). A token attends to itself and the `window - 1` previous members of
its nearest centroid's cluster, the k-th latest at rank distance -k. The cache keeps, for every position, its
normalised key and its value, and its window (the positions of the latest `window` members of its cluster up to
itself, -1 where there are fewer), plus the latest member of every cluster. A step scores the new token against
the centroids, reads the window of its cluster's latest member, drops that window's oldest entry and appends the
new position, and attends over those `window` gathered keys. Cost per token: O(clusters x dim + window x dim),
whatever the prefix; the only per-step state that is not per position is [batch, heads, clusters].

routing="balanced" (the original: each cluster holds the `window` tokens of 0 .. position nearest its
centroid). Membership depends on the whole prefix, so, as the original re-clusters the whole cached sequence at
every step (its future positions blanked), a step reads the cached scores of every slot against the centroids
(centroids do not move at inference), blanks the slots after `position`, takes each cluster's top `window`,
and attends the new token, in every cluster it belongs to, to that cluster's members (ranks and relative
distances as in the full kernel), averaging over those clusters; a token in no cluster gets zeros. The cache
keeps every position's normalised key, value and scores (the query scores too without `share_qk`). With
`membership="strided"` (cluster-strided heads) a cluster takes every (cache_length // window)-th slot of that
ranking, blanked slots last, as the original's fast decoding ranks the whole cache. Cost per
token: O(cache_length x clusters) to read the scores and pick the members, which membership over the whole
prefix needs, plus O(clusters x window x dim) attention; never a position x position tensor. Every shape is
fixed by the cache, so a step compiles (XLA, jax.jit).

What balanced decoding equals. At `position` the step returns the full kernel's row `position` over positions
0 .. position given the cached keys, values and scores. For the first layer with balanced routing those are
the full pass's (the layers before it are strictly causal), so decoding the model equals running it on each
prefix when no layer after that one attends across positions: one routing layer, or routing only in the last
layer (the pg19 preset's `skip_first = num_layers - 1`). A later layer's cached keys were computed from the
routing layer's outputs at the time, with the membership of the prefix then; a full pass on a longer prefix
recomputes those earlier outputs with the newer membership (later tokens push earlier ones out of clusters).
So with several balanced layers decoding is the original's fast decoding, not a re-run of the model on every
prefix: each layer's input at an earlier position is frozen when that position is computed.

A prefix shorter than `window`: every cluster holds every token, as in `routing_attention` (and the
original's fast decoding, whose blanked future positions rank last). Ties: equal scores (equal vectors, e.g.
repeated tokens in a first layer without absolute positions) are broken by `top_k` towards the lower
position, but only bitwise-equal scores tie, and matrix products and reductions round a row differently
depending on the other rows (a full pass on one length against another, or a one-row step). So a tie on a
cluster's boundary can go either way, in the full kernel on different lengths as in decoding (measured: one
balanced layer on ids drawn from 6 values, 0 to 3 of 78 decoded rows off by up to 0.14; none with distinct ids
or behind a local layer, where no two vectors are equal).

Caches. Positions differ per (batch, head) row in routing, so routed entries are kept in per-row caches
(`common.kv_cache.rows_from_prompt`), from which a step gathers exactly the entries it reads; a cache of whole
positions would make it gather the union of the rows' positions, (batch x heads)^2 x window entries. The
scores, read at every position for every row, are a cache of whole positions. Written in `keras.ops`: it
decodes under any Keras backend.
"""

import keras
from keras import ops

from common import kv_cache
from common.attention.decoding import attend_gathered, register_decoder, require_causal
from common.layers import layer_norm
from routing_transformer.attention import check_membership, cluster_average_divisor, cluster_members
from routing_transformer.routing_scores import cluster_scores, num_routing_clusters


def _check(routing, share_qk, causal, membership="nearest"):
    require_causal(causal, "routing")
    if routing not in ("balanced", "causal"):
        raise ValueError(f"unknown routing {routing!r}; choose 'balanced' or 'causal'.")
    check_membership(membership, routing)
    if routing == "causal" and not share_qk:
        raise ValueError("routing='causal' needs share_qk=True (queries and keys share one cluster order).")


def _check_coverage(cache_length, clusters, window):
    """clusters x window must cover the decoding length, as the full kernel requires. A length known only when
    a TensorFlow graph runs is checked then (InvalidArgumentError)."""
    message = (f"clusters x window = {clusters} x {window} does not cover the decoding length; raise "
               f"num_clusters or window")
    if keras.backend.backend() == "tensorflow" and not isinstance(cache_length, int):
        import tensorflow as tf

        tf.debugging.assert_less_equal(tf.cast(cache_length, tf.int32), clusters * window, message=message)
    elif int(cache_length) > clusters * window:
        raise ValueError(f"{message} ({int(cache_length)}).")


def start(x, q, k, v, cache_length, *, window, routing="balanced", share_qk=True, centroids=None,
          hash_projection=None, causal=True, require_coverage=False, **unused_options):
    """The routing heads' cache of a prompt: q, k (None with share_qk) and v [batch, heads, n, dim].

    With `require_coverage`, decoding up to `cache_length` must keep clusters x window >= the length, as the full
    kernel requires.
    """
    _check(routing, share_qk, causal)
    clusters = num_routing_clusters(centroids, hash_projection)
    if require_coverage:
        _check_coverage(cache_length, clusters, window)
    queries = layer_norm(q)
    keys = queries if share_qk else layer_norm(k)
    cache = {"keys": kv_cache.rows_from_prompt(keys, cache_length),
             "values": kv_cache.rows_from_prompt(v, cache_length)}
    query_scores = cluster_scores(queries, centroids, hash_projection)
    if routing == "causal":
        assignment = ops.argmax(query_scores, axis=2)
        cache.update(_prompt_windows(assignment, clusters, window, cache_length))
        return cache
    key_scores = query_scores if share_qk else cluster_scores(keys, centroids, hash_projection)
    cache["key_scores"] = kv_cache.from_prompt(ops.transpose(key_scores, (0, 1, 3, 2)), cache_length)
    if not share_qk:
        cache["query_scores"] = kv_cache.from_prompt(ops.transpose(query_scores, (0, 1, 3, 2)), cache_length)
    return cache


def _prompt_windows(assignment, clusters, window, cache_length):
    """Causal routing's state after the prompt: every position's window and each cluster's latest member.

    assignment: int [batch, heads, n], the nearest centroid of every position. Sorted by (cluster, position)
    as the full kernel sorts, a position's window is the `window` sorted slots ending at its own, restricted to
    its cluster.
    """
    batch, heads, length = ops.shape(assignment)
    positions = ops.arange(length, dtype="int32")
    order = ops.argsort(assignment * length + positions, axis=-1)
    sorted_clusters = ops.take_along_axis(assignment, order, axis=2)
    slots = positions[:, None] - (window - 1) + ops.arange(window, dtype="int32")[None, :]  # [n, window]

    def at_slots(x):
        """x [batch, heads, n] at the slots of every position: [batch, heads, n, window]."""
        index = ops.reshape(ops.broadcast_to(ops.maximum(slots, 0), (batch, heads, length, window)),
                            (batch, heads, -1))
        return ops.reshape(ops.take_along_axis(x, index, axis=2), (batch, heads, length, window))

    same = ops.logical_and(slots >= 0, at_slots(sorted_clusters) == sorted_clusters[..., None])
    sorted_windows = ops.where(same, at_slots(order), -1)
    inverse = ops.broadcast_to(ops.argsort(order, axis=-1)[..., None], (batch, heads, length, window))
    windows = ops.take_along_axis(sorted_windows, inverse, axis=2)
    member = assignment[..., None] == ops.arange(clusters, dtype="int32")
    latest = ops.max(ops.where(member, positions[:, None], -1), axis=2)
    return {"windows": kv_cache.rows_from_prompt(windows, cache_length), "latest": latest}


def step(x, q, k, v, cache, position, *, window, routing="balanced", share_qk=True, centroids=None,
         hash_projection=None, causal=True, scale=1.0, relative_keys=None, relative_values=None, membership="nearest",
         count_epsilon=0.0, **unused_options):
    """The routing heads at `position`: q, k (None with share_qk), v [batch, heads, 1, dim] of the new token.

    Returns (out [batch, heads, 1, value_dim], cache); see the module docstring for what it equals and costs.
    """
    _check(routing, share_qk, causal, membership)
    heads = q.shape[1]
    num_rows = ops.shape(q)[0] * heads
    rows = ops.reshape(ops.arange(num_rows, dtype="int32"), (-1, heads))
    queries = layer_norm(q)
    keys = queries if share_qk else layer_norm(k)
    cache = dict(cache, keys=kv_cache.write_rows(cache["keys"], position, keys[:, :, 0]),
                 values=kv_cache.write_rows(cache["values"], position, v[:, :, 0]))
    query_scores = cluster_scores(queries, centroids, hash_projection)[..., 0]
    options = dict(scale=scale, relative_keys=relative_keys, relative_values=relative_values)
    if routing == "causal":
        out, cache = _causal_step(queries, query_scores, cache, position, rows, num_rows, window, options)
        return out / (1.0 + count_epsilon), cache  # cluster_average_divisor of a token in one cluster
    key_scores = query_scores if share_qk else cluster_scores(keys, centroids, hash_projection)[..., 0]
    cache["key_scores"] = kv_cache.write(cache["key_scores"], position, key_scores[:, :, None])
    if not share_qk:
        cache["query_scores"] = kv_cache.write(cache["query_scores"], position, query_scores[:, :, None])
    return _balanced_step(queries, cache, position, rows, num_rows, window, share_qk, membership, count_epsilon,
                          options)


def _causal_step(queries, scores, cache, position, rows, num_rows, window, options):
    """The new token joins its nearest cluster and attends to that cluster's latest `window` members."""
    cluster = ops.argmax(scores, axis=2)
    latest = cache["latest"]
    previous = ops.take_along_axis(latest, cluster[..., None], axis=2)[..., 0]
    earlier = kv_cache.read_rows(cache["windows"], ops.maximum(previous, 0)[..., None], rows, num_rows)
    earlier = earlier[..., 0, :]
    earlier = ops.where(previous[..., None] >= 0, earlier, -1)
    newest = ops.broadcast_to(ops.cast(position, earlier.dtype), ops.shape(earlier[..., :1]))
    members = ops.concatenate([earlier[..., 1:], newest], axis=-1)
    is_cluster = ops.arange(latest.shape[-1], dtype="int32") == cluster[..., None]
    cache = dict(cache, windows=kv_cache.write_rows(cache["windows"], position, members),
                 latest=ops.where(is_cluster, ops.cast(position, latest.dtype), latest))
    safe = ops.maximum(members, 0)
    keys = kv_cache.read_rows(cache["keys"], safe, rows, num_rows)
    values = kv_cache.read_rows(cache["values"], safe, rows, num_rows)
    out = attend_gathered(queries, keys, values, ops.arange(window, dtype="int32") - (window - 1), 0,
                          keep=members >= 0, **options)
    return out, cache


def _balanced_step(queries, cache, position, rows, num_rows, window, share_qk, membership, count_epsilon,
                   options):
    """Membership over the cached scores of 0 .. position (later slots blanked, ranked last); the new token
    attends inside every cluster it is a query member of, to that cluster's key members, and the results are
    averaged."""

    def members(name):
        """Every cluster's `window` slots of its ranking (the top ones, or with membership="strided" every
        (cache_length // window)-th, as a full pass over the cache's length picks them), sorted [batch, heads,
        clusters, window]: members (slots 0 .. position) and blanked slots, which a pick reaches when fewer
        tokens than it needs are there yet. `window` blank columns keep the pick defined on a shorter cache."""
        scores = ops.transpose(kv_cache.read_all(cache[name]), (0, 1, 3, 2))
        slots = ops.shape(scores)[-1]
        later = ops.arange(slots, dtype="int32") > position
        blank = ops.full_like(scores[..., :1], float("-inf"))
        scores = ops.concatenate([ops.where(later, blank, scores), ops.repeat(blank, window, axis=-1)], axis=-1)
        return cluster_members(scores, window, membership, slots=slots)

    key_members = members("key_scores")
    query_members = key_members if share_qk else members("query_scores")
    # The new token is the latest position: when it is a query member, its rank is the number of members
    # before it, and every key member is at or before it (so causality masks nothing).
    in_cluster = ops.any(query_members == position, axis=-1)  # [batch, heads, clusters]
    rank = ops.sum(ops.cast(query_members < position, "int32"), axis=-1)
    kept = key_members <= position
    safe = ops.where(kept, key_members, 0)
    heads, clusters = key_members.shape[1], key_members.shape[2]
    # [batch, heads, clusters, window, dim]
    keys = kv_cache.read_rows(cache["keys"], safe, rows[..., None], num_rows)
    values = kv_cache.read_rows(cache["values"], safe, rows[..., None], num_rows)

    def per_cluster(x):
        """[batch, heads, clusters, ...] as [batch, heads x clusters, ...], attend_gathered's heads."""
        return ops.reshape(x, (-1, heads * clusters) + tuple(x.shape[3:]))

    query = ops.repeat(queries, clusters, axis=1)  # [batch, heads x clusters, 1, dim]
    distances = ops.arange(window, dtype="int32") - rank[..., None]
    out = attend_gathered(query, per_cluster(keys), per_cluster(values), per_cluster(distances), 0,
                          keep=per_cluster(kept), **options)
    out = ops.reshape(out, (-1, heads, clusters, out.shape[-1]))
    weight = ops.cast(in_cluster, out.dtype)[..., None]
    total = ops.sum(out * weight, axis=2)
    return (total / cluster_average_divisor(ops.sum(weight, axis=2), count_epsilon))[:, :, None], cache


register_decoder("routing", start, step)
