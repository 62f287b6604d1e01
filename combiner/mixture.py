"""Combiner-Mixture (paper section 3.3 with the axial plans of 4.3; JAX `_AxialMixtureAtt`, TF
`axial_mixture_unidir` and, bidirectional, TF `axial_mixture_bidir`).

The sequence is a grid of n rows of m tokens. The paper's mixture averages separately normalised attentions of
two factorisation plans (axial-vertical and axial-horizontal); the released code instead puts the direct and
region logits of both plans under one softmax (a learned, input-dependent mixing), which is what this follows.

Causal, query (r, c), 3n + 2m logits (as the JAX code):
  column direct    (r' < r, c);
  row direct       (r, t <= c);
  vertical         V_t = {(r' < r, t)} for t != c (none in row 0);
  top-left         {(r', t < c)} for r' < r (none in column 0);
  top-right        {(r', t > c)} for r' < r (none in the last column).
Bidirectional, 3m + 3n logits (as TF `axial_mixture_bidir`): the whole own row and the whole own column
directly; column t above and below the query's row, for every t; row r' left and right of the query's column,
for every r'. That is plan A (own row + columns above/below) plus plan B (own column + rows left/right), each a
partition, so every key is covered twice, the query's own position included.

Region keys and summary queries are max-pooled over the region (running maxima over rows or columns). Where
the releases disagree this follows the paper and the JAX code: TF's `approx_cummax` is a cumulative *sum*
("approximate the cummax operation in jax"), so its keys and summary queries grow with the region's size.
Unlike TF's bidirectional code, empty regions (above the first row, left of the first column, ...) are
masked; TF gives them logit 0 and the column or row mean as value. Cost O(L (n + m)) per head.
"""

from keras import ops

from combiner.joint import from_grid, joint_softmax, to_grid
from combiner.summaries import prefix_summaries


PER_ROW = "bhrcs,bhscd->bhrcd"  # one probability per row s, value at (s, c)
PER_COLUMN = "bhrct,bhrtd->bhrcd"  # one probability per column t, value at (r, t)


def _transposed(x):
    """[b, h, rows, columns, d] <-> [b, h, columns, rows, d]."""
    return ops.transpose(x, (0, 1, 3, 2, 4))


def mixture_attention(q, k, v, *, segment_length, causal=True, dropout_rate=0.0, seed=None):
    """Combiner-Mixture on pre-scaled queries whose length is a multiple of `segment_length` (the row length).

    Called by `combiner.attention.combiner_attention`, which checks, scales and pads.
    """
    qg, kg, vg = (to_grid(x, segment_length) for x in (q, k, v))  # [b, h, n, m, d]
    rows, columns = ops.arange(ops.shape(qg)[2]), ops.arange(segment_length)
    last_row, last_column = ops.shape(qg)[2] - 1, segment_length - 1
    summary = dict(dropout_rate=dropout_rate, seed=seed)

    def column_regions(reverse):
        """Per query (r, c) and column t: the column t above row r (below when reverse)."""
        keys, values = prefix_summaries(qg, kg, vg, reverse=reverse, **summary)  # at (r, t)
        return ops.einsum("bhrcd,bhrtd->bhrct", qg, keys), values

    def row_regions(reverse):
        """Per query (r, c) and row s: the part of row s left of column c (right when reverse)."""
        keys, values = prefix_summaries(*(_transposed(x) for x in (qg, kg, vg)), reverse=reverse, **summary)
        keys, values = _transposed(keys), _transposed(values)  # at (s, c)
        return ops.einsum("bhrcd,bhscd->bhrcs", qg, keys), values

    # Each term: (logits, keep, values, how its probabilities combine the values). Per row s the value sits at
    # (s, c); per column t it sits at (r, t).
    column_direct = ops.einsum("bhrcd,bhscd->bhrcs", qg, kg)  # [b, h, n, m, n]
    row_direct = ops.einsum("bhrcd,bhrtd->bhrct", qg, kg)  # [b, h, n, m, m]
    above, above_values = column_regions(reverse=False)
    left, left_values = row_regions(reverse=False)
    right, right_values = row_regions(reverse=True)
    earlier_rows = (rows[None, :] < rows[:, None])[:, None, :]  # [n, 1, n] over (r, ., s)
    not_first_column = (columns >= 1)[None, :, None]
    not_last_column = (columns < last_column)[None, :, None]
    if causal:
        other_columns = (columns[None, :] != columns[:, None])[None]
        terms = [(column_direct, earlier_rows, vg, PER_ROW),
                 (row_direct, columns[None, :] <= columns[:, None], vg, PER_COLUMN),
                 (above, ops.logical_and(other_columns, (rows >= 1)[:, None, None]), above_values, PER_COLUMN),
                 (left, ops.logical_and(earlier_rows, not_first_column), left_values, PER_ROW),
                 (right, ops.logical_and(earlier_rows, not_last_column), right_values, PER_ROW)]
    else:
        below, below_values = column_regions(reverse=True)
        terms = [(column_direct, None, vg, PER_ROW), (row_direct, None, vg, PER_COLUMN),
                 (above, (rows >= 1)[:, None, None], above_values, PER_COLUMN),
                 (below, (rows < last_row)[:, None, None], below_values, PER_COLUMN),
                 (left, not_first_column, left_values, PER_ROW),
                 (right, not_last_column, right_values, PER_ROW)]
    weights = joint_softmax([(logits, keep) for logits, keep, _, _ in terms], direct=2, **summary)
    out = 0
    for w, (_, _, values, combine) in zip(weights, terms):
        out = out + ops.einsum(combine, ops.cast(w, v.dtype), values)
    return from_grid(out)
