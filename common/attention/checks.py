"""Input validation shared by every attention kernel: clear `ValueError`s instead of deep shape errors."""

import numbers



def _known_and_different(a, b):
    return a is not None and b is not None and a != b


def check_qkv(q, k, v):
    """Checks the kernel contract: q, k [batch, heads, length, key_dim], v [batch, heads, length, value_dim]."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if len(tensor.shape) != 4:
            raise ValueError(
                f"{name} must have rank 4 [batch, heads, length, dim]; got shape {tuple(tensor.shape)}.")
    if _known_and_different(q.shape[-1], k.shape[-1]):
        raise ValueError(f"q and k must have the same key_dim; got q {tuple(q.shape)} and k {tuple(k.shape)}.")
    if _known_and_different(k.shape[2], v.shape[2]):
        raise ValueError(f"k and v must have the same length; got k {tuple(k.shape)} and v {tuple(v.shape)}.")
    for axis, what in ((0, "batch"), (1, "heads")):
        sizes = {t.shape[axis] for t in (q, k, v)} - {None}
        if len(sizes) > 1:
            raise ValueError(f"q, k and v must agree on {what}; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                             f"v {tuple(v.shape)}.")


def check_self_attention(q, k):
    """Checks that queries and keys cover the same positions (blocked kernels need it)."""
    if _known_and_different(q.shape[2], k.shape[2]):
        raise ValueError(f"this kernel is self-attention: q and k must have the same length; got "
                         f"{q.shape[2]} and {k.shape[2]}.")


def check_positive_int(name, value, minimum=1):
    """Raises unless `value` is an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def check_mask(mask, q, k):
    """A mask is boolean, rank 2 to 4, broadcastable to [batch, heads, q_length, k_length]."""
    if not 2 <= len(mask.shape) <= 4:
        raise ValueError(f"mask must have rank 2 to 4 (broadcastable to [batch, heads, q_length, k_length]); "
                         f"got shape {tuple(mask.shape)}.")
    for got, want, what in ((mask.shape[-2], q.shape[2], "q_length"), (mask.shape[-1], k.shape[2], "k_length")):
        if _known_and_different(got, want) and got != 1:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match {what} {want} "
                             f"(q {tuple(q.shape)}, k {tuple(k.shape)}).")
    for axis, tensor_axis, what in ((-3, 1, "heads"), (-4, 0, "batch")):
        if len(mask.shape) >= -axis:
            got, want = mask.shape[axis], q.shape[tensor_axis]
            if _known_and_different(got, want) and got != 1:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match {what} {want}.")
