"""Independent float64 numpy references for the attention kernel tests (no code from `common.attention`)."""

import numpy as np


def attention(q, k, v, *, causal=True, mask=None, bias=None, scale=None, relative_keys=None,
              relative_values=None):
    """Softmax attention written with explicit loops over (batch, head, query), in float64.

    Query i stands at position i + k_length - q_length. Logits are
    (q_i . (k_j + Rk[clip(j - i, -m, m) + m])) * scale + bias, and the output is
    sum_j w_ij (v_j + Rv[clip(j - i, -m, m) + m]). A row with no visible key is zero.
    """
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    batch, heads, q_length, key_dim = q.shape
    k_length, value_dim = k.shape[2], v.shape[3]
    if scale is None:
        scale = 1.0 / np.sqrt(key_dim)
    keep = np.ones((batch, heads, q_length, k_length), bool)
    if mask is not None:
        keep &= np.broadcast_to(np.asarray(mask, bool), keep.shape)
    bias = np.zeros(keep.shape) if bias is None else np.broadcast_to(np.asarray(bias, np.float64), keep.shape)
    out = np.zeros((batch, heads, q_length, value_dim))
    for b in range(batch):
        for h in range(heads):
            for i in range(q_length):
                position = i + k_length - q_length
                logits, values, visible = [], [], []
                for j in range(k_length):
                    if not keep[b, h, i, j] or (causal and j > position):
                        continue
                    key, value = k[b, h, j].copy(), v[b, h, j].copy()
                    if relative_keys is not None:
                        key = key + _row(relative_keys, j - position)
                    if relative_values is not None:
                        value = value + _row(relative_values, j - position)
                    logits.append(np.dot(q[b, h, i], key) * scale + bias[b, h, i, j])
                    values.append(value)
                    visible.append(j)
                if not visible:
                    continue
                logits = np.array(logits)
                weights = np.exp(logits - logits.max())
                weights /= weights.sum()
                out[b, h, i] = weights @ np.array(values)
    return out


def _row(table, distance):
    table = np.asarray(table, np.float64)
    m = (table.shape[0] - 1) // 2
    return table[min(max(distance, -m), m) + m]


def local_mask(length, block_size, look_back, look_ahead, causal):
    """Direct formula: block(i) - look_back <= block(j) <= block(i) + look_ahead, and j <= i when causal."""
    if causal:
        look_ahead = 0
    elif look_ahead is None:
        look_ahead = look_back
    i = np.arange(length)[:, None]
    j = np.arange(length)[None, :]
    block_i, block_j = i // block_size, j // block_size
    keep = (block_i - look_back <= block_j) & (block_j <= block_i + look_ahead)
    if causal:
        keep &= j <= i
    return keep


def numeric_gradients(fn, arrays, cotangent, eps=1e-5):
    """Central finite differences of sum(fn(*arrays) * cotangent) w.r.t. every array, in float64."""
    arrays = [np.array(a, np.float64) for a in arrays]
    grads = []
    for index, array in enumerate(arrays):
        grad = np.zeros_like(array)
        for position in np.ndindex(array.shape):
            values = []
            for sign in (1.0, -1.0):
                shifted = [a.copy() for a in arrays]
                shifted[index][position] += sign * eps
                values.append(np.sum(fn(*shifted) * cotangent))
            grad[position] = (values[0] - values[1]) / (2 * eps)
        grads.append(grad)
    return grads
