"""Region abstractions (paper section 3.2): a region's key k_Omega, its summary query q_Omega, and its local
expectation sum_{j in Omega} p(j | Omega) v_j with p(j | Omega) = softmax_j(q_Omega . k_j).

Abstractions pool the region's keys and queries: max pooling in the paper, and the TF release's `local_summary`
"activation-pooling" options for Combiner-Fixed. Running maxima (`combiner.cummax`) give the abstractions of
every prefix of a row or column at once (the Mixture's regions).
"""

from keras import ops

from combiner.cummax import cummax, shift
from common.attention.softmax import masked_softmax

ACTIVATIONS = ("identity", "relu", "deepset")
POOLINGS = ("max", "mean", "sum")
LOCAL_SUMMARIES = tuple(f"{act}-{pool}" for act in ACTIVATIONS for pool in POOLINGS)


def check_local_summary(local_summary):
    """Returns (activation, pooling) of an "activation-pooling" string; ValueError listing the choices."""
    if local_summary not in LOCAL_SUMMARIES:
        raise ValueError(f"unknown local_summary {local_summary!r}; choose one of {list(LOCAL_SUMMARIES)}.")
    return tuple(local_summary.split("-"))


def pool(x, axis, local_summary="identity-max", kernel=None):
    """TF `pooling_summary`: an activation, then pooling over `axis`.

    Activations: identity, relu, or deepset (x @ kernel then ReLU; `kernel` [dim, dim] is shared across heads,
    the TF release's bias-free `trail_dense`). Poolings: max, mean, sum.
    """
    activation, pooling = check_local_summary(local_summary)
    if activation == "relu":
        x = ops.relu(x)
    elif activation == "deepset":
        if kernel is None:
            raise ValueError(f"local_summary {local_summary!r} needs its pooling kernel [dim, dim].")
        x = ops.relu(ops.matmul(x, ops.cast(kernel, x.dtype)))
    return {"max": ops.max, "mean": ops.mean, "sum": ops.sum}[pooling](x, axis=axis)


def local_expectation(query, keys, values, keep=None, dropout_rate=0.0, seed=None):
    """A region's value sum_j p(j | Omega) v_j with p(j | Omega) = softmax_j(query . k_j) (eq. 7).

    Args:
      query: [..., key_dim], the region's summary query. keys: [..., size, key_dim]. values: [..., size, dim].
      keep: optional bool mask broadcastable to [..., size]; members left out of the region.
      dropout_rate, seed: dropout on p(j | Omega), in training only.

    Returns:
      [..., dim] in the values' dtype.
    """
    weights = masked_softmax(ops.einsum("...d,...sd->...s", query, keys), keep, dropout_rate, seed)
    return ops.einsum("...s,...sd->...d", ops.cast(weights, values.dtype), values)


def inclusive_prefix_summaries(q, k, v, reverse=False, dropout_rate=0.0, seed=None):
    """Abstractions of the regions {(a' <= a, x)} of a grid, for every cell (a, x) (reverse: a' >= a).

    Args:
      q, k, v: grids [batch, heads, A, X, dim]; the regions run along axis 2 (A), one per cell.
      reverse: regions from the cell to the end instead of from the start to the cell.
      dropout_rate, seed: dropout inside the local expectations.

    Returns:
      (keys [batch, heads, A, X, key_dim], values [batch, heads, A, X, value_dim]): key = max of k over the
      region; value = its local expectation under the summary query max of q over the region. Cost
      O(A x A x X) per head.
    """
    size = ops.shape(q)[2]
    query, key = cummax(q, 2, reverse), cummax(k, 2, reverse)
    logits = ops.einsum("bhaxd,bhexd->bhxae", query, k)
    index = ops.arange(size)
    keep = index[None, :] >= index[:, None] if reverse else index[None, :] <= index[:, None]
    weights = masked_softmax(logits, keep, dropout_rate, seed)
    values = ops.einsum("bhxae,bhexd->bhaxd", ops.cast(weights, v.dtype), v)
    return key, values


def prefix_summaries(q, k, v, reverse=False, dropout_rate=0.0, seed=None):
    """Abstractions of the strict regions {(a' < a, x)} of a grid, for every cell (a, x) (reverse: a' > a):
    `inclusive_prefix_summaries` moved one step along A. The empty region (a = 0, or a = A - 1 when reverse)
    gets zeros: callers mask it."""
    key, values = inclusive_prefix_summaries(q, k, v, reverse, dropout_rate, seed)
    return shift(key, 2, reverse), shift(values, 2, reverse)  # inclusive prefix of a - 1 = strict prefix of a
