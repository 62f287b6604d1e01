"""Online k-means with EMA centroids, as the Routing Transformer's `online_kmeans` defines it (and, with
`ema=False`, its centroids trained by gradient).

Centroids are per head, `[heads, clusters, dim]`, non-trainable, and updated in the forward pass only when
`training=True`:

    count_hc   = number of tokens of head h whose nearest centroid (largest dot product) is c
    sum_hc     = sum of those tokens' vectors
    ema_count <- decay * ema_count + (1 - decay) * count
    ema_sum   <- decay * ema_sum + (1 - decay) * sum
    smoothed   = (ema_count + eps) / (n + clusters * eps) * n,  n = sum_c ema_count   (Laplace smoothing)
    centroids <- ema_sum / smoothed

Inputs are expected to be normalised already (scale-free layer norm, `common.layers.layer_norm`), as the
original does; all-zero vectors (padding) are not counted. Counts are kept per head: the original sums a
`[batch, heads, length, clusters]` one-hot through a reshape to `[-1, heads, clusters]` without a transpose,
which mixes the counts of different heads when there is more than one; here each head counts its own tokens.
`count` and `sum` are sums over the batch: under tf.distribute, `update` sums them over the replicas before the
EMA (through the hook `set_replica_sum`, which `apps.distribute` installs), so every replica applies the
update of the whole global batch, and the variables are written from the first replica (aggregation
ONLY_FIRST_REPLICA), so they stay identical on every replica. Under recomputation
(`common.recompute.remat`) the update runs in the forward pass only, not again in the recompute (the original's
`not is_recomputing`), so the statistics are taken once per step, and the recompute routes with the centroids
its forward pass read.

`ema=False` (the original's `ema` hparam off): the centroids are trainable and get no EMA step; the loss is the
original's `q_loss + beta * e_loss`, where `q_loss = mean((stop_gradient(x) - centroid[assignment])^2)` pulls
each assigned centroid toward its vectors (by the optimizer) and `e_loss` is the commitment term above. The
cluster counts are still averaged (`ema_count`), only for the trainer's cluster-size statistics.
"""

import random

import keras
from keras import ops

from common import recompute
from common.attention import checks
from common.layers.normalization import layer_norm

_replica_sum = None


def set_replica_sum(function):
    """Installs how `update` sums the batch statistics (a tuple of tensors) over data-parallel replicas:
    `apps.distribute` installs tf.distribute's when it is imported (the trainer does); None (the default, any
    backend) sums nothing, which is right for one device. Keeps this library free of TensorFlow."""
    global _replica_sum
    _replica_sum = function


@keras.saving.register_keras_serializable(package="common")
class OnlineKMeans(keras.layers.Layer):
    """Per-head centroids with EMA updates and the commitment loss.

    Args:
      num_heads, num_clusters: centroid grid; the dimension comes from the input at build time.
      decay: EMA decay (the Routing Transformer's hparam is 0.999).
      beta: weight of the commitment loss `beta * mean((x - stop_gradient(nearest centroid))^2)`.
      epsilon: Laplace smoothing of the counts (1e-5 in the original).
      ema: EMA centroids (True, the original's default) or trainable ones learned by gradient (False).
      seed: seed of the initial centroids, `layer_norm(normal())` as in the original.
    """

    def __init__(self, num_heads, num_clusters, decay=0.999, beta=1e-4, epsilon=1e-5, ema=True, seed=None,
                 **kwargs):
        super().__init__(**kwargs)
        checks.check_positive_int("num_heads", num_heads)
        checks.check_positive_int("num_clusters", num_clusters)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1); got {decay!r}.")
        self.num_heads = num_heads
        self.num_clusters = num_clusters
        self.decay = decay
        self.beta = beta
        self.epsilon = epsilon
        self.ema = ema
        self.seed = seed

    def build(self, input_shape):
        """input_shape: [batch, heads, length, dim] (or any shape ending in dim)."""
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"OnlineKMeans needs a known last dimension; got input shape {input_shape}.")
        shape = (self.num_heads, self.num_clusters, dim)
        # Both variables start at layer_norm(normal()) of one seed. The draw happens in each initializer, which
        # Keras may run late, inside whatever graph first reads the variable (`fit` on an unbuilt model): a
        # stateless draw from an integer seed gives both the same value wherever it runs.
        seed = self.seed if self.seed is not None else random.randrange(2**31)  # keras.utils.set_random_seed fixes it

        def initial(shape, dtype=None):
            return layer_norm(keras.random.normal(shape, seed=seed))

        # Read in float32 under mixed precision (no autocast); every replica computes the same update from the
        # summed statistics and the first one's is written.
        state = dict(trainable=False, autocast=False, aggregation="only_first_replica")
        if self.ema:
            self.centroids = self.add_weight(name="centroids", shape=shape, initializer=initial, **state)
            self.ema_sum = self.add_weight(name="ema_sum", shape=shape, initializer=initial, **state)
        else:  # trained by the optimizer: the usual aggregation of a trainable variable
            self.centroids = self.add_weight(name="centroids", shape=shape, initializer=initial, trainable=True,
                                             autocast=False)
        self.ema_count = self.add_weight(name="ema_count", shape=shape[:2], initializer="zeros", **state)

    def current_centroids(self):
        """The centroids this step routes with: the variable's value, and in a recompute (`common.recompute`)
        the value its forward pass read, before that pass's update. Without EMA, the variable itself (it moves
        only in the optimizer's step, and the loss's gradient must reach it)."""
        if not self.ema:
            return self.centroids
        return recompute.forward_value(id(self), lambda: ops.copy(self.centroids))  # a read, not the variable

    def scores(self, x):
        """Dot products with the centroids: [batch, heads, length, dim] -> [batch, heads, length, clusters]."""
        return ops.einsum("bhld,hcd->bhlc", x, ops.stop_gradient(ops.cast(self.current_centroids(), x.dtype)))

    def nearest(self, x):
        """Index of the nearest centroid (largest dot product) of every vector, [batch, heads, length]."""
        return ops.argmax(self.scores(x), axis=-1)

    def commitment_loss(self, x, assignment):
        """beta * mean((x - stop_gradient(centroid[assignment]))^2): gradients reach x, never the centroids.
        Without EMA, plus mean((stop_gradient(x) - centroid[assignment])^2), whose gradient reaches only the
        centroids (the original's q_loss)."""
        chosen = self.assigned_centroids(assignment)
        x = ops.cast(x, "float32")
        loss = self.beta * ops.mean(ops.square(x - ops.stop_gradient(chosen)))
        if not self.ema:
            loss = loss + ops.mean(ops.square(ops.stop_gradient(x) - chosen))
        return loss

    def assigned_centroids(self, assignment):
        """The float32 centroid of every assignment [batch, heads, length] -> [batch, heads, length, dim]
        (a gather of rows, not a one-hot product)."""
        heads = self.num_heads
        rows = ops.cast(assignment, "int32") + (ops.arange(heads, dtype="int32") * self.num_clusters)[:, None]
        table = ops.reshape(ops.cast(self.current_centroids(), "float32"), (heads * self.num_clusters, -1))
        return ops.take(table, rows, axis=0)

    def statistics(self, x, assignment):
        """Per-head (count [heads, clusters], sum [heads, clusters, dim]) of this batch (this replica's share);
        without EMA centroids (count,) alone, all the count average needs."""
        x = ops.stop_gradient(ops.cast(x, "float32"))
        one_hot = ops.one_hot(ops.cast(assignment, "int32"), self.num_clusters)
        one_hot = one_hot * ops.cast(ops.any(ops.not_equal(x, 0.0), axis=-1), "float32")[..., None]
        count = ops.sum(one_hot, axis=(0, 2))
        return (count, ops.einsum("bhlc,bhld->hcd", one_hot, x)) if self.ema else (count,)

    def apply_statistics(self, count, total=None):
        """The EMA step and the centroid assignment (without EMA centroids, only the count average)."""
        ema_count = self.decay * self.ema_count + (1.0 - self.decay) * count
        if not self.ema:
            self.ema_count.assign(ema_count)
            return
        ema_sum = self.decay * self.ema_sum + (1.0 - self.decay) * total
        n = ops.sum(ema_count, axis=-1, keepdims=True)
        smoothed = (ema_count + self.epsilon) / (n + self.num_clusters * self.epsilon) * n
        self.ema_count.assign(ema_count)
        self.ema_sum.assign(ema_sum)
        self.centroids.assign(ema_sum / smoothed[..., None])

    def update(self, x, assignment):
        """One EMA step from a batch of vectors and their assignment; under tf.distribute, from the statistics
        summed over the replicas (the update of the concatenated batch). Nothing while recomputing."""
        if recompute.is_recomputing():
            return
        statistics = self.statistics(x, assignment)
        self.apply_statistics(*(statistics if _replica_sum is None else _replica_sum(statistics)))

    def call(self, x, training=None):
        """Assigns `x` [batch, heads, length, dim] to centroids, updates them when training, and adds the
        commitment loss. Returns the assignment [batch, heads, length]."""
        assignment = self.nearest(x)
        self.add_loss(self.commitment_loss(x, assignment))  # Against the centroids x was assigned to.
        if training:
            self.update(x, assignment)
        return assignment

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, num_clusters=self.num_clusters, decay=self.decay,
                      beta=self.beta, epsilon=self.epsilon, ema=self.ema, seed=self.seed)
        return config
