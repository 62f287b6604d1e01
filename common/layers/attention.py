"""Multi-head self-attention that owns the projections and delegates the attention itself to a kernel."""

import keras
from keras import ops

from common.attention import checks, get_decoder, get_kernel
from common.layers.autocast import autocast_weights
from common.serialization import fresh_initializer


def matrix_initializer(initializer, fan_in):
    """Initialises a [dim, heads, head_dim] or [heads, head_dim, dim] kernel as the [fan_in, fan_out] matrix
    it is.

    Keras computes fans of a rank-3 kernel as for a convolution (fan_in = heads x dim for the first shape), so
    fan-based initialisers (Glorot, variance scaling) would draw from the wrong scale; the papers' projections
    are plain dense layers.
    """
    initializer = fresh_initializer(initializer)

    def initialize(shape, dtype=None):
        fan_out = 1
        for size in shape:
            fan_out *= size
        return ops.reshape(initializer((fan_in, fan_out // fan_in), dtype=dtype), shape)

    return initialize


@keras.saving.register_keras_serializable(package="common")
class SelfAttention(keras.layers.Layer):
    """Projects x to per-head q, k, v, runs an attention kernel, and projects the heads back.

    The kernel is named (`kernel="local"`, see `common.attention.register_kernel`) so that the layer's config
    stays serialisable; `kernel_options` are passed to it (e.g. `{"block_size": 256}`). Families with stateful
    kernels (routing) subclass this layer and override `attend`.

    Args:
      num_heads, key_dim: heads and per-head query/key width. value_dim: per-head value width (default key_dim).
      kernel, kernel_options: the attention kernel and its options.
      causal: autoregressive attention.
      use_bias: biases on the q/k/v/output projections.
      max_relative_position: > 0 adds Shaw relative key and value embeddings (tables shared across heads),
        distances clipped at this value; the kernel must accept `relative_keys` / `relative_values`.
      dropout: dropout on the attention probabilities, in training only.
      kernel_initializer: initialiser of the q/k/v projections; output_initializer of the output one.
      output_dim: width of the output; default the input width.
    """

    # Constructor arguments a subclass sets itself (its kernel, ...): left out of its config, overridden if given.
    derived_arguments = ()

    def __init__(self, num_heads, key_dim, value_dim=None, kernel="dense", kernel_options=None, causal=True,
                 use_bias=False, max_relative_position=0, dropout=0.0, kernel_initializer="glorot_uniform",
                 output_initializer=None, output_dim=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_heads", num_heads), ("key_dim", key_dim), ("value_dim", value_dim or key_dim)):
            checks.check_positive_int(name, value)
        get_kernel(kernel)  # Fails early, listing the registered kernels.
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = value_dim or key_dim
        self.kernel = kernel
        self.kernel_options = dict(kernel_options or {})
        self.causal = causal
        self.use_bias = use_bias
        self.max_relative_position = max_relative_position
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_initializer = keras.initializers.get(output_initializer or kernel_initializer)
        self.output_dim = output_dim
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if dropout else None

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"SelfAttention expects inputs [batch, length, dim] with a known dim; got "
                             f"{tuple(input_shape)}.")
        dim = input_shape[-1]
        heads = self.num_heads

        def projection(name, shape, initializer):
            inputs = dim if name != "output" else heads * self.value_dim
            kernel = self.add_weight(name=f"{name}_kernel", shape=shape,
                                     initializer=matrix_initializer(initializer, inputs))
            bias = self.add_weight(name=f"{name}_bias", shape=shape[-1:] if name == "output" else shape[1:],
                                   initializer="zeros") if self.use_bias else None
            return kernel, bias

        self.query = projection("query", (dim, heads, self.key_dim), self.kernel_initializer)
        # No key weights for heads that do not use them (e.g. routing heads that share q and k): an unused
        # weight only wastes memory, and its all-zero gradient breaks Keras' factored Adafactor update (NaN).
        self.key = projection("key", (dim, self.key_heads, self.key_dim),
                              self.kernel_initializer) if self.key_heads else None
        self.value = projection("value", (dim, heads, self.value_dim), self.kernel_initializer)
        self.output_projection = projection("output", (heads, self.value_dim, self.output_dim or dim),
                                            self.output_initializer)
        self.relative_keys = self.relative_values = None
        if self.max_relative_position:
            rows = 2 * self.max_relative_position + 1
            self.relative_keys = self.add_weight(name="relative_keys", shape=(rows, self.key_dim),
                                                 initializer=fresh_initializer(self.kernel_initializer))
            self.relative_values = self.add_weight(name="relative_values", shape=(rows, self.value_dim),
                                                   initializer=fresh_initializer(self.kernel_initializer))

    @property
    def key_heads(self):
        """Heads that need a key projection; subclasses whose heads reuse the queries return fewer."""
        return self.num_heads

    def project(self, x, weights):
        """[batch, length, dim] -> [batch, heads, length, head_dim]."""
        kernel, bias = weights
        y = ops.einsum("bld,dhk->bhlk", x, kernel)
        return y if bias is None else y + bias[None, :, None, :]

    def kernel_arguments(self, training=None):
        """The keyword arguments of the kernel: its options, relative tables, and dropout in training."""
        options = dict(self.kernel_options, causal=self.causal)
        if self.relative_keys is not None:
            options.update(relative_keys=self.relative_keys, relative_values=self.relative_values)
        if training and self.dropout:
            options.update(dropout_rate=self.dropout, seed=self.seed_generator)
        return options

    def attend(self, q, k, v, training=None):
        """Runs the kernel on per-head q, k, v; subclasses with several kinds of heads override this."""
        return get_kernel(self.kernel)(q, k, v, **self.kernel_arguments(training))

    def project_heads(self, x):
        """x [batch, length, dim] -> q, k, v [batch, heads, length, head_dim] (k None without key weights)."""
        q, v = self.project(x, self.query), self.project(x, self.value)
        k = self.project(x, self.key) if self.key is not None else None
        return q, k, v

    def combine_heads(self, heads):
        """[batch, heads, length, value_dim] -> [batch, length, output_dim] through the output projection."""
        kernel, bias = self.output_projection
        out = ops.einsum("bhld,hdo->blo", heads, kernel)
        return out if bias is None else out + bias

    def attend_input(self, x, q, k, v, training=None):
        """The heads given the layer input x and its projections; layers whose kernel also reads x (Combiner's
        row projection) override this rather than `call`."""
        return self.attend(q, k, v, training=training)

    def call(self, x, training=None):
        q, k, v = self.project_heads(x)
        return self.combine_heads(self.attend_input(x, q, k, v, training=training))

    # Incremental decoding (`apps.sample`): one pass over the prompt that also returns a cache, then one
    # token per step, through the kernel's registered decoder (`common.attention.decoding`), given
    # `decoding_arguments`. A layer that mixes kernels (routing) overrides `start_cache` and `attend_next`.

    @autocast_weights
    def prefill(self, x, cache_length):
        """The layer's output on a prompt x [batch, n, dim] (not training) and the cache for decoding positions
        n .. cache_length - 1. Returns (out, cache)."""
        q, k, v = self.project_heads(x)
        cache = self.start_cache(x, q, k, v, cache_length)  # first: it rejects layers that cannot decode
        return self.combine_heads(self.attend_prompt(x, q, k, v)), cache

    @autocast_weights
    def decode(self, x, cache, position):
        """The output at `position` (a scalar int tensor) for its input x [batch, 1, dim], given the cache of
        the positions before it. Returns (out [batch, 1, output_dim], cache)."""
        q, k, v = self.project_heads(x)
        heads, cache = self.attend_next(x, q, k, v, cache, position)
        return self.combine_heads(heads), cache

    def attend_prompt(self, x, q, k, v):
        """The heads of a prompt pass: `attend_input` without training; a layer whose `attend` has training
        side effects (losses, state updates) overrides it to leave them out."""
        return self.attend_input(x, q, k, v, training=False)

    def decoding_arguments(self):
        """The options of the kernel's decoder: the kernel's, by default."""
        return self.kernel_arguments()

    def start_cache(self, x, q, k, v, cache_length):
        """The decoding cache of the prompt, given its input x and projections q, k, v."""
        start, _ = get_decoder(self.kernel)
        return start(x, q, k, v, cache_length, **self.decoding_arguments())

    def attend_next(self, x, q, k, v, cache, position):
        """The heads [batch, heads, 1, value_dim] at `position` and the updated cache."""
        _, step = get_decoder(self.kernel)
        return step(x, q, k, v, cache, position, **self.decoding_arguments())

    def summaries(self):
        """Scalars a trainer logs for this layer, {"group/name": value}; none by default (routing logs its
        k-means cluster sizes)."""
        return {}

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, key_dim=self.key_dim, value_dim=self.value_dim,
                      kernel=self.kernel, kernel_options=self.kernel_options, causal=self.causal,
                      use_bias=self.use_bias, max_relative_position=self.max_relative_position,
                      dropout=self.dropout, output_dim=self.output_dim, seed=self.seed,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      output_initializer=keras.initializers.serialize(self.output_initializer))
        for key in self.derived_arguments:
            config.pop(key)
        return config
