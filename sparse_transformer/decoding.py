"""Incremental decoding of `sparse_attention`: each new query reads only the cached positions its pattern needs.

What the cache holds: for each head group of the spec (`local|strided` has two), one keys and one values
`common.kv_cache` TensorArray with a slot per position, for that group's heads only, so a group reads nothing
for the other groups' heads. What a step reads (l = stride, c = summary, t = the new position): it writes the
new key and value at t, then gathers, in one read of keys and one of values per group, the candidates of each
atomic pattern of the group's union, their count derived from t (never from the maximum length):
  - `all`:     0 .. t (t + 1 positions, as dense attention);
  - `local`:   t - l + 1 .. t (l positions whatever t; the released code's `b` cache of the last l keys);
  - `block`:   the query's block, floor(t / l) l .. floor(t / l) l + l - 1 (l slots; those after t are masked);
  - `strided`: t, t - l, t - 2l, ... down to t mod l (floor(t / l) + 1: the pattern's own keys, the released
               code's `bT` cache);
  - `summary`: in each block 0 .. floor(t / l), the summary sub-blocks of the group's heads ((floor(t / l) + 1)
               x c per distinct sub-block; each head masks the sub-blocks of the others);
  - `fixed` = `block` + `summary`.
So per new token local and block cost O(l), strided O(t / l), summary O(t c / l), fixed O(l + t c / l), all O(t):
each what the row's pattern holds, up to the masked padding of one block. The gathers of strided, summary and all
change size from step to step, which a `tf.while_loop` allows (the caches keep their shapes); a fixed-size gather
of cache_length / l slots would cost the longest row's work at every step. Which gathered key a head keeps is
`patterns.union_keep`, the predicate of the reference mask `patterns.attention_mask`; in a union a key is kept
only by the first part that covers it, so one softmax runs over exactly the row's keys, each once, as in the
full kernel.
"""

from keras import ops

from common import kv_cache
from common.attention import register_decoder
from common.attention.decoding import attend_gathered, require_causal, start_key_value_cache, write_key_value
from sparse_transformer import patterns


def head_groups(pattern, stride, summary, num_heads, num_summary_patterns):
    """The spec's head groups as (atoms, global head indices), after checking the options."""
    groups = patterns.check_pattern_options(pattern, stride, summary, num_heads, num_summary_patterns)
    per_group = num_heads // len(groups)
    return [(atoms, range(g * per_group, (g + 1) * per_group)) for g, atoms in enumerate(groups)]


def sparse_start(x, q, k, v, cache_length, *, pattern="fixed", stride=None, summary=None, causal=True,
                 num_summary_patterns=1, **unused_options):
    """The prompt's keys and values [b, h, n, d], one TensorArray pair per head group."""
    require_causal(causal, "sparse")
    groups = head_groups(pattern, stride, summary, k.shape[1], num_summary_patterns)
    return tuple(start_key_value_cache(x, q, k[:, heads.start:heads.stop], v[:, heads.start:heads.stop],
                                       cache_length) for _, heads in groups)


def candidate_positions(atom, position, heads, stride, summary, num_summary_patterns):
    """int [n]: a superset of the keys that `atom` lets row `position` see, its size set by the pattern (module
    docstring). Entries may be negative or after `position`: the caller masks and clamps them."""
    if atom == "all":
        return ops.arange(position + 1)
    if atom == "local":
        return position - stride + 1 + ops.arange(stride)
    if atom == "block":
        return position // stride * stride + ops.arange(stride)
    blocks = ops.arange(position // stride + 1)
    if atom == "strided":
        return position - stride * blocks
    ranges = sorted({patterns.summary_range(head, stride, summary, num_summary_patterns) for head in heads})
    offsets = ops.convert_to_tensor([offset for first, last in ranges for offset in range(first, last)], "int32")
    return ops.reshape(blocks[:, None] * stride + offsets[None, :], (-1,))


def row_keys(atoms, position, heads, stride, summary, num_summary_patterns):
    """The candidates of a union for row `position` ([n]) and which of them each head keeps ([heads, n])."""
    options = dict(stride=stride, summary=summary, num_summary_patterns=num_summary_patterns)
    head_index = ops.convert_to_tensor(list(heads), "int32")[:, None]
    candidates, keeps = [], []
    for i, atom in enumerate(atoms):
        key = candidate_positions(atom, position, heads, **options)
        keep = (key >= 0) & patterns.union_keep((atom,), position, key, head_index, causal=True, **options)
        for earlier in atoms[:i]:  # Each key once: what an earlier part covers is masked here.
            keep = keep & ~patterns.atom_keep(earlier, position, key, head_index, causal=True, **options)
        candidates.append(key)
        keeps.append(ops.broadcast_to(keep, (len(heads), ops.shape(key)[0])))
    return ops.concatenate(candidates, axis=0), ops.concatenate(keeps, axis=1)


def sparse_step(x, q, k, v, cache, position, *, pattern="fixed", stride=None, summary=None, causal=True,
                num_summary_patterns=1, scale=None, query_chunk_size=None, dropout_rate=0.0, seed=None):
    """The sparse kernel's row at `position`. query_chunk_size, dropout_rate and seed shape training only (a
    step has one query and never trains) and are ignored."""
    require_causal(causal, "sparse")
    groups = head_groups(pattern, stride, summary, q.shape[1], num_summary_patterns)
    if len(cache) != len(groups):
        raise ValueError(f"the cache has {len(cache)} head groups but pattern {pattern!r} has {len(groups)}; "
                         f"start it with the same options.")
    outputs, caches = [], []
    for (atoms, heads), group_cache in zip(groups, cache):
        span = slice(heads.start, heads.stop)
        group_cache = write_key_value(group_cache, k[:, span], v[:, span], position)
        positions, keep = row_keys(atoms, position, heads, stride, summary, num_summary_patterns)
        safe = ops.clip(positions, 0, position)  # only written slots are read; what they stand in for is masked
        keys, values = kv_cache.read(group_cache["keys"], safe), kv_cache.read(group_cache["values"], safe)
        outputs.append(attend_gathered(q[:, span], keys, values, positions, position, keep=keep, scale=scale))
        caches.append(group_cache)
    out = outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=1)
    return out, tuple(caches)


register_decoder("sparse", sparse_start, sparse_step)
