"""Block layouts for block-sparse attention: which [query block, key block] tiles a kernel computes.

A layout is a boolean numpy array [num_heads, num_blocks, num_blocks] (query blocks x key blocks, True = the
block is computed), where num_blocks = sequence length / block size. The builders reproduce DeepSpeed's sparsity
configs (`deepspeed/ops/sparse_attention/sparsity_config.py`) and OpenAI's sparse_attention `fixed` layout, with
DeepSpeed's argument names; `num_blocks` stands for DeepSpeed's `seq_len // block`. Causality inside the
diagonal blocks is the kernel's job, not the layout's: a unidirectional layout only keeps blocks on or below the
diagonal (except DeepSpeed's random blocks in `variable_layout`, see there).
"""

import numpy as np

from common.attention.checks import check_positive_int

ATTENTION_KINDS = ("unidirectional", "bidirectional")


def _check_attention(attention):
    """Returns whether the layout is causal; DeepSpeed's two `attention` values only."""
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}; got {attention!r}.")
    return attention == "unidirectional"


def _check_sizes(num_heads, num_blocks):
    """Validates the two sizes every layout has."""
    check_positive_int("num_heads", num_heads)
    check_positive_int("num_blocks", num_blocks)


def _check_at_most_num_blocks(name, value, num_blocks):
    """A count of blocks cannot exceed the blocks there are (DeepSpeed checks this for bigbird and the windows)."""
    if value > num_blocks:
        raise ValueError(f"{name} ({value}) must not exceed num_blocks ({num_blocks}).")


def _grid(num_blocks):
    """Query-block indices as a column and key-block indices as a row, for broadcasting."""
    blocks = np.arange(num_blocks)
    return blocks[:, None], blocks[None, :]


def _per_head(num_heads, different_layout_per_head, head_layout):
    """Stacks `head_layout(h)` for every head, or copies head 0's to all heads as DeepSpeed does."""
    if different_layout_per_head:
        return np.stack([head_layout(h) for h in range(num_heads)])
    return np.repeat(head_layout(0)[None], num_heads, axis=0)


def _windows(num_blocks, sizes, causal):
    """Non-overlapping diagonal windows of `sizes` blocks (the last size repeated), lower-triangular if causal."""
    layout = np.zeros((num_blocks, num_blocks), dtype=bool)
    start, i = 0, 0
    while start < num_blocks:
        end = min(start + sizes[min(i, len(sizes) - 1)], num_blocks)
        layout[start:end, start:end] = True
        start, i = end, i + 1
    return np.tril(layout) if causal else layout


def _global_blocks(num_blocks, start, end, causal, horizontal):
    """Key blocks [start, end) seen by every query block (causal: by the blocks at or after each of them), and
    with `horizontal` the query blocks [start, end) also see every key block."""
    query, key = _grid(num_blocks)
    layout = (key >= start) & (key < end)
    if causal:
        layout = layout & (query >= key)
    if horizontal:
        layout = layout | ((query >= start) & (query < end))
    return layout


def _sliding_window(num_blocks, num_sliding_window_blocks, causal):
    """Key blocks within num_sliding_window_blocks // 2 of the query block (causal: only behind it)."""
    query, key = _grid(num_blocks)
    half = num_sliding_window_blocks // 2
    return (query - key <= half) & (key - query <= (0 if causal else half))


def _random_blocks(rng, num_blocks, num_random_blocks, causal):
    """`num_random_blocks` distinct random key blocks per query block (causal: drawn from those at or before it,
    as many as there are)."""
    layout = np.zeros((num_blocks, num_blocks), dtype=bool)
    for row in range(num_blocks):
        allowed = row + 1 if causal else num_blocks
        layout[row, rng.choice(allowed, size=min(num_random_blocks, allowed), replace=False)] = True
    return layout


def _global_spans(global_block_indices, global_block_end_indices):
    """[start, end) spans of global blocks: single indices, or DeepSpeed's [start, end) index ranges."""
    for i, index in enumerate(global_block_indices):
        check_positive_int(f"global_block_indices[{i}]", index, minimum=0)
    if global_block_end_indices is None:
        return [(index, index + 1) for index in global_block_indices]
    if len(global_block_end_indices) != len(global_block_indices):
        raise ValueError(f"global_block_end_indices must have one end per start of global_block_indices; got "
                         f"{len(global_block_end_indices)} ends for {len(global_block_indices)} starts.")
    for i, (start, end) in enumerate(zip(global_block_indices, global_block_end_indices)):
        check_positive_int(f"global_block_end_indices[{i}]", end)
        if start >= end:
            raise ValueError(f"global_block_indices[{i}] ({start}) must be smaller than "
                             f"global_block_end_indices[{i}] ({end}).")
    return list(zip(global_block_indices, global_block_end_indices))


def dense_layout(num_heads, num_blocks, attention="bidirectional"):
    """Every block (unidirectional: every block on or below the diagonal): the dense baseline.

    DeepSpeed `DenseSparsityConfig`, which only has the all-ones bidirectional case.
    """
    _check_sizes(num_heads, num_blocks)
    layout = np.ones((num_blocks, num_blocks), dtype=bool)
    if _check_attention(attention):
        layout = np.tril(layout)
    return np.repeat(layout[None], num_heads, axis=0)


def fixed_layout(num_heads, num_blocks, num_local_blocks=4, num_global_blocks=1, attention="bidirectional",
                 horizontal_global_attention=False, num_different_global_patterns=1,
                 different_layout_per_head=False):
    """The Sparse Transformer's fixed pattern at block granularity: DeepSpeed `FixedSparsityConfig`.

    Local: non-overlapping windows of `num_local_blocks`. Global: in every window the `num_global_blocks` columns
    starting at num_local_blocks - (1 + h % num_different_global_patterns) * num_global_blocks, seen by every
    query block (unidirectional: by those at or below each column; DeepSpeed starts all the columns of a group at
    its first one, putting blocks above the diagonal when num_global_blocks > 1). A short final window takes its
    global columns at min(window start + offset, num_blocks - num_global_blocks). `horizontal_global_attention`
    also lets the global query blocks see everything (bidirectional only). OpenAI's `fixed` maps as
    num_local_blocks = l / block, num_global_blocks = vert_size, num_different_global_patterns = num_verts.
    """
    _check_sizes(num_heads, num_blocks)
    check_positive_int("num_local_blocks", num_local_blocks)
    check_positive_int("num_global_blocks", num_global_blocks)
    check_positive_int("num_different_global_patterns", num_different_global_patterns)
    causal = _check_attention(attention)
    if num_local_blocks % num_global_blocks:
        raise ValueError(f"num_local_blocks ({num_local_blocks}) must be divisible by num_global_blocks "
                         f"({num_global_blocks}).")
    _check_at_most_num_blocks("num_global_blocks", num_global_blocks, num_blocks)
    if causal and horizontal_global_attention:
        raise ValueError("horizontal_global_attention needs attention='bidirectional'.")
    if num_different_global_patterns > 1 and not different_layout_per_head:
        raise ValueError(f"num_different_global_patterns ({num_different_global_patterns}) > 1 needs "
                         f"different_layout_per_head=True.")
    if num_different_global_patterns > num_local_blocks // num_global_blocks:
        raise ValueError(f"num_different_global_patterns ({num_different_global_patterns}) must not exceed "
                         f"num_local_blocks // num_global_blocks ({num_local_blocks // num_global_blocks}).")
    full_windows_end = num_blocks - num_blocks % num_local_blocks

    def head_layout(h):
        first = num_local_blocks - (1 + h % num_different_global_patterns) * num_global_blocks
        starts = list(range(first, full_windows_end, num_local_blocks))
        if full_windows_end < num_blocks:
            starts.append(min(full_windows_end + first, num_blocks - num_global_blocks))
        layout = _windows(num_blocks, (num_local_blocks,), causal)
        for start in starts:
            layout |= _global_blocks(num_blocks, start, start + num_global_blocks, causal,
                                     horizontal_global_attention)
        return layout

    return _per_head(num_heads, different_layout_per_head, head_layout)


def variable_layout(num_heads, num_blocks, num_random_blocks=0, local_window_blocks=(4,),
                    global_block_indices=(0,), global_block_end_indices=None, attention="bidirectional",
                    horizontal_global_attention=False, different_layout_per_head=False, seed=None):
    """Fixed's generalisation: DeepSpeed `VariableSparsityConfig` (same argument names).

    Local windows of `local_window_blocks` sizes in turn, the last size repeated to the end. Global blocks at
    `global_block_indices`, or over [global_block_indices[i], global_block_end_indices[i]) ranges, seen by every
    query block (unidirectional: by those at or below them); `horizontal_global_attention` also lets them see
    everything (bidirectional only). Plus `num_random_blocks` random key blocks per query block, drawn from a
    numpy Generator seeded with `seed`. DeepSpeed quirk kept on purpose: the random blocks ignore causality, so a
    unidirectional layout with random blocks can have blocks above the diagonal (the kernel's causal mask must
    then hide them).
    """
    _check_sizes(num_heads, num_blocks)
    check_positive_int("num_random_blocks", num_random_blocks, minimum=0)
    _check_at_most_num_blocks("num_random_blocks", num_random_blocks, num_blocks)
    if not local_window_blocks:
        raise ValueError("local_window_blocks must hold at least one window size.")
    for i, size in enumerate(local_window_blocks):
        check_positive_int(f"local_window_blocks[{i}]", size)
    spans = _global_spans(global_block_indices, global_block_end_indices)
    causal = _check_attention(attention)
    if causal and horizontal_global_attention:
        raise ValueError("horizontal_global_attention needs attention='bidirectional'.")
    rng = np.random.default_rng(seed)

    def head_layout(h):
        layout = _random_blocks(rng, num_blocks, num_random_blocks, causal=False)
        layout |= _windows(num_blocks, tuple(local_window_blocks), causal)
        for start, end in spans:
            layout |= _global_blocks(num_blocks, start, end, causal, horizontal_global_attention)
        return layout

    return _per_head(num_heads, different_layout_per_head, head_layout)


def bigbird_layout(num_heads, num_blocks, num_random_blocks=1, num_sliding_window_blocks=3, num_global_blocks=1,
                   attention="bidirectional", different_layout_per_head=False, seed=None):
    """BigBird at block granularity: DeepSpeed `BigBirdSparsityConfig` (same argument names).

    `num_random_blocks` random key blocks per query block (unidirectional: among the blocks at or before it, at
    most that many; DeepSpeed fails there instead), a sliding window of +-(num_sliding_window_blocks // 2)
    blocks, and the first `num_global_blocks` blocks as global rows and columns; unidirectional keeps the lower
    triangle. Random draws come from a numpy Generator seeded with `seed`.
    """
    _check_sizes(num_heads, num_blocks)
    check_positive_int("num_random_blocks", num_random_blocks, minimum=0)
    check_positive_int("num_sliding_window_blocks", num_sliding_window_blocks)
    check_positive_int("num_global_blocks", num_global_blocks)
    for name, value in (("num_random_blocks", num_random_blocks),
                        ("num_sliding_window_blocks", num_sliding_window_blocks),
                        ("num_global_blocks", num_global_blocks)):
        _check_at_most_num_blocks(name, value, num_blocks)
    causal = _check_attention(attention)
    rng = np.random.default_rng(seed)

    def head_layout(h):
        layout = _random_blocks(rng, num_blocks, num_random_blocks, causal)
        layout |= _sliding_window(num_blocks, num_sliding_window_blocks, causal=False)
        layout |= _global_blocks(num_blocks, 0, num_global_blocks, causal=False, horizontal=True)
        return np.tril(layout) if causal else layout

    return _per_head(num_heads, different_layout_per_head, head_layout)


def longformer_layout(num_heads, num_blocks, num_sliding_window_blocks=3, global_block_indices=(0,),
                      global_block_end_indices=None, attention="bidirectional", different_layout_per_head=False):
    """Longformer at block granularity: DeepSpeed `BSLongformerSparsityConfig` (same argument names).

    A sliding window of +-(num_sliding_window_blocks // 2) blocks plus global rows and columns at
    `global_block_indices` (or over [start, end) ranges with `global_block_end_indices`); unidirectional keeps
    the lower triangle. Unlike DeepSpeed, `attention` is validated.
    """
    _check_sizes(num_heads, num_blocks)
    check_positive_int("num_sliding_window_blocks", num_sliding_window_blocks)
    _check_at_most_num_blocks("num_sliding_window_blocks", num_sliding_window_blocks, num_blocks)
    spans = _global_spans(global_block_indices, global_block_end_indices)
    causal = _check_attention(attention)

    def head_layout(h):
        layout = _sliding_window(num_blocks, num_sliding_window_blocks, causal=False)
        for start, end in spans:
            layout |= _global_blocks(num_blocks, start, end, causal=False, horizontal=True)
        return np.tril(layout) if causal else layout

    return _per_head(num_heads, different_layout_per_head, head_layout)


def sliding_window_layout(num_heads, num_blocks, num_sliding_window_blocks=3, attention="unidirectional"):
    """A band of num_sliding_window_blocks // 2 blocks behind each query block (bidirectional: on both sides).

    DeepSpeed `LocalSlidingWindowSparsityConfig` (same argument names; no per-head option there either). An even
    window size acts like the next odd one, as in DeepSpeed.
    """
    _check_sizes(num_heads, num_blocks)
    check_positive_int("num_sliding_window_blocks", num_sliding_window_blocks)
    _check_at_most_num_blocks("num_sliding_window_blocks", num_sliding_window_blocks, num_blocks)
    layout = _sliding_window(num_blocks, num_sliding_window_blocks, _check_attention(attention))
    return np.repeat(layout[None], num_heads, axis=0)


def openai_fixed_layout(num_heads, num_blocks, local_blocks, vert_size, num_verts):
    """OpenAI sparse_attention's causal `fixed` layout (`get_blocksparse_obj(attn_mode="fixed")`).

    With l_b = local_blocks (OpenAI's local_attn_ctx / blocksize), the rows of
    [l_b - 1, ..., 0].reshape(-1, vert_size)[:num_verts] are the summary block offsets; head h takes row
    h % num_verts and sees those block columns of every window plus its own window, never above the diagonal.
    Equals `fixed_layout(attention="unidirectional", num_local_blocks=local_blocks, num_global_blocks=vert_size,
    num_different_global_patterns=num_verts, different_layout_per_head=True)`.
    """
    _check_sizes(num_heads, num_blocks)
    check_positive_int("local_blocks", local_blocks)
    check_positive_int("vert_size", vert_size)
    check_positive_int("num_verts", num_verts)
    if vert_size > local_blocks:
        raise ValueError(f"vert_size ({vert_size}) must not exceed local_blocks ({local_blocks}).")
    if local_blocks % vert_size:
        raise ValueError(f"local_blocks ({local_blocks}) must be divisible by vert_size ({vert_size}).")
    if num_heads % num_verts:
        raise ValueError(f"num_heads ({num_heads}) must be divisible by num_verts ({num_verts}).")
    if num_verts > local_blocks // vert_size:
        raise ValueError(f"num_verts ({num_verts}) must not exceed local_blocks // vert_size "
                         f"({local_blocks // vert_size}).")
    offsets = np.arange(local_blocks)[::-1].reshape(-1, vert_size)[:num_verts]
    query, key = _grid(num_blocks)
    same_window = query // local_blocks == key // local_blocks
    return np.stack([(same_window | np.isin(key % local_blocks, offsets[h % num_verts])) & (key <= query)
                     for h in range(num_heads)])


def pattern_to_layout(mask, block_size):
    """The block layout that covers an element mask: a block is on iff any element in it is.

    Takes [heads, length, length] (or [length, length], giving [num_blocks, num_blocks]); like xformers'
    `pattern_to_layout`, so element patterns (exact l and c) can drive a block kernel.
    """
    check_positive_int("block_size", block_size)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask must have shape [heads, length, length] or [length, length]; got {mask.shape}.")
    for length in mask.shape[-2:]:
        if length % block_size:
            raise ValueError(f"mask length {length} is not a multiple of block_size {block_size}.")
    *heads, queries, keys = mask.shape
    blocks = mask.reshape(*heads, queries // block_size, block_size, keys // block_size, block_size)
    return blocks.any(axis=(-3, -1))


def layout_to_mask(layout, block_size):
    """Expands a block layout to its element mask (kron with a block of ones): the dense-mask view of a kernel."""
    check_positive_int("block_size", block_size)
    return np.kron(np.asarray(layout, dtype=bool), np.ones((block_size, block_size), dtype=bool))
