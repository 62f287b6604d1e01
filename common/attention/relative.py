"""Relative position attention of Shaw et al. (2018): learned key and value embeddings per clipped distance.

A table has shape [2 * max_relative_position + 1, dim]; row `clip(j - i, -m, m) + m` holds the embedding of
key position j seen from query position i. Tables are shared across heads, as in the Routing Transformer.
Kernels add `q . R_k[j - i]` to the logits and `sum_j w_ij R_v[j - i]` to the output.
"""

from keras import ops


def max_relative_position(table):
    """The clipping distance m of a [2m + 1, dim] table."""
    rows = table.shape[0]
    if rows is None or rows % 2 != 1:
        raise ValueError(f"a relative position table must have 2 * max_relative_position + 1 rows; got shape "
                         f"{tuple(table.shape)}.")
    return (rows - 1) // 2


def check_relative_tables(relative_keys, relative_values, key_dim, value_dim):
    """Validates optional relative tables against the head dimensions."""
    for name, table, dim in (("relative_keys", relative_keys, key_dim), ("relative_values", relative_values,
                                                                          value_dim)):
        if table is None:
            continue
        if len(table.shape) != 2:
            raise ValueError(f"{name} must have rank 2 [2 * max_relative_position + 1, dim]; got "
                             f"{tuple(table.shape)}.")
        max_relative_position(table)
        if dim is not None and table.shape[1] != dim:
            raise ValueError(f"{name} has dim {table.shape[1]} but the heads have dim {dim}.")


def relative_embeddings(table, distances):
    """Gathers `table` rows for an int tensor of distances (key minus query), clipped to the table's range."""
    m = max_relative_position(table)
    return ops.take(table, ops.clip(distances, -m, m) + m, axis=0)


def toeplitz_rows(table, queries, keys, offset):
    """The table rows of every distance in a [queries, keys] block whose (i, j) distance is j - i + offset:
    [queries + keys - 1, dim], row r holding distance r - (queries - 1) + offset (clipped), so that (i, j)
    reads row j - i + queries - 1.

    With `skew` and `unskew` this turns the relative terms of a block into two plain matmuls against these
    rows, in place of a [queries, keys, dim] slab contracted once per query (a matmul batched over queries,
    which is several times slower on CPU).
    """
    return relative_embeddings(table, _toeplitz_distances(queries, keys, offset))


def toeplitz_rows_gradient(grad_rows, table, queries, keys, offset):
    """The transpose of `toeplitz_rows`: sums the gradient of the rows [queries + keys - 1, dim] into the table's
    rows (clipped distances share a row), in float32 and returned in the table's dtype."""
    m = max_relative_position(table)
    index = ops.clip(_toeplitz_distances(queries, keys, offset), -m, m) + m
    grad = ops.segment_sum(ops.cast(grad_rows, "float32"), index, num_segments=table.shape[0])
    return ops.cast(grad, table.dtype)


def _toeplitz_distances(queries, keys, offset):
    """The distance of each of `toeplitz_rows`' rows: r - (queries - 1) + offset."""
    return ops.arange(queries + keys - 1) - (queries - 1) + offset


def skew(scores, keys):
    """Per-distance scores [..., queries, queries + keys - 1] -> [..., queries, keys], entry (i, j) being
    scores[..., i, j - i + queries - 1]: row i of the flattened scores read from offset i x (width - 1)."""
    queries, width = scores.shape[-2], scores.shape[-1]
    if width != queries + keys - 1:
        raise ValueError(f"skew needs queries + keys - 1 = {queries + keys - 1} distances; got {width}.")
    if queries == 1:
        return scores
    lead = tuple(ops.shape(scores)[:-2])
    flat = ops.reshape(scores, lead + (queries * width,))[..., queries - 1:queries - 1 + queries * (width - 1)]
    return ops.reshape(flat, lead + (queries, width - 1))[..., :keys]


def unskew(x):
    """The transpose of `skew`: [..., queries, keys] -> [..., queries, queries + keys - 1], entry (i, j) moved
    to (i, j - i + queries - 1) and zeros elsewhere."""
    queries, keys = x.shape[-2], x.shape[-1]
    if queries == 1:
        return x
    width = queries + keys - 1
    lead = tuple(ops.shape(x)[:-2])
    rank = len(x.shape)
    x = ops.pad(x, [[0, 0]] * (rank - 1) + [[0, queries - 2]])
    flat = ops.pad(ops.reshape(x, lead + (queries * (width - 1),)), [[0, 0]] * (rank - 2) + [[queries - 1, 1]])
    return ops.reshape(flat, lead + (queries, width))
