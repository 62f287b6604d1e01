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
