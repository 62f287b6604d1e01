"""`sparse_attention`: the Sparse Transformer's factorised attention, computed sparsely.

Each atomic pattern of a spec (see `sparse_transformer.patterns`) is computed in the layout where its keys are
contiguous, so no length x length tensor is ever built:
  - `local`:   queries in blocks of `stride`, keys in the window of the previous and own block (and the next
               one when bidirectional): O(length x stride);
  - `block`:   queries and keys in the same block of `stride`: O(length x stride);
  - `strided`: the sequence transposed into [stride, length / stride] so that each residue class mod `stride`
               is contiguous (the released code's `strided_transpose`), attention inside each class:
               O(length^2 / stride);
  - `summary`: the summary positions of every block gathered once per head (length / stride x summary keys),
               every query against them: O(length^2 x summary / stride);
  - `all`:     every key (dense).
With stride about sqrt(length), local, block and strided cost O(length sqrt(length)); so does fixed
(`block+summary`) with a small summary. A union (`local+strided`, `fixed`) takes one softmax over the logits of
all its parts, each key counted once (a key that an earlier part already covers is masked in the later
ones). The length is padded inside to a multiple of the stride and the output cut.
"""

import functools
import math

import keras
from keras import ops

from common.attention import checks, dense_attention, register_kernel
from common.layers import SelfAttention
from common.attention.softmax import MASK_VALUE, masked_softmax
from sparse_transformer import patterns
from sparse_transformer.parts import Part, from_groups, to_groups

# Chunks of queries in the causal path of patterns whose keys span the whole sequence (see attend_union).
PREFIX_CHUNKS = 4


def sparse_attention(q, k, v, *, pattern="fixed", stride=None, summary=None, causal=True,
                     num_summary_patterns=1, scale=None, query_chunk_size=None, dropout_rate=0.0, seed=None):
    """Factorised sparse attention; equals `dense_attention(q, k, v, mask=attention_mask(...))`.

    Args:
      q, k: [batch, heads, length, key_dim]. v: [batch, heads, length, value_dim]. Self-attention only.
      pattern: a spec of `sparse_transformer.patterns`: `all`, `local`, `strided`, `block`, `summary`, `fixed`,
        unions with `+` (one softmax in one head) and head splits with `|`.
      stride: l, the block size and the stride of `strided` (the paper's l, about sqrt(length)).
      summary: c, the summary positions per block of `summary` / `fixed` (the paper uses 8 to 32).
      causal: query i never sees j > i; False gives the bidirectional patterns.
      num_summary_patterns: distinct summary sub-blocks across heads (the released code's `num_verts`): head h
        takes the sub-block h % num_summary_patterns, counted from the end of each block.
      scale: logits multiplier; default 1 / sqrt(key_dim).
      query_chunk_size: None computes all queries at once. A multiple of the stride processes the queries in
        chunks of that many positions, each recomputed in the backward pass (`keras.remat`), so that training
        keeps one chunk's logits at a time instead of all: for very long sequences (needs a static length).
      dropout_rate, seed: dropout on the attention probabilities (the paper uses none). With
        query_chunk_size, the recompute draws new dropout masks: use one or the other.

    Returns:
      [batch, heads, length, value_dim].
    """
    checks.check_qkv(q, k, v)
    checks.check_self_attention(q, k)
    heads = q.shape[1]
    if heads is None:
        raise ValueError(f"sparse_attention needs a static number of heads; got q {tuple(q.shape)}.")
    groups = patterns.check_pattern_options(pattern, stride, summary, heads, num_summary_patterns)
    if query_chunk_size is not None:
        checks.check_positive_int("query_chunk_size", query_chunk_size)
        if query_chunk_size % (stride or 1):
            raise ValueError(f"query_chunk_size ({query_chunk_size}) must be a multiple of the stride ({stride}).")
        if q.shape[2] is None:
            raise ValueError("query_chunk_size needs a static length.")
        if dropout_rate:
            raise ValueError("query_chunk_size recomputes the attention in the backward pass, which would redraw "
                             "the dropout masks; use dropout_rate=0 with it.")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    options = dict(stride=stride or q.shape[2], summary=summary, causal=causal,
                   num_summary_patterns=num_summary_patterns, scale=scale, dropout_rate=dropout_rate, seed=seed,
                   query_chunk_size=query_chunk_size)
    per_group = heads // len(groups)
    outputs = []
    for g, atoms in enumerate(groups):
        head_slice = slice(g * per_group, (g + 1) * per_group)
        outputs.append(attend_union(atoms, q[:, head_slice], k[:, head_slice], v[:, head_slice],
                                    heads=range(head_slice.start, head_slice.stop), **options))
    return outputs[0] if len(outputs) == 1 else ops.concatenate(outputs, axis=1)


def attend_union(atoms, q, k, v, *, heads, stride, summary, causal, num_summary_patterns, scale, dropout_rate,
                 seed, query_chunk_size):
    """One softmax over the parts of a union of atomic patterns, for the heads `heads` (global indices)."""
    if atoms == ("all",) and query_chunk_size is None:
        return dense_attention(q, k, v, causal=causal, scale=scale, dropout_rate=dropout_rate, seed=seed)
    length = ops.shape(q)[2]
    padded_length = (length + stride - 1) // stride * stride
    if not isinstance(length, int) or padded_length != length:
        padding = [[0, 0], [0, 0], [0, padded_length - length], [0, 0]]
        q, k, v = (ops.pad(x, padding) for x in (q, k, v))
    options = dict(atoms=atoms, length=length, heads=heads, stride=stride, summary=summary, causal=causal,
                   num_summary_patterns=num_summary_patterns, scale=scale, dropout_rate=dropout_rate, seed=seed)
    if query_chunk_size is not None:
        return attend_in_chunks(q, k, v, query_chunk_size, **options)[:, :, :length]
    if causal and isinstance(padded_length, int) and set(atoms) & {"all", "strided", "summary"}:
        # Causal queries see no later key: in a few chunks of queries, each against its key prefix, the parts
        # whose keys span the sequence skip most of the masked upper triangle (with 4 chunks, 5/8 of the work).
        blocks = padded_length // stride
        bounds = sorted({-(-blocks * i // PREFIX_CHUNKS) * stride for i in range(1, PREFIX_CHUNKS)} -
                        {0, padded_length})
        outputs = [attend_queries(q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], start=start, stop=stop,
                                  key_offset=0, **options)
                   for start, stop in zip([0] + bounds, bounds + [padded_length])]
        return ops.concatenate(outputs, axis=2)[:, :, :length]
    return attend_queries(q, k, v, start=0, stop=padded_length, key_offset=0, **options)[:, :, :length]


def split_at(x, bounds):
    """x split along axis 2 at the positions `bounds` (none: x whole)."""
    return ops.split(x, bounds, axis=2) if bounds else [x]


def attend_in_chunks(q, k, v, chunk_size, **options):
    """`attend_queries` chunk by chunk of queries, each recomputed in the backward pass.

    q, k and v are split once (the gradient of a split is one concatenation, where slicing each chunk out of
    the whole would give every chunk a whole-length gradient); a chunk takes only the key pieces it can see:
    the previous piece's last block (and the next piece's first block when bidirectional) for local and block
    patterns, every earlier piece (every piece when bidirectional) otherwise. The strided pattern alone is
    chunked by residue classes instead, which share no keys (`strided_in_chunks`).
    """
    stride, causal = options["stride"], options["causal"]
    padded_length = q.shape[2]
    if options["atoms"] == ("strided",):
        return strided_in_chunks(q, k, v, chunk_size, **options)
    bounds = list(range(chunk_size, padded_length, chunk_size))
    q_pieces, k_pieces, v_pieces = (split_at(x, bounds) for x in (q, k, v))
    starts = [0] + bounds
    outputs = []
    for i, start in enumerate(starts):
        stop = start + q_pieces[i].shape[2]
        if set(options["atoms"]) <= {"local", "block"}:
            key_start = start - stride if i else start

            def window(pieces, i=i):
                keys = ([pieces[i - 1][:, :, -stride:]] if i else []) + [pieces[i]]
                if not causal and i + 1 < len(pieces):
                    keys.append(pieces[i + 1][:, :, :stride])
                return keys
            k_in, v_in = window(k_pieces), window(v_pieces)
        else:
            key_start = 0
            k_in, v_in = (pieces[:i + 1] if causal else pieces for pieces in (k_pieces, v_pieces))

        def attend(q_chunk, *keys_and_values, start=start, stop=stop, key_start=key_start, count=len(k_in)):
            keys, values = keys_and_values[:count], keys_and_values[count:]
            return attend_queries(q_chunk, ops.concatenate(keys, axis=2), ops.concatenate(values, axis=2),
                                  start=start, stop=stop, key_offset=key_start, **options)
        # Recomputed in the backward pass: only the inputs are kept, not the chunk's logits.
        outputs.append(keras.remat(attend)(q_pieces[i], *k_in, *v_in))
    return ops.concatenate(outputs, axis=2)


def strided_in_chunks(q, k, v, chunk_size, *, length, stride, causal, scale, dropout_rate, seed, **unused):
    """The strided pattern in chunks of whole residue classes: each class attends only inside itself, so the
    chunks are independent and each one's gradient is its own size."""
    per_class = q.shape[2] // stride
    q, k, v = (to_groups(x, "residues", stride, axis=2) for x in (q, k, v))  # [b, h, stride, per_class, d]
    classes = max(1, chunk_size // per_class)
    bounds = list(range(classes, stride, classes))
    pieces = [split_at(x, bounds) for x in (q, k, v)]
    index = ops.arange(per_class)

    def attend(q_chunk, k_chunk, v_chunk, first_class):
        positions = index[None, :] * stride + ops.arange(first_class, first_class + q_chunk.shape[2])[:, None]
        keep = positions[:, None, :] < length
        if causal:
            keep = keep & (index[None, :] <= index[:, None])
        logits = ops.cast(ops.einsum("bhgqd,bhgkd->bhgqk", q_chunk, k_chunk), "float32") * scale
        weights = ops.cast(masked_softmax(logits, keep, dropout_rate, seed), v_chunk.dtype)
        return ops.einsum("bhgqk,bhgkd->bhgqd", weights, v_chunk)

    outputs = [keras.remat(lambda *x, first=first: attend(*x, first))(*chunk)
               for first, chunk in zip([0] + bounds, zip(*pieces))]
    return from_groups(ops.concatenate(outputs, axis=2), "residues", axis=2)


def attend_queries(q, k, v, *, start, stop, key_offset, atoms, length, heads, stride, summary, causal,
                   num_summary_patterns, scale, dropout_rate, seed):
    """The union's output for the queries q = positions [start, stop); k and v start at key_offset."""
    head_index = ops.reshape(ops.convert_to_tensor(list(heads)), (-1, 1, 1, 1))
    keep_options = dict(stride=stride, summary=summary, num_summary_patterns=num_summary_patterns, causal=causal)
    parts, logits, keeps = [], [], []
    for i, atom in enumerate(atoms):
        part = Part(atom, k, v, start, stop, stride, summary, heads, num_summary_patterns, causal, key_offset)
        query = part.query_positions[..., :, None]
        key = part.key_positions[..., None, :]
        keep = (key >= 0) & (key < length) & patterns.union_keep((atom,), query, key, head_index, **keep_options)
        for earlier in atoms[:i]:  # Each key once: what an earlier part covers is masked here.
            keep = keep & ~patterns.atom_keep(earlier, query, key, head_index, stride, summary,
                                              num_summary_patterns, causal)
        q_groups = to_groups(q, part.grouping, stride, axis=2)
        logits.append(ops.cast(ops.einsum("bhgqd,bhgkd->bhgqk", q_groups, part.keys), "float32") * scale)
        parts.append(part)
        keeps.append(keep)

    if len(parts) == 1:
        weights = ops.cast(masked_softmax(logits[0], keeps[0], dropout_rate, seed), v.dtype)
        return from_groups(ops.einsum("bhgqk,bhgkd->bhgqd", weights, parts[0].values), parts[0].grouping, axis=2)

    # A union: one softmax over all parts, merged through per-query statistics (the running maximum and the
    # normaliser, [b, h, queries] in natural order), so that no part's logits are moved or concatenated.
    def natural(x, part):
        return from_groups(x[..., None], part.grouping, axis=2)[..., 0]

    def grouped(x, part):
        return to_groups(x[..., None], part.grouping, stride, axis=2)[..., 0]

    masked = [ops.where(keep, x, MASK_VALUE) for x, keep in zip(logits, keeps)]
    row_max = ops.stop_gradient(functools.reduce(
        ops.maximum, [natural(ops.max(x, axis=-1), part) for x, part in zip(masked, parts)]))
    exponentials = [ops.where(keep, ops.exp(x - grouped(row_max, part)[..., None]), 0.0)
                    for x, keep, part in zip(masked, keeps, parts)]
    total = functools.reduce(ops.add, [natural(ops.sum(e, axis=-1), part) for e, part in zip(exponentials, parts)])
    total = ops.where(total > 0, total, 1.0)  # a query with no visible key gets zeros, as in masked_softmax
    out = 0
    for e, part in zip(exponentials, parts):
        weights = e / grouped(total, part)[..., None]
        if dropout_rate:
            weights = keras.random.dropout(weights, dropout_rate, seed=seed)
        weights = ops.cast(weights, v.dtype)
        out = out + from_groups(ops.einsum("bhgqk,bhgkd->bhgqd", weights, part.values), part.grouping, axis=2)
    return out


register_kernel("sparse", sparse_attention)


@keras.saving.register_keras_serializable(package="sparse_transformer")
class SparseAttention(SelfAttention):
    """Multi-head self-attention with a Sparse Transformer pattern (see `sparse_attention`).

    Args:
      num_heads, key_dim, value_dim: heads and per-head widths (the paper's half-size q/k: key_dim smaller than
        value_dim).
      pattern, stride, summary, num_summary_patterns, causal: the attention pattern (see
        `sparse_transformer.patterns`); `num_heads` must be divisible by the pattern's head groups and by
        num_summary_patterns.
      query_chunk_size: attention in chunks of queries, each recomputed in the backward pass (see
        `sparse_attention`); for very long sequences.
      use_bias: biases on the projections (the released code has them, initialised to zero).
      dropout: dropout on the attention probabilities (the paper has none).
    """

    derived_arguments = ("kernel", "kernel_options", "max_relative_position")

    def __init__(self, num_heads, key_dim, pattern="fixed", stride=128, summary=None, num_summary_patterns=1,
                 query_chunk_size=None, value_dim=None, causal=True, use_bias=True, dropout=0.0, kernel_initializer="glorot_uniform",
                 output_initializer=None, output_dim=None, seed=None, **kwargs):
        patterns.check_pattern_options(pattern, stride, summary, num_heads, num_summary_patterns)
        super().__init__(**dict(
            kwargs, num_heads=num_heads, key_dim=key_dim, value_dim=value_dim, kernel="sparse",
            kernel_options=dict(pattern=pattern, stride=stride, summary=summary,
                                num_summary_patterns=num_summary_patterns, query_chunk_size=query_chunk_size),
            causal=causal, use_bias=use_bias, max_relative_position=0, dropout=dropout,
            kernel_initializer=kernel_initializer, output_initializer=output_initializer, output_dim=output_dim,
            seed=seed))
        self.pattern = pattern
        self.stride = stride
        self.summary = summary
        self.num_summary_patterns = num_summary_patterns
        self.query_chunk_size = query_chunk_size

    def get_config(self):
        config = super().get_config()
        config.update(pattern=self.pattern, stride=self.stride, summary=self.summary,
                      num_summary_patterns=self.num_summary_patterns, query_chunk_size=self.query_chunk_size)
        return config
