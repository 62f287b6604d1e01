"""Incremental decoding of causal Combiner attention: one new query per step, exactly as a full pass computes it.

A Combiner query attends directly to the tokens of its own segment (or row, or column) and to earlier regions
through their abstractions (key, and value = local expectation under a pooled query). A region's abstraction is
computed once, by the step that completes the region (or, where the causal definition uses growing regions,
by the step that adds the region's last member), stored in a cache, and only read afterwards. A step at
position p = (r, c) = (p // m, p % m), m = `segment_length`, gathers its direct entries and the cached
abstractions it needs by index (`common.kv_cache`, one slot per position unless said otherwise) and runs the variant's single softmax over them (paper eq. 9). The prompt's caches are built in one
pass over it (`start`). `start` and `step` are the "combiner" kernel's registered decoder
(`common.attention.decoding`); they read the layer input x for the row projection (axial, "proj"/"wsum_proj").

Caches and the cost of one step (d = head width; "amortised" counts the work of completing a region, done
once per region; every cache also holds the keys, values and scaled queries of every position):
- fixed: per segment, its key and value abstraction (one slot per segment). Reads the own segment (m) and
  the r completed segments' abstractions: O((m + r) d). The step completing a segment pools it: O(m d).
- logsparse: per position e, the abstraction of the block of lowbit(e + 1) tokens ending at e (the only
  block ending there that a later query uses; for even e it is the token itself). Reads the query's own key
  and the abstractions of the bit_length(p) blocks of the binary decomposition of [0, p): O(d log p). The
  block ending at p costs O(lowbit(p + 1) d): amortised O(d log L), but a whole pass over [0, p] when
  p + 1 is a power of two (the block is first needed at the next step, so that work cannot be spread).
- axial: per position (r', c) of a completed row, o_{r',c} and, unless row_summary is "none" (the key is then
  k_{r',c} itself), its region key; with row_summary "proj"/"wsum_proj" also the layer's input x (the row
  projection needs it). Reads the own row (m) and the r cells (r' < r, c): O((m + r) d). The step completing
  a row runs its full row attention and projection: O(m^2 d + m D^2), amortised O(m d + D^2).
- mixture: per position, the inclusive prefix abstractions of its column (rows <= r) and of its row
  (columns <= c), and, once the row is complete, the abstraction of its row right of it. Reads the own row
  (m), the column above (r), the previous row's column prefixes (m) and the r earlier rows' left and right
  parts: 3r + 2m entries, O((r + m) d); the prefix abstractions of the new position gather its column and
  row, O((r + m) d). The step completing a row adds its right parts: O(m^2 d), amortised O(m d).

So no step reads the whole prefix except logsparse's at p + 1 = 2^j. Written in `keras.ops`, it decodes under
any Keras backend; how many entries a step reads depends on the position, so under JAX the steps run eagerly
(not under jax.jit). Dropout is never applied: decoding is inference.
"""

import math

import numpy as np
from keras import ops

from combiner.axial import row_summaries
from combiner.fixed import segment_summaries
from combiner.joint import from_grid, to_grid
from combiner.logsparse import block_summaries, checked_length
from combiner.summaries import inclusive_prefix_summaries, local_expectation, prefix_summaries
from common import kv_cache
from common.attention.decoding import attend_gathered, register_decoder, require_causal

# Powers of two up to 2^30: the level spans of logsparse for any int32 position.
_SPANS = 2 ** np.arange(31, dtype=np.int32)


def _scaled(q, scale):
    """Queries pre-scaled as `combiner_attention` scales them (before any pooling)."""
    return q * ops.cast(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale, q.dtype)


def _attend(q, parts):
    """Eq. 9 for one pre-scaled query [b, h, 1, d]: one float32 softmax over every gathered entry.

    `parts` are (keys [b, h, k, key_dim], values [b, h, k, value_dim], keep): direct entries or region
    abstractions; keep is a bool [k] or a scalar for the whole part, or None (all kept)."""
    keep = [ops.broadcast_to(True if part_keep is None else part_keep, ops.shape(keys)[2:3])
            for keys, _, part_keep in parts]
    keys = ops.concatenate([keys for keys, _, _ in parts], axis=2)
    values = ops.concatenate([values for _, values, _ in parts], axis=2)
    return attend_gathered(q, keys, values, 0, 0, keep=ops.concatenate(keep, axis=0), scale=1.0)


def _write(cache, position, **entries):
    """`cache` with each named entry [b, h, 1, d] stored at `position`."""
    return dict(cache, **{name: kv_cache.write(cache[name], position, x) for name, x in entries.items()})


def _own_segment(position, segment_length):
    """The positions of the query's segment (row) and which of them are at or before it (bool [m])."""
    positions = (position // segment_length) * segment_length + ops.arange(segment_length)
    return ops.minimum(positions, position), positions <= position


def _read(cache, names, positions):
    return [kv_cache.read(cache[name], positions) for name in names]


def _complete_rows(x, segment_length):
    """The grid [b, h, rows, m, d] of the complete segments (rows) of a prompt x [b, h, n, d]."""
    rows = ops.shape(x)[2] // segment_length
    return to_grid(x[:, :, :rows * segment_length], segment_length)


# Fixed.

def _start_fixed(q, k, v, cache_length, segment_length, local_summary, query_pooling_kernel, key_pooling_kernel):
    keys, values = segment_summaries(*(_complete_rows(x, segment_length) for x in (q, k, v)), local_summary,
                                     query_pooling_kernel, key_pooling_kernel)
    segments = (cache_length + segment_length - 1) // segment_length
    return {"region_keys": kv_cache.from_prompt(keys, segments),
            "region_values": kv_cache.from_prompt(values, segments)}


def _fixed_step(q, cache, position, segment_length, local_summary, query_pooling_kernel, key_pooling_kernel):
    segment = position // segment_length
    own, keep = _own_segment(position, segment_length)
    keys, values = _read(cache, ("keys", "values"), own)
    earlier = ops.arange(segment)
    out = _attend(q, [(keys, values, keep), (*_read(cache, ("region_keys", "region_values"), earlier), None)])

    def summarise():  # the segment is complete: own = its positions
        queries = kv_cache.read(cache["queries"], own)
        key_bar, value_bar = segment_summaries(queries[:, :, None], keys[:, :, None], values[:, :, None],
                                               local_summary, query_pooling_kernel, key_pooling_kernel)
        return dict(cache, region_keys=kv_cache.write(cache["region_keys"], segment, key_bar),
                    region_values=kv_cache.write(cache["region_values"], segment, value_bar))

    return out, ops.cond(position % segment_length == segment_length - 1, summarise, lambda: cache)


# Logsparse.

def _start_logsparse(q, k, v, cache_length, max_length):
    """The block caches of a prompt; a prompt length known only at run time needs the layer's `max_length`
    (levels up to its bit length; a level with no complete block adds nothing)."""
    length = q.shape[2]
    if length is None:
        if max_length is None:
            raise ValueError("variant 'logsparse' needs a static prompt length or the layer's max_length to "
                             "build its block caches.")
        levels, length = max_length.bit_length(), checked_length(q, max_length)
    else:
        levels = length.bit_length()
    ends, keys, values = [], [], []
    for level in range(levels):
        size = 2 ** level
        blocks = length // size

        def even_blocks(x):  # blocks 0, 2, 4, ...: the ones ending where the level is lowbit(end + 1)
            return ops.reshape(x[:, :, :blocks * size], (ops.shape(x)[0], x.shape[1], blocks, size,
                                                         x.shape[3]))[:, :, ::2]

        if size == 1:  # a block of one token is the token itself (as in the kernel)
            key_bar, value_bar = k[:, :, ::2], v[:, :, ::2]
        else:
            key_bar, value_bar = block_summaries(even_blocks(q), even_blocks(k), even_blocks(v))
        ends.append((ops.arange(0, blocks, 2) + 1) * size - 1)
        keys.append(key_bar)
        values.append(value_bar)
    order = ops.argsort(ops.concatenate(ends, axis=0))  # every prompt position ends exactly one of these blocks
    return {name: kv_cache.from_prompt(ops.take(ops.concatenate(parts, axis=2), order, axis=2), cache_length)
            for name, parts in (("block_keys", keys), ("block_values", values))}


def _logsparse_step(q, k, v, cache, position):
    size = ops.bitwise_and(position + 1, -(position + 1))  # the block ending at `position`
    block = position - size + 1 + ops.arange(size)
    key_bar, value_bar = block_summaries(*(x[:, :, None] for x in _read(cache, ("queries", "keys", "values"),
                                                                          block)))
    cache = _write(cache, position, block_keys=key_bar, block_values=value_bar)
    spans = ops.convert_to_tensor(_SPANS)
    spans = spans[:ops.sum(ops.cast(spans <= position, "int32"))]  # levels 0 .. bit_length(position) - 1
    ends = (position // spans) * spans - 1  # the level-l block before the query's own
    keep = (position // spans) % 2 == 1
    blocks = _read(cache, ("block_keys", "block_values"), ops.maximum(ends, 0))
    return _attend(q, [(k, v, None), (*blocks, keep)]), cache


# Axial.

def _start_axial(x, q, k, v, cache_length, segment_length, row_summary, row_projection):
    grids = [_complete_rows(y, segment_length) for y in (q, k, v)]
    projection = None
    if row_projection is not None:
        projection = row_projection(x[:, :ops.shape(grids[0])[2] * segment_length])
    _, summaries, region_keys = row_summaries(*grids, row_summary, projection)
    cache = {"region_values": kv_cache.from_prompt(from_grid(summaries), cache_length)}
    if row_summary != "none":
        cache["region_keys"] = kv_cache.from_prompt(from_grid(region_keys), cache_length)
    if row_projection is not None:
        cache["inputs"] = kv_cache.from_prompt(x[:, None], cache_length)
    return cache


def _axial_step(q, cache, position, segment_length, row_summary, row_projection):
    own, keep = _own_segment(position, segment_length)
    keys, values = _read(cache, ("keys", "values"), own)
    above = ops.arange(position // segment_length) * segment_length + position % segment_length  # (r' < r, c)
    region_keys = kv_cache.read(cache["keys" if row_summary == "none" else "region_keys"], above)
    out = _attend(q, [(keys, values, keep), (region_keys, kv_cache.read(cache["region_values"], above), None)])

    def summarise():  # the row is complete: own = its positions
        queries = kv_cache.read(cache["queries"], own)
        projection = None
        if row_projection is not None:
            projection = row_projection(kv_cache.read(cache["inputs"], own)[:, 0])
        _, summaries, row_keys = row_summaries(queries[:, :, None], keys[:, :, None], values[:, :, None],
                                               row_summary, projection)
        start = position - (segment_length - 1)
        new = dict(cache, region_values=kv_cache.write_span(cache["region_values"], start, summaries[:, :, 0]))
        if row_summary != "none":
            new["region_keys"] = kv_cache.write_span(cache["region_keys"], start, row_keys[:, :, 0])
        return new

    return out, ops.cond(position % segment_length == segment_length - 1, summarise, lambda: cache)


# Mixture.

def _transposed(x):
    return ops.transpose(x, (0, 1, 3, 2, 4))


def _start_mixture(q, k, v, cache_length, segment_length):
    length = ops.shape(q)[2]
    padding = (-length) % segment_length
    qg, kg, vg = (to_grid(ops.pad(x, [[0, 0], [0, 0], [0, padding], [0, 0]]), segment_length) for x in (q, k, v))
    column_keys, column_values = inclusive_prefix_summaries(qg, kg, vg)  # rows <= r of column c
    row_keys, row_values = (_transposed(x) for x in inclusive_prefix_summaries(*map(_transposed, (qg, kg, vg))))
    complete = (_transposed(_complete_rows(x, segment_length)) for x in (q, k, v))
    right_keys, right_values = prefix_summaries(*complete, reverse=True)  # columns > c of a complete row
    parts = dict(column_keys=column_keys, column_values=column_values, row_keys=row_keys, row_values=row_values)
    cache = {name: kv_cache.from_prompt(from_grid(x)[:, :, :length], cache_length) for name, x in parts.items()}
    cache.update(right_keys=kv_cache.from_prompt(from_grid(_transposed(right_keys)), cache_length),
                 right_values=kv_cache.from_prompt(from_grid(_transposed(right_values)), cache_length))
    return cache


def _mixture_step(q, cache, position, segment_length):
    row, column = position // segment_length, position % segment_length
    own, keep = _own_segment(position, segment_length)
    own_queries, own_keys, own_values = _read(cache, ("queries", "keys", "values"), own)
    column_queries, column_keys, column_values = _read(cache, ("queries", "keys", "values"),
                                                       ops.arange(row + 1) * segment_length + column)

    def masked_max(x):
        return ops.max(ops.where(keep[:, None], x, -float("inf")), axis=2)

    # The new position's inclusive prefix abstractions: its column up to it, its row up to it.
    cache = _write(
        cache, position,
        column_keys=ops.max(column_keys, axis=2, keepdims=True),
        column_values=local_expectation(ops.max(column_queries, axis=2), column_keys, column_values)[:, :, None],
        row_keys=masked_max(own_keys)[:, :, None],
        row_values=local_expectation(masked_max(own_queries), own_keys, own_values, keep)[:, :, None])

    earlier = ops.arange(row) * segment_length + column  # (r' < r, c)
    previous_row = ops.maximum((row - 1) * segment_length + ops.arange(segment_length), 0)  # (r - 1, t)
    out = _attend(q, [
        (column_keys[:, :, :-1], column_values[:, :, :-1], None),  # column direct
        (own_keys, own_values, keep),  # row direct
        (*_read(cache, ("column_keys", "column_values"), previous_row),  # vertical: column t above row r
         ops.logical_and(ops.arange(segment_length) != column, row >= 1)),
        (*_read(cache, ("row_keys", "row_values"), ops.maximum(earlier - 1, 0)), column >= 1),  # top-left
        (*_read(cache, ("right_keys", "right_values"), earlier), column < segment_length - 1),  # top-right
    ])

    def summarise():  # the row is complete: the abstractions of its parts right of each column
        keys, values = prefix_summaries(*(x[:, :, :, None] for x in (own_queries, own_keys, own_values)),
                                        reverse=True)
        start = position - (segment_length - 1)
        return dict(cache, right_keys=kv_cache.write_span(cache["right_keys"], start, keys[:, :, :, 0]),
                    right_values=kv_cache.write_span(cache["right_values"], start, values[:, :, :, 0]))

    return out, ops.cond(column == segment_length - 1, summarise, lambda: cache)


def start(x, q, k, v, cache_length, *, variant, segment_length=None, causal=True, scale=None,
          local_summary="identity-max", query_pooling_kernel=None, key_pooling_kernel=None, row_summary="none",
          row_projection=None, max_length=None, **unused_training_options):
    """The decoding cache of a prompt, for positions up to `cache_length` - 1 (the generation's maximum length).

    Args:
      x: the layer's input [batch, n, dim] (the row projection reads it); q, k, v: [batch, heads, n, dim].
      variant, segment_length, causal, scale, local_summary, query_pooling_kernel, key_pooling_kernel,
        row_summary, max_length: as in `combiner_attention`; ValueError unless causal.
      row_projection: for row_summary "proj" / "wsum_proj", a function of the rows' inputs x [b, l, dim]
        returning the function from summaries to region keys (`CombinerAttention.row_projection`).
    """
    require_causal(causal, f"Combiner-{variant}")
    q = _scaled(q, scale)
    cache = {name: kv_cache.from_prompt(y, cache_length)
             for name, y in (("queries", q), ("keys", k), ("values", v))}
    if variant == "fixed":
        cache.update(_start_fixed(q, k, v, cache_length, segment_length, local_summary, query_pooling_kernel,
                                  key_pooling_kernel))
    elif variant == "logsparse":
        cache.update(_start_logsparse(q, k, v, cache_length, max_length))
    elif variant == "axial":
        cache.update(_start_axial(x, q, k, v, cache_length, segment_length, row_summary,
                                  row_projection if row_summary in ("proj", "wsum_proj") else None))
    else:
        cache.update(_start_mixture(q, k, v, cache_length, segment_length))
    return cache


def step(x, q, k, v, cache, position, *, variant, segment_length=None, causal=True, scale=None,
         local_summary="identity-max", query_pooling_kernel=None, key_pooling_kernel=None, row_summary="none",
         row_projection=None, **unused_training_options):
    """The heads [batch, heads, 1, value_dim] at `position` (a scalar int tensor) and the updated cache, given
    the new token's layer input x [batch, 1, dim] and q, k, v [batch, heads, 1, dim]; options as in `start`."""
    require_causal(causal, f"Combiner-{variant}")
    q = _scaled(q, scale)
    cache = _write(cache, position, queries=q, keys=k, values=v)
    if variant == "fixed":
        return _fixed_step(q, cache, position, segment_length, local_summary, query_pooling_kernel,
                           key_pooling_kernel)
    if variant == "logsparse":
        return _logsparse_step(q, k, v, cache, position)
    if variant == "axial":
        projection = row_projection if row_summary in ("proj", "wsum_proj") else None
        if projection is not None:
            cache = _write(cache, position, inputs=x[:, None])
        return _axial_step(q, cache, position, segment_length, row_summary, projection)
    return _mixture_step(q, cache, position, segment_length)


register_decoder("combiner", start, step)
