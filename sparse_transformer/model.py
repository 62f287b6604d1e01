"""`SparseTransformerLM`: the Sparse Transformer (Child et al., 2019) as a `DecoderLM` preset.

What the preset fixes, following the paper and OpenAI's released training code (reference notes, section 2):
pre-activation residual blocks with LayerNorm (epsilon 1e-5) and a final LayerNorm; the feed-forward
`W2 gelu_sigmoid(W1 x + b1) + b2` with gelu_sigmoid(x) = x sigmoid(1.702 x), width `ffn_multiple` x d; q/k/v and
W1 drawn with variance 0.125 / fan_in, the attention output projection and W2 with variance 0.125 / (2 N fan_in)
(N layers); token embeddings N(0, 0.125 / sqrt(d)) and position tables N(0, 0.125 / sqrt(d n_tables)); an
untied output head initialised to zero, without bias; learned factorised positions (row, column, channel for
images; i // stride and i % stride for text); dropout only at the end of each residual branch; a learned start
vector. Deviations, all small: the start vector is prepended to the token embeddings and the position
embedding of t is added at position t (the released code shifts token and position embedding together); one
LayerNorm epsilon for the blocks and the final norm (the release uses 1e-6 for the last).

Options of the paper: `remat` recomputes attention and feed-forward in the backward pass; `mixed_precision`
computes in bfloat16 with float32 variables, softmax and logits.
"""

import math

import keras

from common.attention import checks
from common.models import DecoderLM
from sparse_transformer.attention import SparseAttention
from sparse_transformer.patterns import OPENAI_CODES, check_pattern_options


def parse_schedule(attention_schedule, num_layers):
    """`"b,bT,b,b"` -> the pattern of every layer (layer i takes entry i mod len), as the released `stack()`.

    Entries are pattern specs (`fixed`, `local+strided`, `local|strided`) or the released codes `a` (all),
    `b` (local) and `bT` (strided); the bidirectional codes `*_all` have no place in a decoder.
    """
    entries = [entry.strip() for entry in str(attention_schedule).split(",")]
    patterns = []
    for entry in entries:
        pattern, causal = OPENAI_CODES.get(entry, (entry, True))
        if not causal:
            raise ValueError(f"attention_schedule entry {entry!r} is bidirectional; a decoder LM needs causal "
                             f"patterns (a, b, bT or a pattern spec).")
        patterns.append(pattern)
    return [patterns[i % len(patterns)] for i in range(num_layers)]


@keras.saving.register_keras_serializable(package="sparse_transformer")
class SparseTransformerLM(DecoderLM):
    """Decoder-only Sparse Transformer.

    Defaults are the paper's enwik8 model (30 layers, d=512, 8 heads, fixed pattern, stride 128, summary 32,
    context 12,288). CIFAR-10: `attention_schedule="bT,b,b,b"`, `position_axes=(32, 32, 3)`, stride 96.

    Args:
      vocabulary_size, num_layers, hidden_dim, num_heads: sizes.
      attention_schedule: one pattern for every layer, or comma-separated entries interleaved over the layers
        (see `parse_schedule`).
      stride, summary, num_summary_patterns: the patterns' l, c and distinct summary sub-blocks across heads.
      max_length: longest sequence; with `position_axes=None` the text positions are (ceil(max_length /
        stride), stride).
      position_axes: axis sizes of the factorised position embedding, e.g. (32, 32, 3) for CIFAR-10.
      ffn_multiple: feed-forward width / d (the released `mlp_multiple`; 2.0 is the paper's half size).
      qk_ratio: query/key width / value width (the released `qk_ratio`; 0.5 is the paper's half size).
      dropout: at the end of each residual branch (the paper's only dropout).
      norm_epsilon: LayerNorm epsilon.
      remat: recompute attention and feed-forward in the backward pass instead of storing activations.
      logits_initializer: of the untied output projection; "zeros" is the released image code's `logits_w=0`.
        A zero head gives every weight below it a zero gradient at the first step and, at small sizes, holds
        text models at the byte unigram for hundreds of steps (cpu_small.gin starts it random instead).
      query_chunk_size, ffn_chunk_size: compute attention and feed-forward in chunks of this many positions,
        each recomputed in the backward pass (see `sparse_attention`, `FeedForward`): with remat, what lets a
        small model train on a million tokens.
      mixed_precision: bfloat16 compute (float32 variables, softmax and logits).
    """

    def __init__(self, vocabulary_size=256, num_layers=30, hidden_dim=512, num_heads=8, attention_schedule="fixed",
                 stride=128, summary=32, num_summary_patterns=1, max_length=12288, position_axes=None,
                 ffn_multiple=4.0, qk_ratio=1.0, dropout=0.0, norm_epsilon=1e-5, remat=False,
                 query_chunk_size=None, ffn_chunk_size=None, mixed_precision=False, seed=None,
                 logits_initializer="zeros", **kwargs):
        for name, value in (("num_layers", num_layers), ("num_heads", num_heads), ("hidden_dim", hidden_dim),
                            ("max_length", max_length)):
            checks.check_positive_int(name, value)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by num_heads {num_heads}.")
        value_dim = hidden_dim // num_heads
        key_dim = int(round(value_dim * qk_ratio))
        ffn_dim = int(round(hidden_dim * ffn_multiple))
        checks.check_positive_int("key_dim (hidden_dim / num_heads x qk_ratio)", key_dim)
        schedule = parse_schedule(attention_schedule, num_layers)
        for pattern in set(schedule):
            check_pattern_options(pattern, stride, summary, num_heads, num_summary_patterns)
        if position_axes is None:
            if not stride:
                raise ValueError("the text positions (i // stride, i % stride) need a stride; give stride or "
                                 "position_axes.")
            position_axes = (math.ceil(max_length / stride), stride)
        position_axes = tuple(int(size) for size in position_axes)
        if math.prod(position_axes) < max_length:
            raise ValueError(f"position_axes {position_axes} cover {math.prod(position_axes)} positions, fewer "
                             f"than max_length {max_length}.")
        if mixed_precision:
            kwargs["dtype"] = "mixed_bfloat16"
        logits_initializer = keras.initializers.get(logits_initializer)
        self.preset = dict(
            vocabulary_size=vocabulary_size, num_layers=num_layers, hidden_dim=hidden_dim, num_heads=num_heads,
            attention_schedule=attention_schedule, stride=stride, summary=summary,
            num_summary_patterns=num_summary_patterns, max_length=max_length, position_axes=list(position_axes),
            ffn_multiple=ffn_multiple, qk_ratio=qk_ratio, dropout=dropout, norm_epsilon=norm_epsilon, remat=remat,
            query_chunk_size=query_chunk_size, ffn_chunk_size=ffn_chunk_size, mixed_precision=mixed_precision,
            seed=seed, logits_initializer=keras.initializers.serialize(logits_initializer))

        def variance(scale):
            return keras.initializers.VarianceScaling(scale, mode="fan_in", distribution="untruncated_normal")

        projection_initializer = variance(0.125)
        output_initializer = variance(0.125 / (2 * num_layers))
        attention = [
            SparseAttention(num_heads=num_heads, key_dim=key_dim, value_dim=value_dim, pattern=pattern,
                            stride=stride, summary=summary, num_summary_patterns=num_summary_patterns,
                            query_chunk_size=query_chunk_size, causal=True, use_bias=True, kernel_initializer=projection_initializer,
                            output_initializer=output_initializer, dtype=kwargs.get("dtype"))
            for pattern in schedule]
        super().__init__(
            vocabulary_size=vocabulary_size, num_layers=num_layers, hidden_dim=hidden_dim, attention=attention,
            ffn_dim=ffn_dim, ffn_activation="gelu_sigmoid", ffn_use_bias=True,
            ffn_chunk_size=ffn_chunk_size, position_axes=position_axes,
            norm_placement="pre", norm_epsilon=norm_epsilon, final_norm=True, dropout=dropout,
            tie_embeddings=False, output_bias=False, kernel_initializer=projection_initializer,
            ffn_output_initializer=output_initializer,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.125 / math.sqrt(hidden_dim)),
            position_initializer=keras.initializers.RandomNormal(
                stddev=0.125 / math.sqrt(hidden_dim * len(position_axes))),
            logits_initializer=logits_initializer, seed=seed, remat=remat, **kwargs)

    def get_config(self):
        base = super().get_config()
        return dict({key: base[key] for key in ("name", "trainable", "dtype") if key in base}, **self.preset)
