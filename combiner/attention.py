"""Combiner attention (Ren et al., NeurIPS 2021): full attention at sparse cost; the kernel and the layer.

Every query attends to some keys directly and to the rest through regions: a region contributes one logit
(query . region key) and, if chosen, spreads its probability over its members by a within-region softmax of a
summary query (paper eqs. 7-9). Direct and region logits share one float32 softmax, so the effective attention
matrix (the kernel applied to v = eye(length)) is a full distribution over the causal prefix (bidirectional:
over the whole sequence): every entry there is positive, every row sums to 1. It is not a masked softmax of
q . k: region entries are (region probability) x (within-region probability), a rank-1 block per region.

Variants (one file each): `fixed` (combiner/fixed.py), `logsparse` (combiner/logsparse.py, causal only), `axial`
(row-major, combiner/axial.py) and `mixture` (combiner/mixture.py). No length x length tensor is built:
O(L sqrt L) for fixed, axial and mixture with segment_length ~ sqrt L, O(L log L) for logsparse.

The layer `CombinerAttention` owns the weights that some options need (deepset pooling kernels, the row
projection of `row_summary="proj"`) and passes them to the kernel, which has none.
"""

import math

import keras
from keras import ops

from combiner.axial import ROW_SUMMARIES, axial_attention
from combiner.fixed import fixed_attention
from combiner.logsparse import logsparse_attention
from combiner.mixture import mixture_attention
from combiner.summaries import check_local_summary
from common.attention import checks, register_kernel
from common.layers import LayerNorm, SelfAttention
from common.layers.attention import matrix_initializer
from common.serialization import fresh_initializer

VARIANTS = ("fixed", "logsparse", "axial", "mixture")
BIDIRECTIONAL_VARIANTS = ("fixed", "axial", "mixture")
# The TF release's layer norm epsilon, used in the row projection.
ROW_NORM_EPSILON = 1e-5


def check_options(variant, causal=True, local_summary="identity-max", row_summary="none"):
    """ValueError, listing the valid choices, for an unknown variant or option or an impossible combination."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown Combiner variant {variant!r}; choose one of {list(VARIANTS)}.")
    if not causal and variant not in BIDIRECTIONAL_VARIANTS:
        raise ValueError(f"variant {variant!r} is causal only; bidirectional variants: "
                         f"{list(BIDIRECTIONAL_VARIANTS)}.")
    check_local_summary(local_summary)
    if row_summary not in ROW_SUMMARIES:
        raise ValueError(f"unknown row_summary {row_summary!r}; choose one of {list(ROW_SUMMARIES)}.")


def _check_pooling_kernel(name, kernel, key_dim):
    if kernel is None:
        raise ValueError(f"local_summary 'deepset-...' needs {name} [key_dim, key_dim] (the layer owns it).")
    if tuple(kernel.shape) != (key_dim, key_dim):
        raise ValueError(f"{name} must be [key_dim, key_dim] = [{key_dim}, {key_dim}]; got {tuple(kernel.shape)}.")


def combiner_attention(q, k, v, *, variant, segment_length=None, causal=True, scale=None,
                       local_summary="identity-max", query_pooling_kernel=None, key_pooling_kernel=None,
                       row_summary="none", row_projection=None, max_length=None, dropout_rate=0.0, seed=None):
    """Combiner attention of one variant.

    Args:
      q, k: [batch, heads, length, key_dim]. v: [batch, heads, length, value_dim].
      variant: "fixed", "logsparse", "axial" or "mixture".
      segment_length: tokens per segment (fixed) or per row (axial, mixture): the released `max_seg_len`;
        about sqrt(length) gives the O(L sqrt L) cost. Ignored by logsparse.
      causal: query i never sees key j > i. Bidirectional: fixed, axial and mixture.
      scale: query multiplier; default 1 / sqrt(key_dim). Queries are scaled before any pooling, as the
        releases pre-scale them.
      local_summary: fixed only; "activation-pooling" abstraction of a segment's keys and queries, activation
        in identity / relu / deepset, pooling in max / mean / sum (TF release; default and paper: identity-max).
      query_pooling_kernel, key_pooling_kernel: [key_dim, key_dim] dense kernels of the deepset activation.
      row_summary: axial only; the region key: none / wsum / proj / wsum_proj (see combiner/axial.py).
      row_projection: for proj and wsum_proj, a function mapping summaries [batch, heads, length, dim] to region
        keys [batch, heads, length, key_dim] (`CombinerAttention` passes its learned projection).
      max_length: logsparse only; the longest length a call whose length is known only at run time may have
        (it sets the number of levels; a longer one fails when run). None: static lengths only.
      dropout_rate, seed: attention dropout (training only) on the within-region probabilities and on the
        direct part of the joint probabilities, as TF's fixed and row-major code; one rule for every variant
        (the released mixture has none, JAX logsparse only inside regions).

    Length: causal fixed, axial and mixture pad a length that is not a multiple of `segment_length` at the end
    and cut the output (exact: no earlier position can see the padding). Bidirectional ones raise ValueError
    for such a length (a partial segment would need its own abstraction rules); pad and mask the input
    instead. A dynamic length works for these three (a bidirectional one must then be a multiple at run time,
    or the reshape fails). Logsparse takes any static length, and a dynamic one up to `max_length`.

    Returns:
      [batch, heads, length, value_dim] in v's dtype. With row_summary proj / wsum_proj the region keys depend
      on v, so the output is linear in v only for fixed region keys; otherwise it is linear in v.
    """
    check_options(variant, causal, local_summary, row_summary)
    checks.check_qkv(q, k, v)
    checks.check_self_attention(q, k)
    key_dim, length = q.shape[-1], q.shape[2]
    if max_length is not None:
        checks.check_positive_int("max_length", max_length)
    if variant == "fixed" and local_summary.startswith("deepset"):
        _check_pooling_kernel("query_pooling_kernel", query_pooling_kernel, key_dim)
        _check_pooling_kernel("key_pooling_kernel", key_pooling_kernel, key_dim)
    if variant == "axial" and row_summary in ("proj", "wsum_proj") and not callable(row_projection):
        raise ValueError(f"row_summary {row_summary!r} needs row_projection, a function from summaries "
                         f"[batch, heads, length, dim] to region keys [batch, heads, length, key_dim].")
    if scale is None:
        scale = 1.0 / math.sqrt(key_dim)
    q = q * ops.cast(scale, q.dtype)
    options = dict(causal=causal, dropout_rate=dropout_rate, seed=seed)
    if variant == "logsparse":
        return logsparse_attention(q, k, v, max_length=max_length, **options)

    checks.check_positive_int("segment_length", segment_length)
    if not causal and length is not None and length % segment_length:
        raise ValueError(f"bidirectional variant {variant!r} needs a length that is a multiple of "
                         f"segment_length={segment_length}; got {length}. Pad the sequence (and mask the padding) "
                         f"or choose a segment_length that divides it.")
    true_length = ops.shape(q)[2]
    padding = (-true_length) % segment_length if causal else 0
    if causal:
        q, k, v = (ops.pad(x, [[0, 0], [0, 0], [0, padding], [0, 0]]) for x in (q, k, v))
    if variant == "fixed":
        out = fixed_attention(q, k, v, segment_length=segment_length, local_summary=local_summary,
                              query_pooling_kernel=query_pooling_kernel, key_pooling_kernel=key_pooling_kernel,
                              **options)
    elif variant == "axial":
        projection = row_projection
        if row_projection is not None and causal:
            def projection(summaries):  # the caller's function sees the true length only
                keys = row_projection(summaries[:, :, :true_length])
                return ops.pad(keys, [[0, 0], [0, 0], [0, padding], [0, 0]])
        out = axial_attention(q, k, v, segment_length=segment_length, row_summary=row_summary,
                              row_projection=projection, **options)
    else:
        out = mixture_attention(q, k, v, segment_length=segment_length, **options)
    return out[:, :, :true_length] if causal else out


register_kernel("combiner", combiner_attention)


@keras.saving.register_keras_serializable(package="combiner")
class CombinerAttention(SelfAttention):
    """Multi-head self-attention with a Combiner kernel, and the weights its options need.

    The q/k/v and output projections are `SelfAttention`'s. Extra weights:
    - `local_summary="deepset-..."` (fixed): two [key_dim, key_dim] pooling kernels, for queries and keys,
      shared across heads (TF scopes `pooling_query` / `pooling_key`).
    - `row_summary="proj"` or `"wsum_proj"` (axial): the released row projection, region keys =
      W_k' LN(x + dropout(W_o' concat_heads(summaries))), x being this layer's input (the normalised block
      input under pre-LN); biases when `use_bias`, as TF's `dense_use_bias`.

    Args:
      num_heads, key_dim, value_dim: heads and per-head widths.
      variant, segment_length, local_summary, row_summary, max_length: see `combiner_attention`. Options a
        variant does not use are ignored (they are still validated).
      causal: autoregressive attention (logsparse is causal only).
      use_bias: biases on the projections (TF release: True; JAX: False).
      dropout: attention dropout (see `combiner_attention`); projection_dropout: the dropout inside the row
        projection (TF: the model's residual dropout).
    """

    derived_arguments = ("kernel", "kernel_options", "max_relative_position")

    def __init__(self, num_heads, key_dim, variant="fixed", segment_length=128, value_dim=None, causal=True,
                 local_summary="identity-max", row_summary="proj", use_bias=False, dropout=0.0,
                 projection_dropout=0.0, kernel_initializer="glorot_uniform", output_initializer=None,
                 output_dim=None, max_length=None, seed=None, **kwargs):
        check_options(variant, causal, local_summary, row_summary)
        if variant != "logsparse":
            checks.check_positive_int("segment_length", segment_length)
        if max_length is not None:
            checks.check_positive_int("max_length", max_length)
        super().__init__(**dict(
            kwargs, num_heads=num_heads, key_dim=key_dim, value_dim=value_dim, kernel="combiner",
            kernel_options=dict(variant=variant, segment_length=segment_length, local_summary=local_summary,
                                row_summary=row_summary, max_length=max_length),
            causal=causal, use_bias=use_bias, max_relative_position=0, dropout=dropout,
            kernel_initializer=kernel_initializer, output_initializer=output_initializer, output_dim=output_dim,
            seed=seed))
        self.variant = variant
        self.segment_length = segment_length
        self.local_summary = local_summary
        self.row_summary = row_summary
        self.max_length = max_length
        self.projection_dropout = projection_dropout
        self.uses_pooling_kernels = variant == "fixed" and local_summary.startswith("deepset")
        self.uses_row_projection = variant == "axial" and row_summary in ("proj", "wsum_proj")
        self.row_norm = self.projection_dropout_layer = None
        if self.uses_row_projection:
            self.row_norm = LayerNorm(ROW_NORM_EPSILON, name="row_norm", dtype=self.dtype_policy)
            self.projection_dropout_layer = keras.layers.Dropout(projection_dropout, seed=seed,
                                                                 dtype=self.dtype_policy)

    def build(self, input_shape):
        super().build(input_shape)
        dim = input_shape[-1]

        def weight(name, shape, initializer):
            return self.add_weight(name=name, shape=shape, initializer=fresh_initializer(initializer))

        self.query_pooling_kernel = self.key_pooling_kernel = None
        if self.uses_pooling_kernels:
            self.query_pooling_kernel = weight("query_pooling_kernel", (self.key_dim, self.key_dim),
                                               self.kernel_initializer)
            self.key_pooling_kernel = weight("key_pooling_kernel", (self.key_dim, self.key_dim),
                                             self.kernel_initializer)
        self.row_output_kernel = self.row_output_bias = self.row_key_kernel = self.row_key_bias = None
        if self.uses_row_projection:
            summary_dim = self.value_dim if self.row_summary == "proj" else self.key_dim
            self.row_output_kernel = self.add_weight(
                name="row_output_kernel", shape=(self.num_heads, summary_dim, dim),
                initializer=matrix_initializer(self.output_initializer, self.num_heads * summary_dim))
            self.row_key_kernel = self.add_weight(
                name="row_key_kernel", shape=(dim, self.num_heads, self.key_dim),
                initializer=matrix_initializer(self.kernel_initializer, dim))
            if self.use_bias:
                self.row_output_bias = weight("row_output_bias", (dim,), "zeros")
                self.row_key_bias = weight("row_key_bias", (self.num_heads, self.key_dim), "zeros")
            self.row_norm.build(input_shape)

    def row_projection(self, x, training=None):
        """The function mapping row summaries [b, h, l, d] to region keys [b, h, l, key_dim], given input x."""
        def project(summaries):
            y = ops.einsum("bhld,hdo->blo", summaries, self.row_output_kernel)
            if self.row_output_bias is not None:
                y = y + self.row_output_bias
            y = self.row_norm(x + self.projection_dropout_layer(y, training=training))
            keys = ops.einsum("blo,ohk->bhlk", y, self.row_key_kernel)
            return keys if self.row_key_bias is None else keys + self.row_key_bias[None, :, None, :]
        return project

    def kernel_arguments(self, training=None):
        options = super().kernel_arguments(training)
        if self.uses_pooling_kernels:
            options.update(query_pooling_kernel=self.query_pooling_kernel, key_pooling_kernel=self.key_pooling_kernel)
        return options

    def attend_input(self, x, q, k, v, training=None):
        """The kernel on q, k, v with the row projection of this layer's input x (row_summary proj/wsum_proj)."""
        options = self.kernel_arguments(training)
        if self.uses_row_projection:
            options.update(row_projection=self.row_projection(x, training))
        return combiner_attention(q, k, v, **options)

    def decoding_arguments(self):
        """The options of the "combiner" decoder (`combiner.decoding`): the kernel's, and the row projection (not
        bound to an input: a step projects the rows it completes)."""
        options = self.kernel_arguments()
        if self.uses_row_projection:
            options.update(row_projection=self.row_projection)
        return options

    def get_config(self):
        config = super().get_config()
        config.update(variant=self.variant, segment_length=self.segment_length, local_summary=self.local_summary,
                      row_summary=self.row_summary, max_length=self.max_length,
                      projection_dropout=self.projection_dropout)
        return config
