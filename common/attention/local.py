"""Blocked local attention, as in the Routing Transformer's local heads.

The sequence is cut into blocks of `block_size` queries. A query block attends to its own block (causally
when `causal`), to `look_back` previous blocks and, when bidirectional, to `look_ahead` next blocks. Keys are
gathered per block into a window of (look_back + 1 + look_ahead) blocks, so time and memory are
O(length x window): no length x length tensor is ever built. A length that is not a multiple of the block is
padded inside and the output cut; padded keys are masked out.

`block_attention` is the shared core (also of the Routing Transformer's clusters): without dropout it writes
its gradient out and recomputes the attention weights in the backward pass, so training keeps no
[blocks, block, window] tensor between the passes.
"""

import math

from keras import ops

from common.attention import checks, masks, relative
from common.attention.softmax import MASK_VALUE, masked_softmax


def local_attention(q, k, v, *, block_size, look_back=1, look_ahead=None, causal=True, scale=None,
                    relative_keys=None, relative_values=None, segment_ids=None, max_distance=None,
                    dropout_rate=0.0, seed=None, keep_weights=False):
    """Local attention in blocks; equals `dense_attention` with `masks.local_mask(...)`.

    Args:
      q, k: [batch, heads, length, key_dim]. v: [batch, heads, length, value_dim].
      block_size: queries per block (the original's `query_shape`).
      look_back: previous blocks each block sees (the original's `memory_flange / query_shape`).
      look_ahead: next blocks each block sees when `causal=False`; default `look_back`.
      causal: query i never sees key j > i.
      scale: logits multiplier; default 1 / sqrt(key_dim).
      relative_keys, relative_values: optional Shaw tables [2m + 1, dim]; the distance j - i inside a window
        is the same for every block, so one [block, window, dim] slab serves all blocks.
      segment_ids: optional int [batch, heads, length]; a query sees only keys of its own segment (packed
        documents, or the clusters of causal routing).
      max_distance: optional; a query sees only keys with |i - j| < max_distance (a sliding window inside
        the blocked one).
      dropout_rate, seed: dropout on the attention probabilities.
      keep_weights: keep the attention weights for the backward pass instead of recomputing them there (see
        `block_attention`).

    Returns:
      [batch, heads, length, value_dim].
    """
    checks.check_qkv(q, k, v)
    checks.check_self_attention(q, k)
    checks.check_positive_int("block_size", block_size)
    checks.check_positive_int("look_back", look_back, minimum=0)
    look_ahead = masks.resolve_look_ahead(look_ahead, look_back, causal)
    checks.check_positive_int("look_ahead", look_ahead, minimum=0)
    if max_distance is not None:
        checks.check_positive_int("max_distance", max_distance)
    if segment_ids is not None and len(segment_ids.shape) != 3:
        raise ValueError(f"segment_ids must be [batch, heads, length]; got shape {tuple(segment_ids.shape)}.")
    relative.check_relative_tables(relative_keys, relative_values, q.shape[-1], v.shape[-1])
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])

    batch, heads, length = ops.shape(q)[0], ops.shape(q)[1], ops.shape(q)[2]
    num_blocks = (length + block_size - 1) // block_size
    padding = num_blocks * block_size - length
    window = (look_back + 1 + look_ahead) * block_size

    def query_blocks(x):
        """[b, h, length, ...] -> [b, h, blocks, block_size, ...]."""
        if not isinstance(padding, int) or padding:
            x = ops.pad(x, [[0, 0], [0, 0], [0, padding]] + [[0, 0]] * (len(x.shape) - 3))
        return ops.reshape(x, (batch, heads, num_blocks, block_size) + tuple(x.shape[3:]))

    # Offsets of window slots relative to each query: the same for every block.
    distances = ops.arange(window)[None, :] - look_back * block_size - ops.arange(block_size)[:, None]
    block_starts = ops.arange(num_blocks) * block_size
    key_positions = block_starts[:, None] + ops.arange(window)[None, :] - look_back * block_size
    keep = ops.logical_and(key_positions >= 0, key_positions < length)[:, None, :]
    if max_distance is not None:
        keep = ops.logical_and(keep, (ops.abs(distances) < max_distance)[None])
    if segment_ids is not None:
        segments = query_blocks(segment_ids)
        same = segments[..., :, None] == _windows(segments, look_back, look_ahead)[..., None, :]
        keep = ops.logical_and(keep, same)
    out = block_attention(query_blocks(q), query_blocks(k), query_blocks(v), keep, scale=scale,
                          look_back=look_back, look_ahead=look_ahead, causal=causal, relative_keys=relative_keys,
                          relative_values=relative_values, dropout_rate=dropout_rate, seed=seed,
                          keep_weights=keep_weights)
    out = ops.reshape(out, (batch, heads, num_blocks * block_size, v.shape[-1]))
    return out if isinstance(padding, int) and not padding else out[:, :, :length]


def block_attention(q, k, v, keep=None, *, scale, look_back=0, look_ahead=0, causal=False, relative_keys=None,
                    relative_values=None, dropout_rate=0.0, seed=None, keep_weights=False):
    """Attention inside blocks: every block of queries attends to a window of key blocks.

    `softmax(scale * (q . k + q . R_k[distance]), masked by keep) . (v + R_v[distance])` over each window, the
    softmax in float32 as `masked_softmax` (rows with no kept key give zeros).

    Args:
      q: [batch, heads, blocks, queries, key_dim].
      k, v: [batch, heads, blocks, block_keys, dim]. The window of query block i is key blocks i - look_back,
        ..., i + look_ahead (all zeros beyond either end, which `keep` must mask), keys = (look_back + 1 +
        look_ahead) x block_keys of them; key slot j of the window is at distance `j - i - look_back x
        block_keys` from query slot i. Windows are built inside, so overlapping ones are not kept between the
        passes.
      keep: bool, broadcastable to [batch, heads, blocks, queries, keys], or None.
      scale: logits multiplier.
      look_back, look_ahead: key blocks before and after the query block in its window.
      causal: also mask every key slot at a distance above 0 (so the relative terms skip those distances).
      relative_keys, relative_values: optional Shaw tables [2m + 1, dim], indexed by the distance clipped to
        the table.
      dropout_rate, seed: dropout on the attention probabilities.
      keep_weights: keep the float32 weights [batch, heads, blocks, queries, keys] and the key and value
        windows from the forward pass for the backward pass, instead of recomputing them there: about 20%
        faster (the logits, softmax and windows are not computed twice), for that much more memory per layer.
        For short contexts, where activations are small; the default suits long ones. Ignored with dropout.

    Returns:
      [batch, heads, blocks, queries, value_dim].

    Memory: without dropout the gradient is written out and (unless `keep_weights`) the attention weights are
    recomputed in the backward pass, so training keeps no [batch, heads, blocks, queries, keys] tensor between
    the passes (only the inputs), where automatic differentiation would keep the softmax, the masked weights
    and the mask as float. The relative terms are two matmuls against the distinct table rows of the block's
    kept distances (`relative.BlockDistances`, `skew`, `unskew`), not a [queries, keys, dim] slab (a matmul
    batched over queries, several times slower on CPU). The gradients
    are the same up to rounding. With dropout the plain formulation is used (the backward would need the
    dropout mask).
    """
    queries, keys = q.shape[-2], (look_back + 1 + look_ahead) * k.shape[-2]
    offset = -look_back * k.shape[-2]
    if causal:
        behind = ops.arange(keys)[None, :] + offset <= ops.arange(queries)[:, None]
        keep = behind if keep is None else ops.logical_and(keep, behind)
    distances_k, distances_v = (
        None if table is None else relative.block_distances(table, queries, keys, offset, causal)
        for table in (relative_keys, relative_values))

    def windows(x):
        return _windows(x, look_back, look_ahead)

    if dropout_rate:
        logits = _block_logits(q, windows(k), relative_keys, distances_k)
        weights = masked_softmax(logits * scale, keep, dropout_rate, seed)
        return _block_mix(weights, windows(v), relative_values, distances_v)
    # Read into tensors here, so that the custom gradient sees tensors, not variables read inside it.
    tables = [ops.copy(t) for t in (relative_keys, relative_values) if t is not None]
    has_keys, has_values = relative_keys is not None, relative_values is not None

    def weights_of(q, k, table_k):
        return _masked_softmax(_block_logits(q, k, table_k, distances_k) * scale, keep)

    @ops.custom_gradient
    def attend(q, k, v, *tables):
        table_k = tables[0] if has_keys else None
        table_v = tables[-1] if has_values else None
        k_windows, v_windows = windows(k), windows(v)
        weights = weights_of(q, k_windows, table_k)
        out = _block_mix(weights, v_windows, table_v, distances_v)
        # Only what `kept` holds reaches the backward closure (which eager execution keeps alive).
        kept = (k_windows, v_windows, weights) if keep_weights else None

        # No `variables` argument: the tables come in as tensors, and a captured variable should fail loudly.
        def backward(grad):
            grad = ops.cast(grad, v.dtype)
            if kept is not None:
                (k_, v_, weights), table_k_, table_v_ = kept, table_k, table_v
            else:
                # Recompute from the inputs, after `grad` exists: an op that reads only forward tensors would
                # run during the forward pass and hold its output until here.
                after = _zero_after(grad)
                q_, k_, v_, table_k_, table_v_ = [None if x is None else x + ops.cast(after, x.dtype)
                                                  for x in (q, k, v, table_k, table_v)]
                k_, v_ = windows(k_), windows(v_)
                weights = weights_of(q_, k_, table_k_)
            weights_v = ops.cast(weights, v.dtype)
            grad_v = _unwindow(ops.einsum("bhnqk,bhnqd->bhnkd", weights_v, grad), look_back, look_ahead)
            grad_weights = ops.einsum("bhnqd,bhnkd->bhnqk", grad, v_)
            grad_tables = []
            if table_v is not None:
                rows_v = distances_v.table_rows(table_v_, v.dtype)
                grad_weights = grad_weights + relative.skew(
                    distances_v.expand(ops.einsum("bhnqd,rd->bhnqr", grad, rows_v)), keys)
                weights_by_row = ops.cast(distances_v.reduce(relative.unskew(weights)), v.dtype)
                grad_tables.append(distances_v.table_gradient(
                    ops.einsum("bhnqr,bhnqd->rd", weights_by_row, grad), table_v))
            grad_weights = ops.cast(grad_weights, "float32")
            # Softmax backward; masked entries have weight 0, so their logits get 0 as through the mask. `scale`
            # multiplies the small gradients, not this [.., queries, keys] one.
            grad_logits = weights * (grad_weights - ops.sum(grad_weights * weights, axis=-1, keepdims=True))
            if table_k is not None:
                grad_by_row = ops.cast(distances_k.reduce(relative.unskew(grad_logits)), q.dtype)
            grad_logits = ops.cast(grad_logits, q.dtype)
            grad_q = ops.einsum("bhnqk,bhnkd->bhnqd", grad_logits, k_)
            grad_k = _unwindow(ops.einsum("bhnqk,bhnqd->bhnkd", grad_logits, q) * scale, look_back, look_ahead)
            if table_k is not None:
                grad_q = grad_q + ops.einsum("bhnqr,rd->bhnqd", grad_by_row,
                                             distances_k.table_rows(table_k_, q.dtype))
                grad_rel_k = ops.einsum("bhnqr,bhnqd->rd", grad_by_row, q) * scale
                grad_tables.insert(0, distances_k.table_gradient(grad_rel_k, table_k))
            return (grad_q * scale, grad_k, grad_v, *grad_tables)

        return out, backward

    return attend(q, k, v, *tables)


def _windows(blocks, before, after):
    """[b, h, n, block, ...] -> [b, h, n, (before + 1 + after) x block, ...]: block i with the `before` blocks
    before it and the `after` after it, zeros beyond the ends."""
    if not before and not after:
        return blocks
    n = ops.shape(blocks)[2]
    padded = ops.pad(blocks, [[0, 0], [0, 0], [before, after]] + [[0, 0]] * (len(blocks.shape) - 3))
    return ops.concatenate([padded[:, :, j:j + n] for j in range(before + 1 + after)], axis=3)


def _unwindow(grad, before, after):
    """The transpose of `_windows`: sums the gradient of every window slot into its block."""
    if not before and not after:
        return grad
    count = before + 1 + after
    rest = [[0, 0]] * (len(grad.shape) - 4)
    total = None
    for j, part in enumerate(ops.split(grad, count, axis=3)):
        part = ops.pad(part, [[0, 0], [0, 0], [j, count - 1 - j], [0, 0]] + rest)
        total = part if total is None else total + part
    return total[:, :, before:before + ops.shape(grad)[2]]


def _masked_softmax(logits, keep):
    """`masked_softmax` without dropout, zeroing masked entries with `where` on the bool mask: the same values,
    and no float copy of the mask (which graph optimisation could share between the passes)."""
    if keep is None:
        return ops.softmax(logits, axis=-1)
    weights = ops.softmax(ops.where(keep, logits, MASK_VALUE), axis=-1)
    return ops.where(keep, weights, 0.0)


def _zero_after(x):
    """A scalar 0.0 that is computed from x at run time, so that what depends on it waits for x (graph
    optimisation cannot fold it away); as tf.recompute_grad does."""
    first = ops.cast(ops.reshape(x, (-1,))[:1], "bool")
    return ops.sum(ops.where(ops.equal(first, first), 0.0, float("nan")))


def _block_logits(q, k, table_k, distances):
    """float32 logits [b, h, n, queries, keys], with the relative-key term when a table (and its block's
    `relative.BlockDistances`) is given."""
    logits = ops.cast(ops.einsum("bhnqd,bhnkd->bhnqk", q, k), "float32")
    if table_k is not None:
        by_row = ops.einsum("bhnqd,rd->bhnqr", q, distances.table_rows(table_k, q.dtype))
        logits = logits + ops.cast(relative.skew(distances.expand(by_row), k.shape[-2]), "float32")
    return logits


def _block_mix(weights, v, table_v, distances):
    """float32 weights [b, h, n, queries, keys] applied to v, with the relative-value term when a table (and its
    block's `relative.BlockDistances`) is given."""
    out = ops.einsum("bhnqk,bhnkd->bhnqd", ops.cast(weights, v.dtype), v)
    if table_v is not None:
        weights_by_row = ops.cast(distances.reduce(relative.unskew(weights)), v.dtype)
        out = out + ops.einsum("bhnqr,rd->bhnqd", weights_by_row, distances.table_rows(table_v, v.dtype))
    return out
