"""The Sparse Transformer's attention patterns: their grammar, their definitions, and the exact dense mask.

A pattern spec is a string:
  - an atomic pattern (l = `stride`, c = `summary`, i = query, j = key):
      `all`      every key (j <= i when causal);
      `local`    the last l positions, self included: 0 <= i - j < l (|i - j| < l bidirectional);
      `strided`  every l-th position: (i - j) mod l = 0;
      `block`    the query's own block of l: floor(j / l) = floor(i / l) (bidirectional: OpenAI's `b_all`);
      `summary`  the summary positions of every block: j mod l in [l - (p + 1) c, l - p c), where
                 p = head % num_summary_patterns, so heads attend to distinct length-c sub-blocks as in the
                 released code (head 0 takes the last c positions of each block, as the paper);
      `fixed`    `block+summary`, the paper's fixed pattern as the released code computes it (merged, per-head
                 summaries);
  - a union of atomic patterns in one head with `+` (`local+strided` is the paper's merged strided head);
  - a split across heads with `|` (`local|strided`: the first half of the heads local, the second strided;
    the number of heads must be divisible by the number of groups).
Causal attention intersects every pattern with j <= i.

`attention_mask` builds the [heads, length, length] boolean mask straight from these definitions: it is the
reference for tests and pictures, never the kernel's path.
"""

from keras import ops

from common.attention import checks

ATOMIC_PATTERNS = ("all", "local", "strided", "block", "summary")
ALIASES = {"fixed": ("block", "summary")}

# The released code's layer codes (distribution_augmentation `attention_layers`): pattern and causality.
OPENAI_CODES = {
    "a": ("all", True), "a_all": ("all", False),
    "b": ("local", True), "b_all": ("block", False),
    "bT": ("strided", True), "bT_all": ("strided", False),
}


def parse_pattern(pattern):
    """`"local+strided|fixed"` -> ((`local`, `strided`), (`block`, `summary`)): head groups of unions."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be a non-empty string such as 'fixed', 'local+strided' or "
                         f"'local|strided'; got {pattern!r}.")
    groups = []
    for group in pattern.split("|"):
        parts = []
        for name in group.split("+"):
            name = name.strip()
            expanded = ALIASES.get(name, (name,))
            for atom in expanded:
                if atom not in ATOMIC_PATTERNS:
                    raise ValueError(f"unknown attention pattern {name!r} in {pattern!r}; choose from "
                                     f"{sorted(ATOMIC_PATTERNS + tuple(ALIASES))}, joined by '+' (union in "
                                     f"one head) or '|' (split across heads).")
                if atom not in parts:
                    parts.append(atom)
        groups.append(tuple(parts))
    return tuple(groups)


def check_pattern_options(pattern, stride, summary, num_heads=None, num_summary_patterns=1):
    """Validates a spec and its options; returns the parsed head groups."""
    groups = parse_pattern(pattern)
    atoms = {atom for group in groups for atom in group}
    if atoms - {"all"}:
        checks.check_positive_int("stride", stride)
    if "summary" in atoms:
        checks.check_positive_int("summary", summary)
        checks.check_positive_int("num_summary_patterns", num_summary_patterns)
        if summary * num_summary_patterns > stride:
            raise ValueError(f"the summary ({summary}) times num_summary_patterns ({num_summary_patterns}) must "
                             f"not exceed the stride ({stride}): each head's summary is a distinct length-"
                             f"summary sub-block of a block of stride positions.")
        if num_heads is not None and num_heads % num_summary_patterns:
            raise ValueError(f"num_heads ({num_heads}) must be divisible by num_summary_patterns "
                             f"({num_summary_patterns}) so that every summary sub-block has the same number "
                             f"of heads.")
    if num_heads is not None and num_heads % len(groups):
        raise ValueError(f"num_heads ({num_heads}) must be divisible by the {len(groups)} head groups of "
                         f"pattern {pattern!r}.")
    return groups


def summary_range(head, stride, summary, num_summary_patterns):
    """[start, end) of a head's summary positions inside each block of `stride` positions."""
    p = head % num_summary_patterns
    return stride - (p + 1) * summary, stride - p * summary


def atom_keep(atom, query, key, heads, stride, summary, num_summary_patterns, causal):
    """Whether query position `query` may see key position `key` under one atomic pattern (no causality).

    `query` and `key` are integer tensors that broadcast together; `heads` is an integer tensor of head indices
    broadcastable against them (only `summary` uses it).
    """
    if atom == "all":
        return ops.ones_like(query + key, dtype="bool")
    distance = query - key
    if atom == "local":
        return (distance >= 0) & (distance < stride) if causal else ops.abs(distance) < stride
    if atom == "strided":
        return ops.abs(distance) % stride == 0
    if atom == "block":
        return query // stride == key // stride
    p = heads % num_summary_patterns
    offset = key % stride
    in_summary = (offset >= stride - (p + 1) * summary) & (offset < stride - p * summary)
    return in_summary & ops.ones_like(query + key, dtype="bool")  # the same for every query


def union_keep(atoms, query, key, heads, stride, summary, num_summary_patterns, causal):
    """Union of atomic patterns, intersected with j <= i when causal."""
    keep = None
    for atom in atoms:
        one = atom_keep(atom, query, key, heads, stride, summary, num_summary_patterns, causal)
        keep = one if keep is None else keep | one
    return keep & (key <= query) if causal else keep


def attention_mask(length, *, pattern, stride=None, summary=None, causal=True, num_heads=1,
                   num_summary_patterns=1):
    """The exact boolean mask [num_heads, length, length] of a pattern spec (True = may attend).

    For inspection, plots and tests (`dense_attention(q, k, v, mask=attention_mask(...))` is the reference of
    `sparse_attention`); it builds a length x length tensor on purpose.
    """
    checks.check_positive_int("length", length)
    checks.check_positive_int("num_heads", num_heads)
    groups = check_pattern_options(pattern, stride, summary, num_heads, num_summary_patterns)
    positions = ops.arange(length)
    query, key = positions[:, None], positions[None, :]
    heads_per_group = num_heads // len(groups)
    masks = []
    for g, atoms in enumerate(groups):
        for head in range(g * heads_per_group, (g + 1) * heads_per_group):
            masks.append(union_keep(atoms, query, key, head, stride, summary, num_summary_patterns, causal))
    return ops.stack(masks)
