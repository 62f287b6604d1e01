"""`CombinerLM`: the released TF language model (`models.transformer` + `lm_head`, `configs.LM`) as a
`DecoderLM` preset.

What the preset fixes, following the TF release (reference notes, section 2): pre-LN blocks (LayerNorm epsilon
1e-5) with a final LayerNorm; Combiner attention in every layer with biases on its projections
(`dense_use_bias`); a 4x tanh-GELU feed-forward with biases; a learned absolute position table of
`max_length` rows; the output head tied to the token embedding (`inner_prod`) with a bias; N(0, 0.02)
initialisation of every kernel and embedding; one dropout rate on the embeddings, residual branches and the
feed-forward's inner activation, and a separate attention dropout (`dropatt`). The zoo's start vector replaces
the release's unshifted inputs (see `common.models`). Stochastic depth (`survival_prob`, in no released config)
is not included.
"""

import keras

from combiner.attention import CombinerAttention
from common.attention import checks
from common.models import DecoderLM


def default_initializer():
    """The TF release's `WEIGHT_INITIALIZER`: N(0, 0.02)."""
    return keras.initializers.RandomNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package="combiner")
class CombinerLM(DecoderLM):
    """Decoder-only Combiner language model.

    Defaults are the released `configs.LM` (12 layers of width 768, 12 heads, 2048 tokens, segments of 128)
    with Combiner-Fixed; `variant` picks fixed, logsparse, axial or mixture (`SqrtFixedFullLM`,
    `AxialRowMajorLM` with `row_summary="proj"`, `AxialMixtureLM`). The vocabulary defaults to the zoo's 256
    bytes (the released config's 1024 does not match the paper's 32K SentencePiece model).

    Args:
      vocabulary_size, num_layers, hidden_dim, num_heads: sizes; value width per head hidden_dim / num_heads.
      qk_ratio: query/key width / value width (0.5: the half-size queries and keys of Child et al.'s CIFAR-10
        model, as `SparseTransformerLM.qk_ratio`).
      ffn_dim: feed-forward width; default 4 x hidden_dim.
      max_length: rows of the learned position table (the released `max_seq_len`); also the attention's
        bound on lengths known only at run time (logsparse's levels).
      variant, segment_length, local_summary, row_summary: the attention (see `combiner_attention`).
      embedding_dim: token embedding width, default hidden_dim (dense maps on both sides when it differs).
      tie_embeddings: output logits = h E^T + bias (the release's `inner_prod`); False for a separate head.
      dropout: embeddings, residual branches, feed-forward inner activation and the row projection.
      attention_dropout: the release's `dropatt`.
      norm_epsilon: LayerNorm epsilon.
      initializer: of every kernel and embedding; default N(0, 0.02).
      mixed_precision: bfloat16 compute (float32 variables, softmax and logits).
    """

    def __init__(self, vocabulary_size=256, num_layers=12, hidden_dim=768, num_heads=12, qk_ratio=1.0, ffn_dim=None,
                 max_length=2048, variant="fixed", segment_length=128, local_summary="identity-max",
                 row_summary="proj", embedding_dim=None, tie_embeddings=True, dropout=0.0,
                 attention_dropout=0.0, norm_epsilon=1e-5, initializer=None, mixed_precision=False, seed=None,
                 **kwargs):
        for name, value in (("num_heads", num_heads), ("hidden_dim", hidden_dim), ("max_length", max_length)):
            checks.check_positive_int(name, value)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by num_heads {num_heads}.")
        value_dim = hidden_dim // num_heads
        key_dim = int(round(value_dim * qk_ratio))
        checks.check_positive_int("key_dim (hidden_dim / num_heads x qk_ratio)", key_dim)
        ffn_dim = 4 * hidden_dim if ffn_dim is None else ffn_dim
        initializer = keras.initializers.get(initializer or default_initializer())
        if mixed_precision:
            kwargs["dtype"] = "mixed_bfloat16"
        self.preset = dict(
            vocabulary_size=vocabulary_size, num_layers=num_layers, hidden_dim=hidden_dim, num_heads=num_heads,
            qk_ratio=qk_ratio, ffn_dim=ffn_dim, max_length=max_length, variant=variant, segment_length=segment_length,
            local_summary=local_summary, row_summary=row_summary, embedding_dim=embedding_dim,
            tie_embeddings=tie_embeddings, dropout=dropout, attention_dropout=attention_dropout,
            norm_epsilon=norm_epsilon, initializer=keras.initializers.serialize(initializer),
            mixed_precision=mixed_precision, seed=seed)
        attention = [
            CombinerAttention(num_heads=num_heads, key_dim=key_dim, value_dim=value_dim, variant=variant,
                              segment_length=segment_length, causal=True, local_summary=local_summary,
                              row_summary=row_summary, use_bias=True, dropout=attention_dropout,
                              projection_dropout=dropout, kernel_initializer=initializer, max_length=max_length,
                              seed=None if seed is None else seed + i, dtype=kwargs.get("dtype"))
            for i in range(num_layers)]
        super().__init__(
            vocabulary_size=vocabulary_size, num_layers=num_layers, hidden_dim=hidden_dim, attention=attention,
            ffn_dim=ffn_dim, ffn_activation="gelu_tanh", ffn_use_bias=True, ffn_dropout=dropout,
            embedding_dim=embedding_dim, position_axes=(max_length,), norm_placement="pre",
            norm_epsilon=norm_epsilon, final_norm=True, dropout=dropout, input_dropout=dropout,
            tie_embeddings=tie_embeddings, output_bias=True, kernel_initializer=initializer,
            embeddings_initializer=initializer, logits_initializer=initializer, seed=seed, **kwargs)

    def get_config(self):
        base = super().get_config()
        return dict({key: base[key] for key in ("name", "trainable", "dtype") if key in base}, **self.preset)
