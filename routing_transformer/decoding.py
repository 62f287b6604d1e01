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
every step, a step reads the cached scores of every position against the centroids (centroids do not move at
inference), takes each cluster's top `window`, and attends the new token, in every cluster it belongs to, to
that cluster's members (ranks and relative distances as in the full kernel), averaging over those clusters;
a token in no cluster gets zeros. The cache keeps every position's normalised key, value and scores (the
query scores too without `share_qk`). Cost per token: O(position x clusters) to read the scores and pick the
members, which membership over the whole prefix needs, plus O(m x window x dim) attention for the m clusters
holding the new token; never a position x position tensor.

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

Caches. Positions differ per (batch, head) row in routing, so routed entries are kept in TensorArrays with one
slot per (position, row), slot = position x rows + row; a step gathers exactly the entries it reads.
`common.kv_cache`'s slots hold every row at one position, and gathering the union of the rows' positions there
would cost (batch x heads)^2 x window entries. The scores, read at every position for every row, use
`common.kv_cache`. TensorFlow-only (TensorArray caches): the package registers this module by name and it is
imported on the first routing decode.
"""

import tensorflow as tf

from common import kv_cache
from common.attention.decoding import attend_gathered, register_decoder, require_causal
from common.layers import layer_norm
from routing_transformer.routing_scores import cluster_scores, num_routing_clusters


def _rows_from_prompt(x, cache_length):
    """A per-row cache of `cache_length` positions holding x [batch, heads, n, dim] at positions 0 .. n - 1."""
    rows = tf.shape(x)[0] * tf.shape(x)[1]
    cache = tf.TensorArray(x.dtype, size=cache_length * rows, element_shape=tf.TensorShape(x.shape[3:]),
                           clear_after_read=False)
    flat = tf.reshape(tf.transpose(x, [2, 0, 1, 3]), [-1, x.shape[3]])
    return cache.scatter(tf.range(tf.shape(flat)[0]), flat)


def _write_rows(cache, position, x):
    """Stores x [batch, heads, dim], every row's entry at `position`."""
    flat = tf.reshape(x, [-1, x.shape[-1]])
    rows = tf.shape(flat)[0]
    return cache.scatter(position * rows + tf.range(rows), flat)


def _read_rows(cache, positions, rows, num_rows):
    """The entries at positions [..., k] (all written) of rows [...]: [..., k, dim]."""
    index = positions * num_rows + rows[..., None]
    entries = cache.gather(tf.reshape(index, [-1]))
    return tf.reshape(entries, tf.concat([tf.shape(index), [cache.element_shape[-1]]], axis=0))


def _check(routing, share_qk, causal):
    require_causal(causal, "routing")
    if routing not in ("balanced", "causal"):
        raise ValueError(f"unknown routing {routing!r}; choose 'balanced' or 'causal'.")
    if routing == "causal" and not share_qk:
        raise ValueError("routing='causal' needs share_qk=True (queries and keys share one cluster order).")


def start(x, q, k, v, cache_length, *, window, routing, share_qk, centroids=None, hash_projection=None, causal=True,
          require_coverage=False, **unused_options):
    """The routing heads' cache of a prompt: q, k (None with share_qk) and v [batch, heads, n, dim].

    With `require_coverage`, decoding up to `cache_length` must keep clusters x window >= the length, as the full
    kernel requires (InvalidArgumentError otherwise).
    """
    _check(routing, share_qk, causal)
    clusters = num_routing_clusters(centroids, hash_projection)
    if require_coverage:
        tf.debugging.assert_less_equal(
            tf.cast(cache_length, tf.int32), clusters * window,
            message=f"clusters x window = {clusters} x {window} does not cover the decoding length; raise "
                    f"num_clusters or window")
    queries = layer_norm(q)
    keys = queries if share_qk else layer_norm(k)
    cache = {"keys": _rows_from_prompt(keys, cache_length), "values": _rows_from_prompt(v, cache_length)}
    query_scores = cluster_scores(queries, centroids, hash_projection)
    if routing == "causal":
        assignment = tf.argmax(query_scores, axis=2, output_type=tf.int32)
        cache.update(_prompt_windows(assignment, clusters, window, cache_length))
        return cache
    cache["key_scores"] = kv_cache.from_prompt(
        tf.transpose(query_scores if share_qk else cluster_scores(keys, centroids, hash_projection), [0, 1, 3, 2]),
        cache_length)
    if not share_qk:
        cache["query_scores"] = kv_cache.from_prompt(tf.transpose(query_scores, [0, 1, 3, 2]), cache_length)
    return cache


def _prompt_windows(assignment, clusters, window, cache_length):
    """Causal routing's state after the prompt: every position's window and each cluster's latest member.

    assignment: int [batch, heads, n], the nearest centroid of every position. Sorted by (cluster, position)
    as the full kernel sorts, a position's window is the `window` sorted slots ending at its own, restricted to
    its cluster.
    """
    length = tf.shape(assignment)[2]
    positions = tf.range(length)
    order = tf.argsort(assignment * length + positions, axis=-1)
    sorted_clusters = tf.gather(assignment, order, batch_dims=2)
    slots = positions[:, None] - (window - 1) + tf.range(window)[None, :]
    index = tf.broadcast_to(tf.maximum(slots, 0), tf.concat([tf.shape(order), [window]], axis=0))
    same = tf.logical_and(slots >= 0, tf.gather(sorted_clusters, index, batch_dims=2) == sorted_clusters[..., None])
    sorted_windows = tf.where(same, tf.gather(order, index, batch_dims=2), -1)
    windows = tf.gather(sorted_windows, tf.argsort(order, axis=-1), batch_dims=2)
    latest = tf.reduce_max(tf.where(assignment[..., None] == tf.range(clusters), positions[:, None], -1), axis=2)
    return {"windows": _rows_from_prompt(windows, cache_length), "latest": latest}


def step(x, q, k, v, cache, position, *, window, routing, share_qk, centroids=None, hash_projection=None, causal=True,
         scale=1.0, relative_keys=None, relative_values=None, **unused_options):
    """The routing heads at `position`: q, k (None with share_qk), v [batch, heads, 1, dim] of the new token.

    Returns (out [batch, heads, 1, value_dim], cache); see the module docstring for what it equals and costs.
    """
    _check(routing, share_qk, causal)
    batch, heads = tf.shape(q)[0], tf.shape(q)[1]
    num_rows = batch * heads
    rows = tf.reshape(tf.range(num_rows), [batch, heads])
    queries = layer_norm(q)
    keys = queries if share_qk else layer_norm(k)
    cache = dict(cache, keys=_write_rows(cache["keys"], position, keys[:, :, 0]),
                 values=_write_rows(cache["values"], position, v[:, :, 0]))
    query_scores = cluster_scores(queries, centroids, hash_projection)[..., 0]
    options = dict(scale=scale, relative_keys=relative_keys, relative_values=relative_values)
    if routing == "causal":
        return _causal_step(queries, query_scores, cache, position, rows, num_rows, window, options)
    cache["key_scores"] = kv_cache.write(cache["key_scores"], position,
                                         (query_scores if share_qk else
                                          cluster_scores(keys, centroids, hash_projection)[..., 0])[:, :, None])
    if not share_qk:
        cache["query_scores"] = kv_cache.write(cache["query_scores"], position, query_scores[:, :, None])
    return _balanced_step(queries, cache, position, rows, num_rows, window, share_qk, options)


def _causal_step(queries, scores, cache, position, rows, num_rows, window, options):
    """The new token joins its nearest cluster and attends to that cluster's latest `window` members."""
    cluster = tf.argmax(scores, axis=2, output_type=tf.int32)
    latest = cache["latest"]
    previous = tf.gather(latest, cluster[..., None], batch_dims=2)[..., 0]
    earlier = _read_rows(cache["windows"], tf.maximum(previous, 0)[..., None], rows, num_rows)[..., 0, :]
    earlier = tf.where(previous[..., None] >= 0, earlier, -1)
    members = tf.concat([earlier[..., 1:], tf.broadcast_to(position, tf.shape(earlier[..., :1]))], axis=-1)
    cache = dict(cache, windows=_write_rows(cache["windows"], position, members),
                 latest=tf.where(tf.range(latest.shape[-1]) == cluster[..., None], position, latest))
    safe = tf.maximum(members, 0)
    keys = _read_rows(cache["keys"], safe, rows, num_rows)
    values = _read_rows(cache["values"], safe, rows, num_rows)
    out = attend_gathered(queries, keys, values, tf.range(window) - (window - 1), 0, keep=members >= 0, **options)
    return out, cache


def _balanced_step(queries, cache, position, rows, num_rows, window, share_qk, options):
    """Top-`window` membership over the cached scores of 0 .. position; the new token attends inside every
    cluster it is a query member of, to that cluster's key members, and the results are averaged."""
    prefix = tf.range(position + 1)
    size = tf.minimum(window, position + 1)  # A shorter prefix: every cluster holds every token.

    def members(name):
        """Sorted positions of every cluster's members [batch, heads, clusters, size]."""
        scores = tf.transpose(kv_cache.read(cache[name], prefix), [0, 1, 3, 2])
        return tf.sort(tf.math.top_k(scores, size, sorted=False).indices, axis=-1)

    key_members = members("key_scores")
    query_members = key_members if share_qk else members("query_scores")
    # The new token is the latest position: when it is a query member, its rank is the number of members
    # before it, and every key member is at or before it (so causality masks nothing).
    chosen = tf.where(tf.reduce_any(query_members == position, axis=-1))
    rank = tf.gather_nd(tf.reduce_sum(tf.cast(query_members < position, tf.int32), axis=-1), chosen)
    row = tf.gather_nd(rows, chosen[:, :2])
    mates = tf.gather_nd(key_members, chosen)
    keys = _read_rows(cache["keys"], mates, row, num_rows)[:, None]
    values = _read_rows(cache["values"], mates, row, num_rows)[:, None]
    query = tf.gather(tf.reshape(queries, [num_rows, queries.shape[-1]]), row)[:, None, None]
    out = attend_gathered(query, keys, values, tf.range(size)[None, None, :] - rank[:, None, None], 0,
                          **options)[:, 0, 0]
    total = tf.math.unsorted_segment_sum(out, row, num_rows)
    count = tf.math.unsorted_segment_sum(tf.ones_like(row, out.dtype), row, num_rows)
    out = total / tf.maximum(count, 1)[:, None]
    return tf.reshape(out, [tf.shape(queries)[0], tf.shape(queries)[1], 1, out.shape[-1]]), cache


register_decoder("routing", start, step)
