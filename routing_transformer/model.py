"""`RoutingTransformerLM`: the authors' `sparse_transformer_local` hyperparameter family as a `DecoderLM` preset.

What the preset fixes, following the released code (reference notes, section 1): post-LN blocks
(`x = LN(x + dropout(f(x)))`, epsilon 1e-6, residual dropout 0.1), no final norm, GEGLU feed-forward without
biases (ReLU with biases for the image configs), no absolute positions (relative attention only, unless
`position_axes` is given), an embedding size that may differ from the hidden size with dense maps on both
sides, an untied output layer with bias, `variance_scaling(0.2, fan_avg, uniform)` initialisation, and
per-layer attention: the first `skip_first` layers use local heads only (local + routing heads count), the
others `local_heads` local heads plus `routing_heads` routing heads; `strided_heads` and `cluster_strided_heads`
(the original's `sparsity_strided_num_heads` and `sparsity_cluster_strided_num_heads`) are in every layer, as
the original passes them to every layer. Options of the released hparams:
`target_dropout` (text) and `channel_embeddings` (the image model `SparseImagetransformer`).

The decoder input follows `prepare_decoder` and `transformer_decoder_layers`: embeddings, dropout
`embedding_dropout` (T2T's `hparams.dropout`), the dense `emb_dense` (`project_embeddings=True`, as the
papers' gin files set it, applies it even at equal widths so that a T2T checkpoint maps one-to-one), then
dropout `input_dropout`, which defaults to the residual `dropout` (T2T's `layer_prepostprocess_dropout`, which
the original always applies to the decoder input).
"""

import math

import keras

from common.models import DecoderLM
from routing_transformer.attention import RoutingAttention


def default_initializer():
    return keras.initializers.VarianceScaling(scale=0.2, mode="fan_avg", distribution="uniform")


@keras.saving.register_keras_serializable(package="routing_transformer")
class RoutingTransformerLM(DecoderLM):
    """Decoder-only Routing Transformer language model.

    Defaults are those of `sparse_transformer_local` (4096 tokens, 24 layers of width 512, 8 local heads,
    GEGLU 2048, max relative position 1024); set `routing_heads`, `num_clusters` and `window` for routing.
    `routing="balanced"` is the original's top-k routing, which is not strictly causal (see
    `routing_attention`); `routing="causal"` is strictly causal. `block_size` and `look_back` are the local
    heads' query block and the number of previous blocks they see (the original's `query_shape` and
    `memory_flange / query_shape`). With `share_qk=False`, `key_update` says whether keys make a k-means step
    of their own ("separate", the original) or share the queries' ("joint"). `ema=False` trains the centroids
    by gradient instead of the k-means EMA, and `hash_items=True` routes by random-projection hashing into
    `num_clusters` buckets instead (the original's LSH baseline; see `RoutingAttention`). `strided_heads` attend
    to every `block_size`-th earlier position; `cluster_strided_heads` (at most `routing_heads`, balanced routing)
    are routing heads whose clusters take every (length // window)-th token of a centroid's ranking. `mixed_precision` computes in
    bfloat16 with float32 variables, k-means state, softmax and logits. `keep_attention_weights` keeps the local
    and routing heads' attention weights for the backward pass instead of recomputing them (faster, for more
    memory: for short contexts; see `RoutingAttention`). `count_epsilon=0.01` averages a token's routed outputs
    as the original does (over its clusters + 0.01; the default 0 averages exactly); `apps.convert_t2t` sets it.

    `target_dropout` replaces input ids by 0 in training (see `DecoderLM`; wikitext-103 uses 0.25).
    `channel_embeddings` embeds images flattened as `position_axes = (rows, columns, channels)` as the
    original's image model does: a token table per channel scaled by sqrt(width), and row and column position
    tables with a vector per channel, drawn N(0, 1 / sqrt(channels x width)) and scaled by sqrt(channels x
    width) (see `DecoderLM`).
    """

    def __init__(self, vocabulary_size=256, num_layers=24, hidden_dim=512, embedding_dim=None, ffn_dim=2048,
                 ffn_activation="geglu", ffn_use_bias=None, local_heads=8, routing_heads=0, num_clusters=1,
                 window=1, block_size=256, look_back=1, share_qk=True, routing="balanced",
                 max_relative_position=1024,
                 local_relative=True, routing_relative=True, skip_first=0, dropout=0.1, attention_dropout=0.0,
                 ffn_dropout=0.0, input_dropout=None, target_dropout=0.0, norm_epsilon=1e-6, decay=0.999, beta=1e-4,
                 key_update="separate", ema=True, hash_items=False, require_coverage=False, position_axes=None,
                 channel_embeddings=False,
                 initializer=None, mixed_precision=False, seed=None, embedding_dropout=0.0,
                 project_embeddings=False, strided_heads=0, cluster_strided_heads=0, keep_attention_weights=False,
                 count_epsilon=0.0, **kwargs):
        num_heads = local_heads + routing_heads + strided_heads + cluster_strided_heads
        if num_heads < 1 or hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by the number of heads (local + routing + "
                             f"strided + cluster-strided) = {num_heads} (> 0).")
        if not 0 <= skip_first <= num_layers:
            raise ValueError(f"skip_first must be in [0, num_layers={num_layers}]; got {skip_first}.")
        if cluster_strided_heads and skip_first:
            raise ValueError("cluster_strided_heads need routing heads in every layer, and the first skip_first "
                             "layers have none (the original fails its assert there): set skip_first = 0.")
        initializer = keras.initializers.get(initializer or default_initializer())
        ffn_use_bias = ffn_activation != "geglu" if ffn_use_bias is None else ffn_use_bias
        if mixed_precision:
            kwargs["dtype"] = "mixed_bfloat16"
        self.preset = dict(
            vocabulary_size=vocabulary_size, num_layers=num_layers, hidden_dim=hidden_dim,
            embedding_dim=embedding_dim, ffn_dim=ffn_dim, ffn_activation=ffn_activation,
            ffn_use_bias=ffn_use_bias, local_heads=local_heads, routing_heads=routing_heads,
            num_clusters=num_clusters, window=window, block_size=block_size, look_back=look_back,
            share_qk=share_qk, routing=routing, max_relative_position=max_relative_position,
            local_relative=local_relative, routing_relative=routing_relative, skip_first=skip_first, dropout=dropout,
            attention_dropout=attention_dropout, ffn_dropout=ffn_dropout, input_dropout=input_dropout,
            embedding_dropout=embedding_dropout, project_embeddings=project_embeddings,
            target_dropout=target_dropout, norm_epsilon=norm_epsilon, decay=decay, beta=beta,
            key_update=key_update, ema=ema, hash_items=hash_items, require_coverage=require_coverage,
            position_axes=list(position_axes) if position_axes else None, channel_embeddings=channel_embeddings,
            initializer=keras.initializers.serialize(initializer), mixed_precision=mixed_precision, seed=seed,
            strided_heads=strided_heads, cluster_strided_heads=cluster_strided_heads,
            keep_attention_weights=keep_attention_weights, count_epsilon=count_epsilon)
        attention = []
        for i in range(num_layers):
            layer_routing_heads = routing_heads if i >= skip_first else 0
            attention.append(RoutingAttention(
                local_heads=local_heads + routing_heads - layer_routing_heads, routing_heads=layer_routing_heads,
                strided_heads=strided_heads, cluster_strided_heads=cluster_strided_heads,
                key_dim=hidden_dim // num_heads,
                num_clusters=num_clusters, window=window, block_size=block_size, look_back=look_back,
                share_qk=share_qk, routing=routing, max_relative_position=max_relative_position,
                local_relative=local_relative,
                routing_relative=routing_relative, decay=decay, beta=beta, key_update=key_update, ema=ema,
                hash_items=hash_items, require_coverage=require_coverage, keep_weights=keep_attention_weights,
                count_epsilon=count_epsilon,
                dropout=attention_dropout, kernel_initializer=initializer,
                seed=None if seed is None else seed + i, dtype=kwargs.get("dtype")))
        position_initializer = None
        if channel_embeddings and position_axes:
            position_initializer = keras.initializers.RandomNormal(
                stddev=1.0 / math.sqrt(position_axes[-1] * hidden_dim))
        super().__init__(
            vocabulary_size=vocabulary_size, num_layers=num_layers, hidden_dim=hidden_dim, attention=attention,
            ffn_dim=ffn_dim, ffn_activation=ffn_activation, ffn_use_bias=ffn_use_bias, ffn_dropout=ffn_dropout,
            embedding_dim=embedding_dim, position_axes=position_axes, channel_embeddings=channel_embeddings,
            norm_placement="post", norm_epsilon=norm_epsilon, final_norm=False, dropout=dropout,
            input_dropout=dropout if input_dropout is None else input_dropout,
            embedding_dropout=embedding_dropout, project_embeddings=project_embeddings, target_dropout=target_dropout,
            tie_embeddings=False, output_bias=True,
            kernel_initializer=initializer, embeddings_initializer=initializer, logits_initializer=initializer,
            position_initializer=position_initializer, seed=seed, **kwargs)

    def routing_layers(self):
        """The attention layers that have routing heads (their `kmeans` holds the centroids)."""
        return [block.attention for block in self.blocks if block.attention.routing_heads]

    def get_config(self):
        base = super().get_config()
        return dict({key: base[key] for key in ("name", "trainable", "dtype") if key in base}, **self.preset)
