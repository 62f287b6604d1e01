"""Independent float64 numpy references of the original's balanced routing (no code from `routing_transformer`),
shared by the kernel tests and the checkpoint converter's test."""

import numpy as np


def np_layer_norm(x, eps=1e-6):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def np_members(q, centroids, window, membership="nearest"):
    """members[b][h][c]: sorted positions of the `window` tokens nearest (dot product of layer_norm(q))
    to centroid c, or with membership="strided" of every (length // window)-th of that ranking; asserts the
    ranking is unambiguous."""
    scores = np.einsum("bhld,hcd->bhcl", np_layer_norm(q), np.asarray(centroids, np.float64))
    order = np.argsort(-scores, axis=-1, kind="stable")
    if membership == "strided":
        ranked = np.take_along_axis(scores, order, -1)
        assert (ranked[..., :-1] - ranked[..., 1:]).min() > 1e-6, "ambiguous ranking in the test input"
        return np.sort(order[..., ::max(scores.shape[-1] // window, 1)][..., :window], axis=-1)
    if window < scores.shape[-1]:
        gap = (np.take_along_axis(scores, order[..., window - 1:window], -1) -
               np.take_along_axis(scores, order[..., window:window + 1], -1))
        assert gap.min() > 1e-4, "ambiguous top-k in the test input"
    return np.sort(order[..., :window], axis=-1)


def np_routing(q, v, centroids, window, relative_keys=None, relative_values=None, causal=True,
               membership="nearest", count_epsilon=0.0):
    """Numpy float64 reference of balanced routing attention with share_qk: (out, members, count), a token's
    outputs summed over its clusters and divided by their count + `count_epsilon` (0: max(count, 1))."""
    qn = np_layer_norm(q)
    v = np.asarray(v, np.float64)
    members = np_members(q, centroids, window, membership)
    batch, heads, length, _ = q.shape
    total = np.zeros(v.shape)
    count = np.zeros((batch, heads, length))

    def row(table, d):
        table = np.asarray(table, np.float64)
        m = (table.shape[0] - 1) // 2
        return table[min(max(d, -m), m) + m]

    for b in range(batch):
        for h in range(heads):
            for idx in members[b, h]:
                for rq, i in enumerate(idx):
                    logits, values = [], []
                    for rk, j in enumerate(idx):
                        if causal and j > i:
                            continue
                        key, value = qn[b, h, j].copy(), v[b, h, j].copy()
                        if relative_keys is not None:
                            key += row(relative_keys, rk - rq)
                        if relative_values is not None:
                            value += row(relative_values, rk - rq)
                        logits.append(qn[b, h, i] @ key)
                        values.append(value)
                    w = np.exp(np.array(logits) - max(logits))
                    total[b, h, i] += (w / w.sum()) @ np.array(values)
                    count[b, h, i] += 1
    divisor = count + count_epsilon if count_epsilon else np.maximum(count, 1)
    return total / divisor[..., None], members, count
