"""How routing scores tokens against its clusters: k-means centroids, or the `hash_items` baseline's buckets.

k-means (the Routing Transformer): a token's score for cluster c is its dot product with centroid c; its
cluster is the largest, and balanced routing gives every cluster the `window` tokens of largest score.

Hashing (the original's `hash_items`, its `*_hash*` configs): locality-sensitive hashing by a fixed random
projection P [heads, bits, dim] with orthonormal rows per head; a token's bucket is the bit pattern of
sign(x . P), one of 2**bits clusters. Its scores are the bucket's one-hot, as in the original, so balanced
routing's top-k gives a cluster its bucket's members first (by position, the earliest) and fills any room
left with tokens of other buckets.

Both kernels (`routing_transformer.attention`) and decoders (`routing_transformer.decoding`) score with
`cluster_scores`, so they route alike.
"""

import math

import keras
from keras import ops


def routing_table(centroids=None, hash_projection=None):
    """(name, table) of the one way to route given: ("centroids", centroids) or ("hash_projection", ...);
    ValueError unless exactly one is given."""
    if (centroids is None) == (hash_projection is None):
        raise ValueError("give exactly one of centroids (k-means routing) and hash_projection (hashing).")
    return ("centroids", centroids) if centroids is not None else ("hash_projection", hash_projection)


def cluster_scores(x, centroids=None, hash_projection=None):
    """Scores of normalised x [batch, heads, length, dim] for every cluster, [batch, heads, clusters, length]:
    dot products with `centroids` [heads, clusters, dim], or with `hash_projection` [heads, bits, dim] the
    one-hot of x's bucket. No gradient reaches the centroids or the projection."""
    routing_table(centroids, hash_projection)
    if centroids is not None:
        return ops.einsum("bhld,hcd->bhcl", x, ops.stop_gradient(ops.cast(centroids, x.dtype)))
    buckets = hash_buckets(x, hash_projection)
    one_hot = ops.one_hot(buckets, 2 ** hash_projection.shape[1], dtype=x.dtype)  # [b, h, l, clusters]
    return ops.transpose(one_hot, (0, 1, 3, 2))


def hash_buckets(x, hash_projection):
    """The bucket of every vector of x [batch, heads, length, dim]: bit i is set where x . P_i > 0,
    int32 [batch, heads, length] in [0, 2**bits)."""
    projected = ops.einsum("bhld,hnd->bhln", ops.cast(x, "float32"), ops.cast(hash_projection, "float32"))
    bits = ops.cast(projected > 0, "int32")
    return ops.sum(bits * (2 ** ops.arange(hash_projection.shape[1], dtype="int32")), axis=-1)


def num_routing_clusters(centroids=None, hash_projection=None):
    """How many clusters the centroids or the projection's buckets make."""
    return centroids.shape[1] if centroids is not None else 2 ** hash_projection.shape[1]


def hash_bits(num_clusters):
    """log2(num_clusters); hashing makes 2**bits buckets, so num_clusters must be a power of two."""
    bits = round(math.log2(num_clusters)) if num_clusters >= 1 else -1
    if bits < 1 or 2 ** bits != num_clusters:
        raise ValueError(f"hashing routes to 2**bits buckets: num_clusters must be a power of two >= 2; got "
                         f"{num_clusters}.")
    return bits


class RandomRotation(keras.initializers.Initializer):
    """A projection [heads, bits, dim] whose `bits` rows are orthonormal within each head (QR of a normal draw),
    the original's random rotation for hashing."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        heads, bits, dim = shape
        if bits > dim:
            raise ValueError(f"a random rotation of {bits} orthonormal rows needs bits <= dim = {dim}.")
        q, _ = ops.qr(keras.random.normal((heads, dim, bits), seed=self.seed))
        return ops.cast(ops.transpose(q, (0, 2, 1)), dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}
