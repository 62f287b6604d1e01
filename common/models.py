"""The decoder-only language model that every family plugs its attention into.

A family's model is a preset of `DecoderLM` (which attention per layer, which defaults), not a second
Transformer. The model predicts token t from tokens < t: it embeds the ids, shifts the embeddings right by
one with a learned start vector, runs the blocks, and returns float32 logits [batch, length, vocabulary].
So `model.fit(x=ids, y=ids)` trains it, and every position, the first included, is scored.
"""

import math

import keras
from keras import ops

from common.attention import checks
from common.layers import DecoderBlock, FactorizedPositionEmbedding, FeedForward, LayerNorm
from common.layers.autocast import autocast_weights
from common.serialization import fresh_copy, fresh_initializer


@keras.saving.register_keras_serializable(package="common")
class DecoderLM(keras.Model):
    """Decoder-only Transformer LM with per-layer attention.

    Args:
      vocabulary_size: number of token ids.
      num_layers, hidden_dim: depth and width.
      attention: an attention layer (copied for every layer) or a list of `num_layers` attention layers
        (e.g. local-only first layers, interleaved patterns). Serialised configs are accepted too.
      ffn_dim, ffn_activation, ffn_use_bias, ffn_dropout, ffn_chunk_size: the feed-forward sub-layer (see
        `FeedForward`).
      embedding_dim: token embedding width; when it differs from hidden_dim, a dense layer (with bias) maps
        embeddings to hidden_dim and another maps the final hidden state back before the output head.
      project_embeddings: True maps the embeddings through that dense layer even when embedding_dim equals
        hidden_dim (tensor2tensor's `emb_dense`, which the Routing Transformer always applies); None only when
        the widths differ.
      position_axes: None for no absolute positions (the Routing Transformer relies on relative attention),
        or the axis sizes of a learned factorised position embedding, e.g. (max_length,), (32, 32, 3).
      channel_embeddings: tensor2tensor's image embeddings (`get_channel_embeddings`,
        `add_positional_embedding_nd`), for images flattened as position_axes = (rows, columns, channels):
        the id input at position t (token t - 1) is looked up in the table of t's channel (vocabulary_size x
        channels rows) and, start vector included, multiplied by sqrt(embedding_dim); the positions are one
        table per spatial axis holding a vector per channel (see `FactorizedPositionEmbedding`), multiplied by
        sqrt(channels x hidden_dim). Untied output only.
      norm_placement: "pre" or "post" LayerNorm in the blocks; norm_epsilon its epsilon.
      final_norm: LayerNorm after the last block; default True for pre-LN, False for post-LN.
      dropout: residual dropout; input_dropout: dropout on the first block's input (after the embedding
        projection and positions); embedding_dropout: dropout on the looked-up embeddings, before the
        projection (tensor2tensor's `hparams.dropout` in the Routing Transformer's `prepare_decoder`).
      target_dropout: in training, each input id is replaced by id 0 with this probability before the shift
        (tensor2tensor's `target_dropout`, where id 0 is padding); the targets scored by the loss are unchanged.
      tie_embeddings: the output head reuses the token embedding matrix.
      output_bias: a bias on the output logits.
      kernel_initializer: initialiser of feed-forward input projections; ffn_output_initializer of the
        feed-forward output projection; embeddings_initializer of the token embeddings and the start vector;
        position_initializer of the position tables (default embeddings_initializer); logits_initializer of
        an untied output head.
      remat: recompute the blocks' branches in the backward pass instead of storing their activations
        (see `DecoderBlock`).
    """

    def __init__(self, vocabulary_size, num_layers, hidden_dim, attention, ffn_dim, ffn_activation="gelu",
                 ffn_use_bias=True, ffn_dropout=0.0, ffn_chunk_size=None, embedding_dim=None, position_axes=None,
                 channel_embeddings=False, norm_placement="pre", norm_epsilon=1e-6, final_norm=None, dropout=0.0,
                 input_dropout=0.0, target_dropout=0.0, tie_embeddings=False, output_bias=True,
                 kernel_initializer="glorot_uniform", ffn_output_initializer=None,
                 embeddings_initializer="glorot_uniform", logits_initializer="glorot_uniform",
                 position_initializer=None, seed=None, remat=False, embedding_dropout=0.0,
                 project_embeddings=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("vocabulary_size", vocabulary_size), ("num_layers", num_layers),
                            ("hidden_dim", hidden_dim), ("ffn_dim", ffn_dim)):
            checks.check_positive_int(name, value)
        attention_list = list(attention) if isinstance(attention, (list, tuple)) else [attention] * num_layers
        not_layers = [layer for layer in attention_list  # layers, or serialised ones (from_config)
                      if not isinstance(layer, (keras.layers.Layer, dict))]
        if not_layers:
            raise ValueError("attention must be an attention layer or a list of num_layers attention layers; got "
                             f"{type(not_layers[0]).__name__}.")
        if len(attention_list) != num_layers:
            raise ValueError(f"attention must be one layer or a list of num_layers={num_layers} layers; got "
                             f"{len(attention_list)}.")
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.ffn_dim = ffn_dim
        self.ffn_activation = ffn_activation
        self.ffn_use_bias = ffn_use_bias
        self.ffn_dropout = ffn_dropout
        self.ffn_chunk_size = ffn_chunk_size
        self.embedding_dim = embedding_dim or hidden_dim
        self.position_axes = tuple(position_axes) if position_axes else None
        if not 0.0 <= target_dropout < 1.0:
            raise ValueError(f"target_dropout must be in [0, 1); got {target_dropout}.")
        if channel_embeddings and (tie_embeddings or not self.position_axes or len(self.position_axes) < 2):
            raise ValueError(f"channel_embeddings needs position_axes = (rows, columns, channels) and an untied "
                             f"output; got position_axes={position_axes}, tie_embeddings={tie_embeddings}.")
        self.channel_embeddings = channel_embeddings
        self.channels = self.position_axes[-1] if channel_embeddings else 1
        self.target_dropout = target_dropout
        self.norm_placement = norm_placement
        self.norm_epsilon = norm_epsilon
        self.final_norm = (norm_placement == "pre") if final_norm is None else final_norm
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.embedding_dropout = embedding_dropout
        self.project_embeddings = project_embeddings
        self.tie_embeddings = tie_embeddings
        self.output_bias = output_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.ffn_output_initializer = keras.initializers.get(ffn_output_initializer or kernel_initializer)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.logits_initializer = keras.initializers.get(logits_initializer)
        self.position_initializer = keras.initializers.get(position_initializer or embeddings_initializer)
        self.seed = seed
        self.remat = remat

        self.token_embedding = keras.layers.Embedding(
            vocabulary_size * self.channels, self.embedding_dim, name="token_embedding", dtype=self.dtype_policy,
            embeddings_initializer=fresh_initializer(self.embeddings_initializer))
        self.embedding_projection = self.output_projection = None
        if self.embedding_dim != hidden_dim or project_embeddings:
            self.embedding_projection = keras.layers.Dense(hidden_dim, name="embedding_projection",
                                                           dtype=self.dtype_policy)
        if self.embedding_dim != hidden_dim:
            self.output_projection = keras.layers.Dense(self.embedding_dim, name="output_projection",
                                                        dtype=self.dtype_policy)
        self.position_embedding = None
        if self.position_axes:
            self.position_embedding = FactorizedPositionEmbedding(self.position_axes, name="position_embedding",
                                                                  initializer=self.position_initializer,
                                                                  channel_tables=channel_embeddings,
                                                                  dtype=self.dtype_policy)
        self.target_dropout_seed = keras.random.SeedGenerator(seed) if target_dropout else None
        self.input_dropout_layer = keras.layers.Dropout(input_dropout, seed=seed, dtype=self.dtype_policy)
        self.embedding_dropout_layer = keras.layers.Dropout(
            embedding_dropout, seed=None if seed is None else seed + 1, dtype=self.dtype_policy)
        # A tuple, not a list: tf.train.Checkpoint does not see layers in Keras 3's tracked lists (they would
        # only be saved by position; see apps.checkpoints.untracked_variables).
        self.blocks = tuple(
            DecoderBlock(
                fresh_copy(layer, f"attention_{i}"),
                FeedForward(ffn_dim, ffn_activation, use_bias=ffn_use_bias, dropout=ffn_dropout,
                            chunk_size=ffn_chunk_size,
                            kernel_initializer=self.kernel_initializer,
                            output_initializer=self.ffn_output_initializer, name=f"feed_forward_{i}",
                            dtype=self.dtype_policy),
                norm_placement=norm_placement, norm_epsilon=norm_epsilon, dropout=dropout, remat=remat,
                name=f"block_{i}", dtype=self.dtype_policy)
            for i, layer in enumerate(attention_list))
        self.final_norm_layer = LayerNorm(norm_epsilon, name="final_norm",
                                          dtype=self.dtype_policy) if self.final_norm else None
        self.logits_layer = None
        if not tie_embeddings:
            self.logits_layer = keras.layers.Dense(vocabulary_size, use_bias=output_bias, name="logits",
                                                   kernel_initializer=fresh_initializer(self.logits_initializer),
                                                   dtype=self.dtype_policy)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"DecoderLM expects token ids [batch, length]; got shape {tuple(input_shape)}.")
        batch, length = input_shape
        self.token_embedding.build(input_shape)
        self.start = self.add_weight(name="start", shape=(self.embedding_dim,),
                                     initializer=fresh_initializer(self.embeddings_initializer))
        hidden_shape = (batch, length, self.hidden_dim)
        if self.embedding_projection is not None:
            self.embedding_projection.build((batch, length, self.embedding_dim))
        if self.output_projection is not None:
            self.output_projection.build(hidden_shape)
        if self.position_embedding is not None:
            self.position_embedding.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        if self.final_norm_layer is not None:
            self.final_norm_layer.build(hidden_shape)
        self.output_bias_weight = None
        if self.logits_layer is not None:
            self.logits_layer.build((batch, length, self.embedding_dim))
        elif self.output_bias:
            self.output_bias_weight = self.add_weight(name="output_bias", shape=(self.vocabulary_size,),
                                                      initializer="zeros")

    def drop_targets(self, token_ids, training=None):
        """In training, the ids with each replaced by 0 with probability `target_dropout`; else the ids."""
        if not training or not self.target_dropout:
            return token_ids
        dropped = keras.random.uniform(ops.shape(token_ids), seed=self.target_dropout_seed) < self.target_dropout
        return ops.where(dropped, ops.zeros_like(token_ids), token_ids)

    def lookup(self, token_ids, positions):
        """Embeddings of ids input at `positions` (the tables of their channels with channel_embeddings)."""
        if self.channel_embeddings:
            token_ids = token_ids + ops.cast(positions % self.channels * self.vocabulary_size, token_ids.dtype)
        return self.token_embedding(token_ids)

    def scale_embeddings(self, embeddings):
        return embeddings * math.sqrt(self.embedding_dim) if self.channel_embeddings else embeddings

    def embed(self, token_ids):
        """Token embeddings shifted right by one, the learned start vector first: position t sees ids < t."""
        x = self.lookup(token_ids, ops.arange(1, ops.shape(token_ids)[1] + 1))
        start = ops.broadcast_to(ops.cast(self.start, x.dtype), (ops.shape(x)[0], 1, self.embedding_dim))
        return self.scale_embeddings(ops.concatenate([start, x[:, :-1]], axis=1))

    def block_inputs(self, embeddings, offset=0, training=None):
        """Shifted embeddings [batch, length, embedding_dim] of positions offset.. -> the first block's input."""
        x = self.embedding_dropout_layer(embeddings, training=training)
        if self.embedding_projection is not None:
            x = self.embedding_projection(x)
        if self.position_embedding is not None:
            positions = self.position_embedding(x, offset=offset)
            if self.channel_embeddings:
                positions = positions * math.sqrt(self.channels * self.hidden_dim)
            x = x + positions
        return self.input_dropout_layer(x, training=training)

    def logits(self, x):
        """The last block's output [batch, length, hidden_dim] -> float32 logits [batch, length, vocabulary]."""
        if self.final_norm_layer is not None:
            x = self.final_norm_layer(x)
        if self.output_projection is not None:
            x = self.output_projection(x)
        if self.logits_layer is not None:
            return ops.cast(self.logits_layer(x), "float32")
        logits = ops.matmul(ops.cast(x, "float32"),
                            ops.transpose(ops.cast(self.token_embedding.embeddings, "float32")))
        return logits if self.output_bias_weight is None else logits + ops.cast(self.output_bias_weight, "float32")

    def call(self, token_ids, training=None):
        if len(token_ids.shape) != 2:
            raise ValueError(f"DecoderLM expects token ids [batch, length]; got shape {tuple(token_ids.shape)}.")
        dtype = keras.backend.standardize_dtype(token_ids.dtype)
        if "int" not in dtype:  # an embedding lookup would truncate 1.5 to 1 without a word
            raise TypeError(f"DecoderLM expects integer token ids; got dtype {dtype}.")
        x = self.block_inputs(self.embed(self.drop_targets(token_ids, training)), training=training)
        for block in self.blocks:
            x = block(x, training=training)
        return self.logits(x)

    # Incremental decoding (`apps.sample`): `prefill` runs the prompt once and returns every block's cache;
    # `decode` then computes one position at a time from the caches.

    @autocast_weights
    def prefill(self, token_ids, cache_length):
        """Logits of a prompt [batch, n] (as `call` without training) and the per-block caches for decoding
        positions n .. cache_length - 1."""
        if not self.built:
            raise ValueError("decoding needs a built model: call it on token ids once (or restore trained weights) "
                             "first.")
        x = self.block_inputs(self.embed(token_ids))
        caches = []
        for block in self.blocks:
            x, cache = block.prefill(x, cache_length)
            caches.append(cache)
        return self.logits(x), tuple(caches)

    @autocast_weights
    def decode(self, previous_ids, caches, position):
        """Logits [batch, vocabulary] at `position` (a scalar int tensor; they predict the token there), given
        the ids at position - 1, previous_ids [batch] (unused at position 0), and the caches of the positions
        before. Returns (logits, caches)."""
        x = self.lookup(previous_ids[:, None], position)
        start = ops.broadcast_to(ops.cast(self.start, x.dtype), ops.shape(x))
        x = self.block_inputs(self.scale_embeddings(ops.where(position > 0, x, start)), offset=position)
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block.decode(x, cache, position)
            new_caches.append(cache)
        return self.logits(x)[:, 0], tuple(new_caches)

    def summaries(self):
        """Scalars a trainer logs, {"group/layer_i/name": value}: every block's attention layer's `summaries()`
        (e.g. routing's k-means cluster sizes), so that the trainer needs to know no layer."""
        scalars = {}
        for i, block in enumerate(self.blocks):
            for name, value in block.attention.summaries().items():
                group, _, stat = name.rpartition("/")
                scalars[f"{group}/layer_{i}/{stat}" if group else f"layer_{i}/{stat}"] = value
        return scalars

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.vocabulary_size,)

    def get_config(self):
        config = super().get_config()
        serialize = keras.initializers.serialize
        config.update(
            vocabulary_size=self.vocabulary_size, num_layers=self.num_layers, hidden_dim=self.hidden_dim,
            attention=[keras.saving.serialize_keras_object(block.attention) for block in self.blocks],
            ffn_dim=self.ffn_dim, ffn_activation=self.ffn_activation, ffn_use_bias=self.ffn_use_bias,
            ffn_dropout=self.ffn_dropout, ffn_chunk_size=self.ffn_chunk_size, embedding_dim=self.embedding_dim,
            position_axes=list(self.position_axes) if self.position_axes else None,
            channel_embeddings=self.channel_embeddings, norm_placement=self.norm_placement,
            norm_epsilon=self.norm_epsilon, final_norm=self.final_norm, dropout=self.dropout,
            input_dropout=self.input_dropout, target_dropout=self.target_dropout, tie_embeddings=self.tie_embeddings,
            output_bias=self.output_bias, kernel_initializer=serialize(self.kernel_initializer),
            ffn_output_initializer=serialize(self.ffn_output_initializer),
            embeddings_initializer=serialize(self.embeddings_initializer),
            logits_initializer=serialize(self.logits_initializer),
            position_initializer=serialize(self.position_initializer), seed=self.seed, remat=self.remat,
            embedding_dropout=self.embedding_dropout, project_embeddings=self.project_embeddings)
        return config
