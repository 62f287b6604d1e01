"""Combiner-Fixed (paper section 4.1, eq. 10; TF `sqrt_fixed_full`, JAX `_SelfAttSqrtn`).

The sequence is cut into n segments of m tokens. Query (r, c) attends directly to its own segment (causally:
t <= c) and to every earlier segment r' < r as one region (bidirectional: every other segment r' != r). A
region's key and summary query pool its keys and queries (`local_summary`, default max); its value is the local
expectation of the segment under the summary query. Logits per query: m + n; cost O(L (m + n)), O(L sqrt L)
at m ~ sqrt L.
"""

from keras import ops

from combiner.joint import from_grid, grid_masks, joint_softmax, to_grid
from combiner.summaries import local_expectation, pool


def segment_summaries(qg, kg, vg, local_summary="identity-max", query_pooling_kernel=None,
                      key_pooling_kernel=None, dropout_rate=0.0, seed=None):
    """One abstraction per segment of grids [batch, heads, n, m, dim]: the pooled keys as its key, and its
    local expectation under the pooled queries as its value. Returns ([b, h, n, key_dim], [b, h, n, value_dim]).
    """
    query_bar = pool(qg, 3, local_summary, query_pooling_kernel)
    key_bar = pool(kg, 3, local_summary, key_pooling_kernel)
    return key_bar, local_expectation(query_bar, kg, vg, None, dropout_rate, seed)


def fixed_attention(q, k, v, *, segment_length, causal=True, local_summary="identity-max",
                    query_pooling_kernel=None, key_pooling_kernel=None, dropout_rate=0.0, seed=None):
    """Combiner-Fixed on pre-scaled queries whose length is a multiple of `segment_length`.

    Called by `combiner.attention.combiner_attention`, which checks, scales and pads. Bidirectional regions are
    the other segments only (eq. 10's partition, Omega_i^r excludes Omega_i^0); the TF release leaves the own
    segment's summary unmasked too, so that segment is counted twice there.
    """
    qg, kg, vg = (to_grid(x, segment_length) for x in (q, k, v))  # [b, h, n, m, d]
    key_bar, value_bar = segment_summaries(qg, kg, vg, local_summary, query_pooling_kernel, key_pooling_kernel,
                                           dropout_rate, seed)
    direct = ops.einsum("bhnqd,bhnkd->bhnqk", qg, kg)  # [b, h, n, m, m]
    region = ops.einsum("bhnqd,bhrd->bhnqr", qg, key_bar)  # [b, h, n, m, n]
    direct_keep, region_keep = grid_masks(ops.shape(qg)[2], segment_length, causal)
    direct_w, region_w = joint_softmax([(direct, direct_keep), (region, region_keep)],
                                       dropout_rate=dropout_rate, seed=seed)
    out = (ops.einsum("bhnqk,bhnkd->bhnqd", ops.cast(direct_w, v.dtype), vg) +
           ops.einsum("bhnqr,bhrd->bhnqd", ops.cast(region_w, v.dtype), value_bar))
    return from_grid(out)
