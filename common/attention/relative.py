"""Relative position attention of Shaw et al. (2018): learned key and value embeddings per clipped distance.

A table has shape [2 * max_relative_position + 1, dim]; row `clip(j - i, -m, m) + m` holds the embedding of
key position j seen from query position i. Tables are shared across heads, as in the Routing Transformer.
Kernels add `q . R_k[j - i]` to the logits and `sum_j w_ij R_v[j - i]` to the output.
"""

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class BlockDistances:
    """The distances of a [queries, keys] block and the table rows they read.

    Entry (i, j) is at distance j - i + offset; the block spans `lowest`..`highest`, queries + keys - 1
    distances, the layout of `skew` / `unskew`. A [2m + 1, dim] table clips them to [-m, m], and a causal block
    keeps none above 0, so only `first`..`last` read distinct rows: each relative term is a matmul against those
    rows (`table_rows`), widened to every distance (`expand`) or summed back onto them (`reduce`). In a causal
    window of two blocks of 128 with m = 128 that is 129 rows of 383.
    """
    lowest: int
    highest: int
    kept: int  # the highest distance not masked
    max_distance: int  # the table's m

    @property
    def first(self):
        """The lowest distance with a row of its own (distances below it read the same clipped row)."""
        return min(max(self.lowest, -self.max_distance), self.max_distance)

    @property
    def last(self):
        """The highest kept distance with a row of its own."""
        return min(max(self.kept, -self.max_distance), self.max_distance)

    def table_rows(self, table, dtype):
        """The rows of `first`..`last`, in `dtype`: [last - first + 1, dim]."""
        return ops.cast(table[self.first + self.max_distance:self.last + self.max_distance + 1], dtype)

    def table_gradient(self, grad_rows, table):
        """The gradient of `table_rows` for that of the rows: zero on the rows no distance reads."""
        grad = ops.pad(ops.cast(grad_rows, "float32"),
                       [[self.first + self.max_distance, self.max_distance - self.last], [0, 0]])
        return ops.cast(grad, table.dtype)

    def expand(self, scores):
        """Scores per row [..., last - first + 1] -> per distance [..., highest - lowest + 1]: a clipped distance
        takes its row's score, a masked one 0."""
        below, rows, above = self._runs()
        parts = [_repeat(scores[..., :1], below)]
        if rows > 1:
            parts += [scores[..., 1:rows - 1], _repeat(scores[..., rows - 1:], above)]
        masked = self.highest - self.kept
        if masked:
            parts.append(ops.zeros(tuple(ops.shape(scores)[:-1]) + (masked,), scores.dtype))
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def reduce(self, x):
        """The transpose of `expand`: [..., highest - lowest + 1] -> [..., last - first + 1], each row's sum over
        the distances that read it (masked distances are dropped)."""
        below, rows, above = self._runs()
        parts = [ops.sum(x[..., :below], axis=-1, keepdims=True)]
        if rows > 1:
            middle = below + rows - 2
            parts += [x[..., below:middle], ops.sum(x[..., middle:middle + above], axis=-1, keepdims=True)]
        return ops.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def _runs(self):
        """(distances reading the first row, rows, distances reading the last row), of the unmasked ones."""
        rows = self.last - self.first + 1
        if rows == 1:
            return self.kept - self.lowest + 1, 1, 0
        return self.first - self.lowest + 1, rows, self.kept - self.last + 1


def block_distances(table, queries, keys, offset, causal=False):
    """The `BlockDistances` of a [queries, keys] block whose (i, j) distance is j - i + offset, for `table`;
    `causal`: distances above 0 are masked."""
    m = max_relative_position(table)
    lowest, highest = offset - (queries - 1), offset + keys - 1
    kept = max(min(highest, 0), lowest) if causal else highest  # a block with nothing kept: one masked column
    return BlockDistances(lowest=lowest, highest=highest, kept=kept, max_distance=m)


def _repeat(column, count):
    """[..., 1] -> [..., count]."""
    return column if count == 1 else ops.repeat(column, count, axis=-1)


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
