"""The two pieces every Combiner variant shares: the segment grid, and one softmax over direct and region logits.

A Combiner query attends to some keys directly and to whole regions through their abstractions (paper eq. 7);
eq. 9 normalises the direct logits and the region logits together, so each variant concatenates them, runs one
float32 softmax and splits the probabilities back (as TF `float32_softmax` on `joint_logits`).
"""

import keras
from keras import ops

from common.attention.softmax import MASK_VALUE


def to_grid(x, segment_length):
    """[batch, heads, length, dim] -> [batch, heads, length / segment_length, segment_length, dim] (row-major:
    row r, column c is position r * segment_length + c). The length must be a multiple of the segment."""
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], shape[1], -1, segment_length, x.shape[-1]))


def from_grid(x):
    """The inverse of `to_grid`: [batch, heads, rows, columns, dim] -> [batch, heads, rows * columns, dim]."""
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], shape[1], -1, x.shape[-1]))


def grid_masks(num_segments, segment_length, causal):
    """The keep masks of a grid: direct [m, m] (within a segment; None when bidirectional) and region
    [n, 1, n] (earlier segments when causal, every other segment when bidirectional)."""
    rows, columns = ops.arange(num_segments), ops.arange(segment_length)
    if causal:
        return columns[None, :] <= columns[:, None], (rows[None, :] < rows[:, None])[:, None, :]
    return None, (rows[None, :] != rows[:, None])[:, None, :]


def joint_softmax(parts, direct=1, dropout_rate=0.0, seed=None):
    """Eq. 9: one float32 softmax over the last axes of several logits tensors, split back.

    Args:
      parts: list of (logits, keep); `keep` is a boolean mask broadcastable to its logits (True = attend) or
        None. The direct parts come first.
      direct: how many leading parts are direct attention; `dropout_rate` drops their probabilities (the
        region probabilities are kept whole, as in the TF release).
      dropout_rate, seed: attention dropout, in training only.

    Returns:
      the float32 probabilities of each part, in order. Masks are additive (-1e9, as the releases'), which
      keeps the backward pass to the softmax's own; every query keeps at least one entry in every variant (its
      own position), so masked entries are exactly zero (exp(-1e9) underflows in float32).
    """
    logits, sizes = [], []
    for part, keep in parts:
        part = ops.cast(part, "float32")
        logits.append(part if keep is None else part + ops.where(keep, 0.0, MASK_VALUE))
        sizes.append(ops.shape(part)[-1])
    weights = ops.softmax(ops.concatenate(logits, axis=-1), axis=-1)
    out, start = [], 0
    for index, size in enumerate(sizes):
        part = weights[..., start:start + size]
        if index < direct and dropout_rate:
            part = keras.random.dropout(part, dropout_rate, seed=seed)
        out.append(part)
        start = start + size
    return out
