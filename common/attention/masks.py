"""Dense boolean masks (True = may attend): the references that blocked kernels are tested against.

These build length x length tensors on purpose: they are for tests, pictures and `dense_attention`, never for
the fast path of a kernel.
"""

from keras import ops

from common.attention import checks


def causal_mask(q_length, k_length=None):
    """[q_length, k_length]: query i sees key j iff j <= i + (k_length - q_length) (queries are the last ones)."""
    k_length = q_length if k_length is None else k_length
    q_pos = ops.arange(q_length)[:, None] + (k_length - q_length)
    return ops.arange(k_length)[None, :] <= q_pos


def local_mask(length, block_size, look_back=1, look_ahead=None, causal=True):
    """[length, length] mask of `common.attention.local_attention` with the same options."""
    checks.check_positive_int("block_size", block_size)
    checks.check_positive_int("look_back", look_back, minimum=0)
    look_ahead = resolve_look_ahead(look_ahead, look_back, causal)
    checks.check_positive_int("look_ahead", look_ahead, minimum=0)
    block = ops.arange(length) // block_size
    delta = block[None, :] - block[:, None]
    keep = (delta >= -look_back) & (delta <= look_ahead)
    if causal:
        keep = keep & causal_mask(length)
    return keep


def resolve_look_ahead(look_ahead, look_back, causal):
    """Blocks visible after a query's own: none when causal, by default as many as `look_back` otherwise."""
    if causal:
        if look_ahead:
            raise ValueError(f"look_ahead must be 0 or None when causal=True; got {look_ahead!r}.")
        return 0
    return look_back if look_ahead is None else look_ahead
