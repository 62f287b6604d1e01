"""Incremental decoding of attention kernels: one new query per step against a cache of the earlier positions.

Every kernel that can decode registers a decoder under its kernel name: two functions with one signature for
every kernel (dense, local, sparse, routing, Combiner):

    cache = start(x, q, k, v, cache_length, **options)        # the prompt: x [b, n, dim]; q, k, v [b, h, n, d]
    out, cache = step(x, q, k, v, cache, position, **options)  # the new token: x [b, 1, dim]; q, k, v [b, h, 1, d]

x is the attention layer's input (read only by decoders whose kernel reads it, e.g. Combiner's row projection);
q, k, v are its projections (k is None where the kernel takes none, e.g. routing heads that share queries and
keys). `cache_length` is how many positions the cache holds: the generation's total length, prompt included.
`options` are the kernel's own (`causal`, `block_size`, relative tables, ...). `position` is the new token's
index (a scalar int tensor); the step returns what the kernel returns at that row of a full pass over
positions 0 .. position, and reads only the cached positions the kernel's pattern lets that row see, so its
cost follows the pattern, not the prefix. Caches are nested structures of tensors and, under TensorFlow,
TensorArrays (see `common.kv_cache`), so they can be loop variables.

Every decoder is written in `keras.ops` and decodes under any Keras backend.
"""

import math

from keras import ops

from common import kv_cache
from common.attention import checks, masks, relative
from common.attention.softmax import masked_softmax

_DECODERS = {}


def register_decoder(name, start, step):
    """Makes kernel `name` decodable incrementally (`start` and `step` as in the module docstring)."""
    _DECODERS[name] = (start, step)


def get_decoder(name):
    """The (start, step) pair of kernel `name`; `ValueError` naming the decodable kernels otherwise."""
    if name not in _DECODERS:
        raise ValueError(f"attention kernel {name!r} has no incremental decoder; kernels that have one: "
                         f"{sorted(_DECODERS)}.")
    return _DECODERS[name]


def require_causal(causal, kernel):
    if not causal:
        raise ValueError(f"incremental decoding needs causal attention; this {kernel} attention has "
                         f"causal=False.")


def attend_gathered(q, keys, values, key_positions, position, keep=None, scale=None, relative_keys=None,
                    relative_values=None):
    """Attention of one query per head over gathered keys, as the full kernels compute it.

    Args:
      q: [batch, heads, 1, key_dim], the query at `position`.
      keys, values: [batch, heads, n, dim], the cached entries the pattern lets it see.
      key_positions: int, broadcastable to [batch, heads, n]: where each gathered key sits in the sequence
        (distances for relative attention).
      keep: optional bool, broadcastable to [batch, heads, n]; False entries are ignored (padding of a
        fixed-size gather). A query with no kept key returns zeros, as the full kernels do.
      scale, relative_keys, relative_values: as in `dense_attention`.

    Returns:
      [batch, heads, 1, value_dim].
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    logits = ops.cast(ops.einsum("bhqd,bhkd->bhqk", q, keys), "float32")
    distances = None
    if relative_keys is not None or relative_values is not None:
        shape = ops.shape(keys)[:3]
        distances = ops.broadcast_to(key_positions - position, shape)
    if relative_keys is not None:
        rel_k = ops.cast(relative.relative_embeddings(relative_keys, distances), q.dtype)
        logits = logits + ops.cast(ops.einsum("bhqd,bhkd->bhqk", q, rel_k), "float32")
    logits = logits * scale
    weights = masked_softmax(logits, None if keep is None else ops.expand_dims(keep, -2))
    weights = ops.cast(weights, values.dtype)
    out = ops.einsum("bhqk,bhkd->bhqd", weights, values)
    if relative_values is not None:
        rel_v = ops.cast(relative.relative_embeddings(relative_values, distances), values.dtype)
        out = out + ops.einsum("bhqk,bhkd->bhqd", weights, rel_v)
    return out


def start_key_value_cache(x, q, k, v, cache_length, **unused_options):
    """The cache of kernels that need only keys and values: one slot per position for each."""
    return {"keys": kv_cache.from_prompt(k, cache_length), "values": kv_cache.from_prompt(v, cache_length)}


def write_key_value(cache, k, v, position):
    """`cache` with the new token's key and value stored at `position`."""
    return dict(cache, keys=kv_cache.write(cache["keys"], position, k),
                values=kv_cache.write(cache["values"], position, v))


def dense_step(x, q, k, v, cache, position, *, causal=True, scale=None, relative_keys=None, relative_values=None,
               bias=None, mask=None, **unused_training_options):
    """Dense attention over every cached position: O(prefix) per step, as dense attention is."""
    require_causal(causal, "dense")
    if bias is not None or mask is not None:
        raise ValueError("incremental dense decoding takes no bias or mask (they are [q_length, k_length] "
                         "tensors of a full pass).")
    cache = write_key_value(cache, k, v, position)
    positions = ops.arange(position + 1)
    keys, values = kv_cache.read(cache["keys"], positions), kv_cache.read(cache["values"], positions)
    out = attend_gathered(q, keys, values, positions, position, scale=scale, relative_keys=relative_keys,
                          relative_values=relative_values)
    return out, cache


def local_step(x, q, k, v, cache, position, *, block_size, look_back=1, look_ahead=None, causal=True, scale=None,
               relative_keys=None, relative_values=None, segment_ids=None, max_distance=None,
               **unused_training_options):
    """Blocked local attention: the query's block and `look_back` blocks before it, at most
    (look_back + 1) x block_size positions, whatever the prefix."""
    require_causal(causal, "local")
    masks.resolve_look_ahead(look_ahead, look_back, causal)
    checks.check_positive_int("block_size", block_size)
    if segment_ids is not None:
        raise ValueError("incremental local decoding does not take segment_ids (they are per-sequence).")
    cache = write_key_value(cache, k, v, position)
    window = (look_back + 1) * block_size
    positions = position - window + 1 + ops.arange(window)
    first_visible = (position // block_size - look_back) * block_size
    keep = positions >= ops.maximum(first_visible, 0)
    if max_distance is not None:
        keep = ops.logical_and(keep, position - positions < max_distance)
    safe = ops.maximum(positions, 0)
    keys, values = kv_cache.read(cache["keys"], safe), kv_cache.read(cache["values"], safe)
    out = attend_gathered(q, keys, values, positions, position, keep=keep, scale=scale,
                          relative_keys=relative_keys, relative_values=relative_values)
    return out, cache


register_decoder("dense", start_key_value_cache, dense_step)
register_decoder("local", start_key_value_cache, local_step)
