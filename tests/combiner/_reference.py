"""An independent float64 numpy reference of Combiner attention, written from the paper's equations.

For every query i a *plan* lists its direct keys (Omega_i^0) and its regions (Omega_i^r), each region with its
members, key abstraction k_Omega and summary query q_Omega. Then (paper eqs. 7-9): one softmax over the direct
logits q_i . k_j and the region logits q_i . k_Omega, and the effective attention
  A[i, j] = p(j | i) for direct j + sum over regions Omega containing j of
            p(Omega | i) softmax_{j' in Omega}(q_Omega . k_j') at j' = j.
No code from `combiner` is used. Plans are built from positions with loops, regions from their member lists.
"""

import numpy as np

from tests.common.attention._reference import numeric_gradients  # noqa: F401  (re-exported for the tests)


def _softmax(logits):
    logits = np.asarray(logits, np.float64)
    weights = np.exp(logits - logits.max())
    return weights / weights.sum()


def pool(x, local_summary="identity-max", kernel=None):
    """Pooling of member vectors x [members, d] as the TF release's `pooling_summary`."""
    activation, pooling = local_summary.split("-")
    if activation == "relu":
        x = np.maximum(x, 0)
    elif activation == "deepset":
        x = np.maximum(x @ kernel, 0)
    return {"max": np.max, "mean": np.mean, "sum": np.sum}[pooling](x, axis=0)


def region(members, q, k, key=None, query=None):
    """A region over `members`; by default the paper's max-pooled key and summary query."""
    members = list(members)
    return (members, k[members].max(0) if key is None else key, q[members].max(0) if query is None else query)


# --- plans: plan[i] = (direct positions, regions) for one head; q is already scaled ----------------------------

def fixed_plan(q, k, m, causal, local_summary="identity-max", query_kernel=None, key_kernel=None):
    length = len(q)
    segments = [list(range(start, min(start + m, length))) for start in range(0, length, m)]
    plan = []
    for i in range(length):
        r = i // m
        direct = [j for j in segments[r] if j <= i or not causal]
        others = range(r) if causal else [s for s in range(len(segments)) if s != r]  # eq. 10's partition
        regions = [region(segments[s], q, k, key=pool(k[segments[s]], local_summary, key_kernel),
                          query=pool(q[segments[s]], local_summary, query_kernel)) for s in others]
        plan.append((direct, regions))
    return plan


def logsparse_plan(q, k):
    """Direct {i} and {i - 1 if i is odd}; regions: the binary decomposition of [0, i - (i odd)) into aligned
    blocks, largest first (the paper's suffix sums)."""
    plan = []
    for i in range(len(q)):
        blocks, start = [], 0
        for level in reversed(range(max(i, 1).bit_length())):
            if i & (1 << level):
                blocks.append(list(range(start, start + 2 ** level)))
                start += 2 ** level
        assert start == i
        direct = [i] + ([i - 1] if i % 2 else [])
        plan.append((direct, [region(b, q, k) for b in blocks if len(b) > 1]))
    return plan


def row_summaries(q, k, v, m):
    """Per position (r, c): P = softmax_t(q_(r,c) . k_(r,t)) over the whole row r; returns (o, wsum) [L, .]."""
    o, wsum = np.zeros((len(q), v.shape[-1])), np.zeros(k.shape)
    for i in range(len(q)):
        row = list(range(i // m * m, min(i // m * m + m, len(q))))
        p = _softmax([q[i] @ k[j] for j in row])
        o[i], wsum[i] = p @ v[row], p @ k[row]
    return o, wsum


def axial_plan(q, k, m, causal, region_keys):
    """Row-major: direct own row; region per other row r' with summary query q_(r',c) and key
    region_keys[(r', c)]."""
    length = len(q)
    rows = [list(range(start, min(start + m, length))) for start in range(0, length, m)]
    plan = []
    for i in range(length):
        r, c = divmod(i, m)
        direct = [j for j in rows[r] if j <= i or not causal]
        others = range(r) if causal else [s for s in range(len(rows)) if s != r]
        plan.append((direct, [region(rows[s], q, k, key=region_keys[s * m + c], query=q[s * m + c])
                              for s in others]))
    return plan


def mixture_plan(q, k, m, causal):
    """As the released code (see combiner/mixture.py); positions past the length are left out."""
    length = len(q)
    n = -(-length // m)
    at = lambda r, c: r * m + c  # noqa: E731
    real = lambda cells: [at(r, c) for r, c in cells if at(r, c) < length]  # noqa: E731
    plan = []
    for i in range(length):
        r, c = divmod(i, m)
        if causal:
            direct = real((s, c) for s in range(r)) + real((r, t) for t in range(c + 1))
            members = [real((s, t) for s in range(r)) for t in range(m) if t != c and r >= 1]
            members += [real((s, t) for t in range(c)) for s in range(r) if c >= 1]
            members += [real((s, t) for t in range(c + 1, m)) for s in range(r) if c <= m - 2]
        else:
            direct = real((r, t) for t in range(m)) + real((s, c) for s in range(n))
            members = [real((s, t) for s in range(r)) for t in range(m) if r >= 1]
            members += [real((s, t) for s in range(r + 1, n)) for t in range(m) if r <= n - 2]
            members += [real((s, t) for t in range(c)) for s in range(n) if c >= 1]
            members += [real((s, t) for t in range(c + 1, m)) for s in range(n) if c <= m - 2]
        plan.append((direct, [region(cells, q, k) for cells in members]))
    return plan


# --- evaluation -------------------------------------------------------------------------------------------------

def effective_matrix(q, k, plan):
    """A [L, L] of one head from its plan (eq. 8's q(j | i))."""
    matrix = np.zeros((len(q), len(q)))
    for i, (direct, regions) in enumerate(plan):
        p = _softmax([q[i] @ k[j] for j in direct] + [q[i] @ key for _, key, _ in regions])
        for j, weight in zip(direct, p):
            matrix[i, j] += weight
        for (members, _, query), weight in zip(regions, p[len(direct):]):
            inner = _softmax([query @ k[j] for j in members])
            matrix[i, members] += weight * inner
    return matrix


def combiner(q, k, v, *, variant, segment_length=None, causal=True, local_summary="identity-max",
             query_pooling_kernel=None, key_pooling_kernel=None, row_summary="none", row_projection=None):
    """Reference output [batch, heads, length, value_dim] and effective matrices [batch, heads, L, L].

    row_projection: numpy function [batch, heads, L, d] -> [batch, heads, L, key_dim] (proj row summaries).
    """
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    q = q / np.sqrt(q.shape[-1])
    batch, heads, length, _ = q.shape
    m = segment_length
    keys = None
    if variant == "axial":
        summaries = [[row_summaries(q[b, h], k[b, h], v[b, h], m) for h in range(heads)] for b in range(batch)]
        o = np.array([[s[0] for s in per_batch] for per_batch in summaries])
        wsum = np.array([[s[1] for s in per_batch] for per_batch in summaries])
        keys = {"none": k, "wsum": wsum}.get(row_summary)
        if keys is None:
            keys = row_projection(o if row_summary == "proj" else wsum)
    matrices = np.zeros((batch, heads, length, length))
    for b in range(batch):
        for h in range(heads):
            qh, kh = q[b, h], k[b, h]
            if variant == "fixed":
                plan = fixed_plan(qh, kh, m, causal, local_summary, query_pooling_kernel, key_pooling_kernel)
            elif variant == "logsparse":
                plan = logsparse_plan(qh, kh)
            elif variant == "axial":
                plan = axial_plan(qh, kh, m, causal, keys[b, h])
            else:
                plan = mixture_plan(qh, kh, m, causal)
            matrices[b, h] = effective_matrix(qh, kh, plan)
    return np.einsum("bhij,bhjd->bhid", matrices, v), matrices
