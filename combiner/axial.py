"""Combiner-Axial, row-major (paper section 4.3, omega_axial-rowmajor; TF `axial_rowmajor`, JAX
`_SelfAttAxialRowmajor`).

The sequence is a grid of n rows of m tokens. Query (r, c) attends directly to its own row (causally: t <= c)
and to every earlier row r' < r as one region (bidirectional: every other row r' != r). Unlike Combiner-Fixed,
a row's abstraction depends on the query's column c: its local expectation is o_{r',c}, the full (unmasked)
attention of query (r', c) over row r', and its key k^_{r',c} is set by `row_summary`:
  none       k_{r',c};
  wsum       sum_t P_{r',c,t} k_{r',t} (the row attention's weighted sum of keys);
  proj       a learned map of o (TF/JAX: W_k' LN(x + W_o' concat_heads(o)), the layer's weights);
  wsum_proj  the same map of wsum.
Using the whole row r' in o is legal because only rows before the query's are used. Logits per query: m + n;
cost O(L (m + n)) plus the row attention O(L m).
"""

from keras import ops

from combiner.joint import from_grid, grid_masks, joint_softmax, to_grid
from common.attention.softmax import masked_softmax

ROW_SUMMARIES = ("none", "wsum", "proj", "wsum_proj")


def row_summaries(qg, kg, vg, row_summary="none", row_projection=None, dropout_rate=0.0, seed=None):
    """The abstractions of every row of grids [batch, heads, n, m, dim], one per column.

    Returns (row logits [b, h, n, m, m] in float32, the full attention of each query over its own row; the
    region values o [b, h, n, m, value_dim]; the region keys [b, h, n, m, key_dim] set by `row_summary`).
    `row_projection` maps summaries [b, h, n x m, dim] to region keys [b, h, n x m, key_dim].
    """
    row_logits = ops.cast(ops.einsum("bhrqd,bhrkd->bhrqk", qg, kg), "float32")
    row_weights = masked_softmax(row_logits, None, dropout_rate, seed)  # p(j | Omega) of row r at column q
    summaries = ops.einsum("bhrqk,bhrkd->bhrqd", ops.cast(row_weights, vg.dtype), vg)  # o_{r,c}
    if row_summary == "none":
        return row_logits, summaries, kg
    pre = summaries if row_summary == "proj" else ops.einsum(
        "bhrqk,bhrkd->bhrqd", ops.cast(row_weights, kg.dtype), kg)
    if row_summary == "wsum":
        return row_logits, summaries, pre
    projected = row_projection(from_grid(pre))
    heads, key_dim = qg.shape[1], qg.shape[-1]
    if len(projected.shape) != 4 or (projected.shape[1], projected.shape[3]) != (heads, key_dim):
        raise ValueError(f"row_projection must return region keys [batch, heads, length, key_dim] = "
                         f"[.., {heads}, .., {key_dim}]; got {tuple(projected.shape)}.")
    return row_logits, summaries, to_grid(ops.cast(projected, kg.dtype), qg.shape[3])


def axial_attention(q, k, v, *, segment_length, causal=True, row_summary="none", row_projection=None,
                    dropout_rate=0.0, seed=None):
    """Combiner-Axial on pre-scaled queries whose length is a multiple of `segment_length` (the row length).

    Called by `combiner.attention.combiner_attention`, which checks, scales and pads. `row_projection` maps
    summaries [batch, heads, length, dim] to region keys [batch, heads, length, key_dim] for the "proj" row
    summaries. Bidirectional regions are the other rows only (a partition, as the paper requires); the TF
    release leaves the own row's region unmasked too.
    """
    qg, kg, vg = (to_grid(x, segment_length) for x in (q, k, v))  # [b, h, n, m, d]
    row_logits, summaries, region_keys = row_summaries(qg, kg, vg, row_summary, row_projection, dropout_rate,
                                                       seed)
    region = ops.einsum("bhrcd,bhscd->bhrcs", qg, region_keys)  # [b, h, n, m, n]
    direct_keep, region_keep = grid_masks(ops.shape(qg)[2], segment_length, causal)
    direct_w, region_w = joint_softmax([(row_logits, direct_keep), (region, region_keep)],
                                       dropout_rate=dropout_rate, seed=seed)
    out = (ops.einsum("bhrqk,bhrkd->bhrqd", ops.cast(direct_w, v.dtype), vg) +
           ops.einsum("bhrcs,bhscd->bhrcd", ops.cast(region_w, v.dtype), summaries))
    return from_grid(out)
