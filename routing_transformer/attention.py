"""Routing attention (Roy et al., 2021): queries and keys routed to clusters by online k-means, attention
inside each cluster; and the Routing Transformer's attention layer (routing heads + local heads).

The kernel follows the authors' `clustered_local_attention_helper`:
1. With `share_qk` the keys are the queries (the routing heads reuse the query projection).
2. q and k are layer-normalised without gain or bias, so logits are LN(q) . LN(k) with no 1/sqrt(d)
   temperature (`scale=1.0`), as in the original.
3. Balanced routing: every cluster takes the `window` tokens with the largest dot product with its centroid
   (top-k over positions), sorted by position. A token can be in 0, 1 or several clusters.
4. Inside a cluster, attention is causal by position; relative positions are ranks inside the window.
5. Outputs are scattered back and a token's outputs from several clusters are averaged. A token routed to no
   cluster gets a zero output from the routing heads (in the layer, the local heads still serve it).

Balanced top-k membership is decided with the whole sequence, so the original is not strictly causal: a
later token can push an earlier one out of a cluster. `routing="causal"` is this zoo's strictly causal
alternative (nearest-centroid membership, a sliding window over each cluster's members); see
`routing_attention`.

`membership="strided"` is the original's other balanced rule, used by its cluster-strided heads: a cluster
takes every (length // window)-th token of its centroid's ranking, nearest first, instead of the `window`
nearest. The layer also has the original's strided heads (`common.attention.strided_attention`).

Differences from the original, on purpose: the scatter divides by the exact count by default (the original
divides by count + 0.01, shrinking every output by 1/1.01: `count_epsilon=0.01`, which the converter of the
original's checkpoints sets); the causal mask compares positions, which equals the original's rank mask with
`share_qk` and stays exactly causal without it (where the rank mask leaks).

Cost: scores are [length, clusters]; attention is clusters x window^2 = O(length x window) for
clusters x window ~ length. No length x length tensor, and in training no [clusters, window, window] one kept
for the backward pass (`common.attention.local.block_attention` recomputes the weights there).
"""

import random

import keras
import numpy as np
from keras import ops

from common.attention import (checks, get_decoder, get_kernel, local_attention, register_kernel, relative,
                              strided_attention)
from common.attention.local import block_attention
from common.kmeans import OnlineKMeans
from common.layers import SelfAttention, layer_norm
from common.serialization import fresh_initializer
from routing_transformer.routing_scores import (RandomRotation, cluster_scores, hash_bits, num_routing_clusters,
                                                routing_table)


def _check_routing_inputs(q, k, centroids, hash_projection, window, share_qk, require_coverage):
    if share_qk and k is not None and k is not q:
        raise ValueError("share_qk=True routes the keys with the queries (k = q); pass k=None or k=q, or set "
                         "share_qk=False to use different keys.")
    checks.check_positive_int("window", window)
    name, table = routing_table(centroids, hash_projection)
    if len(table.shape) != 3:
        raise ValueError(f"{name} must be [heads, {'clusters' if centroids is not None else 'bits'}, key_dim]; "
                         f"got shape {tuple(table.shape)}.")
    heads, _, dim = table.shape
    if (q.shape[1] is not None and q.shape[1] != heads) or (q.shape[-1] is not None and q.shape[-1] != dim):
        raise ValueError(f"{name} {tuple(table.shape)} do not match q {tuple(q.shape)}: need heads "
                         f"{q.shape[1]} and key_dim {q.shape[-1]}.")
    clusters = num_routing_clusters(centroids, hash_projection)
    length = q.shape[2]
    if require_coverage and length is not None and clusters * window < length:
        raise ValueError(f"clusters x window = {clusters} x {window} = {clusters * window} does not cover the "
                         f"sequence length {length}; raise num_clusters or window.")


def _gather(x, flat_index, shape):
    """Rows of x [b, h, l, d] at flat indices (into b*h*l) -> shape + [d]."""
    rows = ops.take(ops.reshape(x, (-1, x.shape[-1])), ops.reshape(flat_index, (-1,)), axis=0)
    return ops.reshape(rows, tuple(shape) + (x.shape[-1],))


ROUTINGS = ("balanced", "causal")
KEY_UPDATES = ("separate", "joint")
MEMBERSHIPS = ("nearest", "strided")


def routing_attention(q, k, v, *, window, centroids=None, hash_projection=None, causal=True, share_qk=True,
                      routing="balanced", membership="nearest", scale=1.0, relative_keys=None, relative_values=None,
                      dropout_rate=0.0, seed=None, require_coverage=False, keep_weights=False, count_epsilon=0.0):
    """Attention inside k-means clusters (or, with `hash_projection`, inside hash buckets).

    Args:
      q: [batch, heads, length, key_dim]. k: the same, or None with `share_qk`. v: [batch, heads, length,
        value_dim].
      centroids: [heads, clusters, key_dim]; they receive no gradient.
      hash_projection: [heads, bits, key_dim], in place of centroids: routing by random-projection hashing
        into 2**bits buckets, the original's `hash_items` baseline (`routing_transformer.routing_scores`).
      window: tokens per cluster (the original's `sparsity_cluster_attention_window`). A sequence shorter
        than `window` puts every token in every cluster, as the original's fast decoding does (its blanked
        future positions rank last), so that incremental decoding has a definition for short prefixes.
      causal: a query sees only keys at positions <= its own.
      share_qk: keys are the queries (needed for exact balance of queries and keys; the original default).
      routing: "balanced", the original: each cluster takes its `window` nearest tokens by top-k over the
        whole sequence. Membership is decided with all tokens, so a later token can push an earlier one out
        of a cluster: with `causal` the attention inside clusters is causal, but the model is not strictly
        causal (the authors' code has the same leak). "causal": each token joins its nearest centroid's
        cluster and attends to itself and the `window - 1` previous members of that cluster (and the
        `window - 1` next ones when not causal); membership depends only on the token itself, so the model
        is strictly causal. Needs `share_qk`.
      membership: with balanced routing, which `window` tokens a cluster takes from its centroid's ranking of
        the sequence (nearest first): "nearest", the first `window` (the original's routing heads); "strided",
        every (length // window)-th of the ranking, nearest included (the original's cluster-strided heads,
        `sparsity_cluster_strided_num_heads`: "strided attention in the cluster space").
      scale: logits multiplier after the normalisation; 1.0 in the original.
      relative_keys, relative_values: Shaw tables [2m + 1, dim] over rank distances inside a cluster.
      dropout_rate, seed: dropout on the attention probabilities.
      require_coverage: raise unless clusters x window >= length.
      keep_weights: keep the attention weights inside clusters for the backward pass instead of recomputing
        them (`common.attention.local.block_attention`): faster, for more memory.
      count_epsilon: a token's outputs from its clusters are summed and divided by its number of clusters
        plus this; 0 (the default) averages them exactly, 0.01 is the original's `scatter_cluster_items`.

    Returns:
      (out [batch, heads, length, value_dim], aux) where aux holds the normalised `queries` and `keys`
      [batch, heads, length, key_dim] and their nearest-centroid `query_assignment` / `key_assignment`
      [batch, heads, length], for the k-means update and the commitment loss.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}; choose one of {ROUTINGS}.")
    if routing == "causal" and not share_qk:
        raise ValueError("routing='causal' needs share_qk=True (queries and keys share one cluster order).")
    check_membership(membership, routing)
    _check_routing_inputs(q, k, centroids, hash_projection, window, share_qk, require_coverage)
    k = q if share_qk else k
    checks.check_qkv(q, k, v)
    checks.check_self_attention(q, k)
    relative.check_relative_tables(relative_keys, relative_values, q.shape[-1], v.shape[-1])
    queries = layer_norm(q)
    keys = queries if share_qk else layer_norm(k)
    q_scores = cluster_scores(queries, centroids, hash_projection)
    k_scores = q_scores if share_qk else cluster_scores(keys, centroids, hash_projection)
    aux = {
        "queries": queries,
        "keys": keys,
        "query_assignment": ops.argmax(q_scores, axis=2),
        "key_assignment": ops.argmax(k_scores, axis=2),
    }
    options = dict(window=window, causal=causal, scale=scale, relative_keys=relative_keys,
                   relative_values=relative_values, dropout_rate=dropout_rate, seed=seed, keep_weights=keep_weights,
                   count_epsilon=count_epsilon)
    if routing == "causal":
        return _sorted_cluster_attention(queries, v, aux["query_assignment"], **options), aux
    return _balanced_cluster_attention(queries, keys, v, q_scores, k_scores, share_qk, membership=membership,
                                       **options), aux


def check_membership(membership, routing):
    if membership not in MEMBERSHIPS:
        raise ValueError(f"unknown membership {membership!r}; choose one of {MEMBERSHIPS}.")
    if membership == "strided" and routing != "balanced":
        raise ValueError("membership='strided' picks from each centroid's ranking of the whole sequence: it needs "
                         "routing='balanced'.")


def cluster_members(scores, window, membership, slots=None):
    """Positions of the `window` members of every cluster, sorted: [batch, heads, clusters, window], from the
    scores [batch, heads, clusters, positions] (larger is nearer). "strided" takes every (slots // window)-th
    of each ranking, `slots` being the sequence's length (default: the scores' last axis)."""
    scores = ops.stop_gradient(scores)
    if membership == "strided":
        slots = ops.shape(scores)[-1] if slots is None else slots
        ranking = ops.argsort(-scores, axis=-1)
        members = ops.take(ranking, ops.arange(window) * ops.maximum(slots // window, 1), axis=-1)
    else:
        _, members = ops.top_k(scores, window, sorted=False)
    return ops.sort(ops.cast(members, "int32"), axis=-1)


def _flat_offsets(x):
    """Offsets that turn per-sequence positions of x [b, h, length, ...] into rows of the flattened x."""
    batch, heads, length = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
    return ((ops.arange(batch)[:, None] * heads + ops.arange(heads)[None, :]) * length)[:, :, None]


def cluster_average_divisor(count, count_epsilon):
    """What a token's summed outputs over its `count` clusters are divided by: count + `count_epsilon` (the
    original's, 0.01), or with 0 the exact count, at least 1 (a token in no cluster keeps its zero)."""
    return count + count_epsilon if count_epsilon else ops.maximum(count, 1)


def _scatter_mean(values, rows, like, count_epsilon):
    """Scatters values [b, h, ..., d] to the flat rows of `like` [b, h, length, d] and averages duplicates
    (divides by their count + `count_epsilon`); rows that receive nothing are zero."""
    shape = ops.shape(like)
    num_rows = shape[0] * shape[1] * shape[2]
    rows = ops.reshape(rows, (-1,))
    total = ops.segment_sum(ops.reshape(values, (-1, values.shape[-1])), rows, num_segments=num_rows)
    count = ops.segment_sum(ops.ones_like(rows, dtype=values.dtype), rows, num_segments=num_rows)
    out = total / cluster_average_divisor(count, count_epsilon)[:, None]
    return ops.reshape(out, (shape[0], shape[1], shape[2], values.shape[-1]))


def _balanced_cluster_attention(queries, keys, v, q_scores, k_scores, share_qk, *, window, causal, scale,
                                relative_keys, relative_values, dropout_rate, seed, keep_weights, count_epsilon,
                                membership="nearest"):
    """The original's routing: `window` tokens of each cluster's ranking, attended inside the cluster."""
    batch, heads = ops.shape(queries)[0], ops.shape(queries)[1]
    clusters = q_scores.shape[2]
    length = ops.shape(queries)[2]
    padded = queries.shape[2] is None or queries.shape[2] < window
    if padded:
        # Fewer tokens than `window`: every cluster holds them all. Zero rows up to `window` keep the shapes
        # static; they sort after every token, so they are masked as keys, and their rows are cut.
        extra = ops.maximum(window - length, 0)
        padded_queries, v = (ops.pad(x, [[0, 0], [0, 0], [0, extra], [0, 0]]) for x in (queries, v))
        keys = padded_queries if share_qk else ops.pad(keys, [[0, 0], [0, 0], [0, extra], [0, 0]])
        queries = padded_queries
        q_scores = ops.pad(q_scores, [[0, 0], [0, 0], [0, 0], [0, extra]])
        k_scores = q_scores if share_qk else ops.pad(k_scores, [[0, 0], [0, 0], [0, 0], [0, extra]])

    q_members = cluster_members(q_scores, window, membership)
    k_members = q_members if share_qk else cluster_members(k_scores, window, membership)
    offsets = _flat_offsets(queries)[..., None]
    cluster_shape = (batch, heads, clusters, window)
    q_rows, k_rows = q_members + offsets, k_members + offsets
    q_c = _gather(queries, q_rows, cluster_shape)
    k_c = q_c if share_qk else _gather(keys, k_rows, cluster_shape)
    v_c = _gather(v, k_rows, cluster_shape)

    # Relative positions are ranks inside the cluster: key rank j is at distance j - i from query rank i.
    # With shared members (distinct and sorted), position j <= position i is rank j <= rank i: the block's own
    # causal mask, one [window, window] for every cluster.
    rank_causal = causal and share_qk
    keep = None
    if causal and not share_qk:
        keep = k_members[:, :, :, None, :] <= q_members[:, :, :, :, None]
    elif padded and not causal:
        keep = k_members[:, :, :, None, :] < length
    out_c = block_attention(q_c, k_c, v_c, keep, scale=scale, causal=rank_causal, relative_keys=relative_keys,
                            relative_values=relative_values, dropout_rate=dropout_rate, seed=seed,
                            keep_weights=keep_weights)
    out = _scatter_mean(out_c, q_rows, v, count_epsilon)
    return out[:, :, :length] if padded else out


def _sorted_cluster_attention(queries, v, assignment, *, window, causal, scale, relative_keys,
                              relative_values, dropout_rate, seed, keep_weights, count_epsilon):
    """Causal routing: sort tokens by (cluster, position); a sliding window of `window` members over the
    sorted sequence, restricted to the same cluster, is then local attention with segment ids."""
    length = ops.shape(queries)[2]
    assignment = ops.cast(assignment, "int32")
    order = ops.cast(ops.argsort(assignment * length + ops.arange(length)[None, None, :], axis=-1), "int32")
    rows = order + _flat_offsets(queries)
    sorted_shape = tuple(ops.shape(order))
    sorted_out = local_attention(
        _gather(queries, rows, sorted_shape), _gather(queries, rows, sorted_shape), _gather(v, rows, sorted_shape),
        block_size=window, look_back=1, look_ahead=None if not causal else 0, causal=causal, scale=scale,
        relative_keys=relative_keys, relative_values=relative_values,
        segment_ids=ops.take_along_axis(assignment, order, axis=-1), max_distance=window,
        dropout_rate=dropout_rate, seed=seed, keep_weights=keep_weights)
    return _scatter_mean(sorted_out, rows, v, count_epsilon)


# The original's cluster-strided heads call its clustering helper with the helper's defaults, not the hparams:
# keys of their own (share_qk off, so queries and keys make one EMA step each) and EMA decay 0.99.
CLUSTER_STRIDED_DECAY = 0.99


@keras.saving.register_keras_serializable(package="routing_transformer")
class RoutingAttention(SelfAttention):
    """The Routing Transformer's self-attention: routing heads, cluster-strided heads, strided heads, then local
    heads, in the order the original splits and concatenates them.

    After the heads, one d_head x d_head matrix shared by all heads is applied to each head (`head_projection`,
    the original's per-head dense), then the output projection. Projections have no biases.

    Args:
      local_heads, routing_heads: heads of each kind (either may be 0).
      strided_heads: heads that attend to every `block_size`-th position before them
        (`common.attention.strided_attention`; the original's `sparsity_strided_num_heads`, without relative
        positions as its `sparsity_strided_relative` default).
      cluster_strided_heads: routing heads whose clusters take every (length // window)-th token of the
        centroid's ranking instead of the `window` nearest (the original's `sparsity_cluster_strided_num_heads`,
        at most `routing_heads`, balanced routing only). They have their own k-means and, as the original's
        helper defaults give them, their own keys (two EMA steps per batch, decay `CLUSTER_STRIDED_DECAY`) and
        their own relative tables when `routing_relative`.
      key_dim, value_dim: per-head widths.
      num_clusters, window: k-means clusters and tokens per cluster of the routing heads.
      block_size, look_back: the local heads' query block and previous blocks seen (original: query_shape,
        memory_flange / query_shape); `block_size` is also the strided heads' stride.
      share_qk: routing heads use the queries as keys.
      routing: "balanced" (the original's top-k membership) or "causal" (strictly causal); see
        `routing_attention`.
      max_relative_position: clipping distance of the relative tables; 0 for none.
      local_relative, routing_relative: which heads use relative positions (separate tables).
      decay, beta: k-means EMA decay and commitment-loss weight.
      ema: centroids move by the k-means EMA (the original's default); False trains them by gradient with the
        original's loss `q_loss + beta * e_loss` (`common.kmeans.OnlineKMeans`).
      hash_items: route by random-projection hashing into `num_clusters` buckets (a power of two) instead of
        k-means: the original's `hash_items` baseline; no centroids, no clustering loss.
      key_update: with share_qk=False, how keys update the centroids: "separate" (the original, which calls
        `cluster_items` for the queries and for the keys: two EMA steps per batch, queries then keys) or
        "joint" (one EMA step from the queries and keys together).
      require_coverage: raise unless num_clusters x window >= length.
      head_projection: apply the original's shared per-head d_head x d_head matrix.
      keep_weights: the local and routing heads keep their attention weights for the backward pass instead of
        recomputing them there (`common.attention.local.block_attention`): about 20% faster attention, for
        a [batch, heads, length, keys] float32 tensor per layer; for short contexts.
      count_epsilon: added to a token's number of clusters when the routing and cluster-strided heads average
        its outputs over them: 0 averages exactly, 0.01 is the original's (see `routing_attention`).
    """

    derived_arguments = ("num_heads", "kernel", "kernel_options", "use_bias", "max_relative_position")

    def __init__(self, local_heads, routing_heads, key_dim, num_clusters=1, window=1, value_dim=None,
                 block_size=256, look_back=1, share_qk=True, routing="balanced", causal=True,
                 max_relative_position=0,
                 local_relative=True, routing_relative=True, decay=0.999, beta=1e-4, key_update="separate",
                 ema=True, hash_items=False, require_coverage=False, head_projection=True, strided_heads=0,
                 cluster_strided_heads=0, keep_weights=False, count_epsilon=0.0, dropout=0.0,
                 kernel_initializer="glorot_uniform",
                 output_initializer=None, output_dim=None, seed=None, **kwargs):
        for name, value in (("local_heads", local_heads), ("routing_heads", routing_heads),
                            ("strided_heads", strided_heads), ("cluster_strided_heads", cluster_strided_heads)):
            checks.check_positive_int(name, value, minimum=0)
        super().__init__(**dict(
            kwargs, num_heads=local_heads + routing_heads + cluster_strided_heads + strided_heads, key_dim=key_dim,
            value_dim=value_dim, kernel="local",
            kernel_options={"block_size": block_size, "look_back": look_back, "keep_weights": keep_weights},
            causal=causal, use_bias=False, max_relative_position=max_relative_position if local_relative else 0,
            dropout=dropout, kernel_initializer=kernel_initializer, output_initializer=output_initializer,
            output_dim=output_dim, seed=seed))
        if routing not in ROUTINGS:
            raise ValueError(f"unknown routing {routing!r}; choose one of {ROUTINGS}.")
        if key_update not in KEY_UPDATES:
            raise ValueError(f"unknown key_update {key_update!r}; choose one of {KEY_UPDATES}.")
        if cluster_strided_heads > routing_heads:
            raise ValueError(f"cluster_strided_heads ({cluster_strided_heads}) must be at most routing_heads "
                             f"({routing_heads}), as in the original.")
        if cluster_strided_heads:
            check_membership("strided", routing)
        if routing_heads:
            checks.check_positive_int("num_clusters", num_clusters)
            checks.check_positive_int("window", window)
            if hash_items:
                hash_bits(num_clusters)
        self.local_heads = local_heads
        self.routing_heads = routing_heads
        self.keep_weights = keep_weights
        self.count_epsilon = count_epsilon
        self.strided_heads = strided_heads
        self.cluster_strided_heads = cluster_strided_heads
        self.num_clusters = num_clusters
        self.window = window
        self.block_size = block_size
        self.look_back = look_back
        self.share_qk = share_qk
        self.routing = routing
        self.routing_max_relative_position = max_relative_position
        self.local_relative = local_relative
        self.routing_relative = routing_relative
        self.decay = decay
        self.beta = beta
        self.key_update = key_update
        self.ema = ema
        self.hash_items = hash_items
        self.require_coverage = require_coverage
        self.head_projection = head_projection
        self.hash_seed = None  # the projection's seed: a stateless draw wherever it runs, as k-means' centroids
        if routing_heads and hash_items:
            self.hash_seed = seed if seed is not None else random.randrange(2**31)
        self.kmeans = OnlineKMeans(routing_heads, num_clusters, decay=decay, beta=beta, ema=ema, seed=seed,
                                   name="kmeans") if routing_heads and not hash_items else None
        self.cluster_strided_kmeans = OnlineKMeans(
            cluster_strided_heads, num_clusters, decay=CLUSTER_STRIDED_DECAY, beta=beta, ema=ema,
            seed=None if seed is None else seed + 1, name="cluster_strided_kmeans") if cluster_strided_heads else None

    def build(self, input_shape):
        super().build(input_shape)
        self.routing_relative_keys, self.routing_relative_values = self._relative_tables("routing", self.routing_heads)
        self.cluster_strided_relative_keys, self.cluster_strided_relative_values = self._relative_tables(
            "cluster_strided", self.cluster_strided_heads)
        for kmeans, heads in ((self.kmeans, self.routing_heads),
                              (self.cluster_strided_kmeans, self.cluster_strided_heads)):
            if kmeans is not None:
                kmeans.build((None, heads, None, self.key_dim))
        self.hash_projection = None
        if self.routing_heads and self.hash_items:
            self.hash_projection = self.add_weight(
                name="hash_projection", shape=(self.routing_heads, hash_bits(self.num_clusters), self.key_dim),
                initializer=RandomRotation(self.hash_seed), trainable=False, autocast=False)
        self.head_kernel = None
        if self.head_projection:
            self.head_kernel = self.add_weight(name="head_kernel", shape=(self.value_dim, self.value_dim),
                                               initializer=fresh_initializer(self.kernel_initializer))

    def _relative_tables(self, kind, heads):
        """(keys, values) Shaw tables of one kind of routing heads, or (None, None)."""
        if not (heads and self.routing_relative and self.routing_max_relative_position):
            return None, None
        rows = 2 * self.routing_max_relative_position + 1
        return tuple(self.add_weight(name=f"{kind}_relative_{part}", shape=(rows, dim),
                                     initializer=fresh_initializer(self.kernel_initializer))
                     for part, dim in (("keys", self.key_dim), ("values", self.value_dim)))

    @property
    def head_groups(self):
        """(kind, heads) of every kind present, in the original's order."""
        groups = (("routing", self.routing_heads), ("cluster_strided", self.cluster_strided_heads),
                  ("strided", self.strided_heads), ("local", self.local_heads))
        return tuple((kind, heads) for kind, heads in groups if heads)

    @property
    def key_heads(self):
        """With share_qk the routing heads use their queries as keys: they get no key weights."""
        return self.num_heads - (self.routing_heads if self.share_qk else 0)

    def split_heads(self, q, k, v):
        """{kind: (q, k, v)} of each kind of heads (see `head_groups`); with share_qk the routing heads' k is None
        and k holds only the other heads (see key_heads)."""
        kinds, sizes = zip(*self.head_groups)

        def split(x, sizes):
            # One split per tensor: its gradient is a concatenation, where slices would each scatter into a
            # zero tensor of all heads.
            return ops.split(x, [int(n) for n in np.cumsum(sizes[:-1])], axis=1) if len(sizes) > 1 else [x]

        qs, vs = split(q, sizes), split(v, sizes)
        if self.share_qk and self.routing_heads:
            ks = [None] + (split(k, sizes[1:]) if len(sizes) > 1 else [])
        else:
            ks = split(k, sizes)
        return {kind: parts for kind, parts in zip(kinds, zip(qs, ks, vs))}

    def mix_heads(self, outputs):
        """Concatenates the heads' outputs (in `head_groups` order) and applies the shared per-head matrix."""
        heads = outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=1)
        if self.head_kernel is not None:
            heads = ops.einsum("bhld,de->bhle", heads, self.head_kernel)
        return heads

    def routing_options(self):
        """The routing heads' kernel and decoder options."""
        routes = (dict(centroids=self.kmeans.current_centroids()) if self.kmeans is not None else
                  dict(hash_projection=self.hash_projection))
        return dict(routes, window=self.window, causal=self.causal,
                    share_qk=self.share_qk, routing=self.routing, relative_keys=self.routing_relative_keys,
                    relative_values=self.routing_relative_values, require_coverage=self.require_coverage,
                    count_epsilon=self.count_epsilon)

    def cluster_strided_options(self):
        """The cluster-strided heads' kernel and decoder options (routing kernel, strided membership)."""
        return dict(centroids=self.cluster_strided_kmeans.current_centroids(), window=self.window,
                    causal=self.causal, share_qk=False, routing="balanced", membership="strided",
                    relative_keys=self.cluster_strided_relative_keys,
                    relative_values=self.cluster_strided_relative_values, require_coverage=self.require_coverage,
                    count_epsilon=self.count_epsilon)

    def strided_options(self):
        return dict(stride=self.block_size, causal=self.causal)

    def attend_heads(self, q, k, v, training=None):
        """The mixed heads and {kind: routing kernel's aux} of the routed kinds; no loss, no k-means update."""
        dropout = dict(dropout_rate=self.dropout, seed=self.seed_generator) if training and self.dropout else {}
        outputs, auxes = [], {}
        for kind, (q_kind, k_kind, v_kind) in self.split_heads(q, k, v).items():
            if kind in ("routing", "cluster_strided"):
                options = self.routing_options() if kind == "routing" else self.cluster_strided_options()
                out, auxes[kind] = routing_attention(q_kind, k_kind, v_kind, **options, **dropout,
                                                     keep_weights=self.keep_weights)
            elif kind == "strided":
                out = strided_attention(q_kind, k_kind, v_kind, **self.strided_options(), **dropout)
            else:
                out = get_kernel("local")(q_kind, k_kind, v_kind, **self.kernel_arguments(training))
            outputs.append(out)
        return self.mix_heads(outputs), auxes

    def attend(self, q, k, v, training=None):
        heads, auxes = self.attend_heads(q, k, v, training)
        for kind, kmeans, share_qk, key_update in (
                ("routing", self.kmeans, self.share_qk, self.key_update),
                ("cluster_strided", self.cluster_strided_kmeans, False, "separate")):
            if kind not in auxes or kmeans is None:
                continue
            aux = auxes[kind]
            # As the original: one term for the queries and one for the keys (twice the same with share_qk,
            # computed once).
            query_loss = kmeans.commitment_loss(aux["queries"], aux["query_assignment"])
            key_loss = query_loss if share_qk else kmeans.commitment_loss(aux["keys"], aux["key_assignment"])
            self.add_loss(query_loss + key_loss)
            if training:
                update_centroids(kmeans, aux, share_qk, key_update)
        return heads

    def summaries(self):
        """The largest and smallest EMA cluster fractions of the routing heads' k-means (none with hashing)."""
        if self.kmeans is None:
            return {}
        counts = ops.convert_to_tensor(self.kmeans.ema_count)
        fractions = counts / ops.maximum(ops.sum(counts, axis=-1, keepdims=True), 1e-9)
        return {"routing/largest_cluster_fraction": ops.max(fractions),
                "routing/smallest_cluster_fraction": ops.min(fractions)}

    # Incremental decoding: routing and cluster-strided heads use the "routing" decoder
    # (`routing_transformer.decoding`), strided and local heads common's; centroids never move (no k-means
    # update outside training).

    def attend_prompt(self, x, q, k, v):
        """The prompt's heads without the commitment loss, which outside `__call__` would stay in `self.losses`
        (a dead symbolic tensor once traced)."""
        return self.attend_heads(q, k, v)[0]

    def _decoders(self):
        """{kind: (decoder name, its options)}."""
        return {"routing": ("routing", self.routing_options),
                "cluster_strided": ("routing", self.cluster_strided_options),
                "strided": ("strided", self.strided_options), "local": ("local", self.decoding_arguments)}

    def start_cache(self, x, q, k, v, cache_length):
        decoders = self._decoders()
        cache = {}
        for kind, heads in self.split_heads(q, k, v).items():
            name, options = decoders[kind]
            start, _ = get_decoder(name)
            cache[kind] = start(x, *heads, cache_length, **options())
        return cache

    def attend_next(self, x, q, k, v, cache, position):
        decoders = self._decoders()
        outputs, new_cache = [], {}
        for kind, heads in self.split_heads(q, k, v).items():
            name, options = decoders[kind]
            _, step = get_decoder(name)
            out, new_cache[kind] = step(x, *heads, cache[kind], position, **options())
            outputs.append(out)
        return self.mix_heads(outputs), new_cache

    def get_config(self):
        config = super().get_config()
        config.update(local_heads=self.local_heads, routing_heads=self.routing_heads,
                      strided_heads=self.strided_heads, cluster_strided_heads=self.cluster_strided_heads,
                      num_clusters=self.num_clusters, window=self.window, block_size=self.block_size,
                      look_back=self.look_back, share_qk=self.share_qk, routing=self.routing,
                      max_relative_position=self.routing_max_relative_position,
                      local_relative=self.local_relative, routing_relative=self.routing_relative,
                      decay=self.decay, beta=self.beta, key_update=self.key_update, ema=self.ema,
                      hash_items=self.hash_items, require_coverage=self.require_coverage,
                      head_projection=self.head_projection, keep_weights=self.keep_weights,
                      count_epsilon=self.count_epsilon)
        return config


def update_centroids(kmeans, aux, share_qk, key_update):
    """The k-means step(s) of a training batch: from the queries, and with share_qk=False from the keys too
    (see `key_update`). Assignments are those the routing used (the centroids before this batch)."""
    queries, query_assignment = aux["queries"], aux["query_assignment"]
    if share_qk:
        kmeans.update(queries, query_assignment)
    elif key_update == "joint":
        kmeans.update(ops.concatenate([queries, aux["keys"]], axis=2),
                      ops.concatenate([query_assignment, aux["key_assignment"]], axis=2))
    else:
        kmeans.update(queries, query_assignment)
        kmeans.update(aux["keys"], aux["key_assignment"])


def _routing_kernel(q, k, v, **options):
    """`routing_attention` without its auxiliary outputs, for the kernel registry and effective matrices."""
    return routing_attention(q, k, v, **options)[0]


register_kernel("routing", _routing_kernel)
