"""What tests/test_jax_backend.py runs under each Keras backend: every registered kernel on the same numpy
inputs, and one small model of every family. Backend-agnostic (numpy and keras.ops only), so the TensorFlow
test process and the JAX worker (`python -m tests.jax_backend_worker`) import the same cases."""

import functools

import numpy as np
from keras import ops

import combiner
import routing_transformer
import sparse_transformer
from common.attention import get_decoder, get_kernel

BATCH, HEADS, LENGTH, DIM = 2, 2, 32, 8
VOCABULARY, MODEL_LENGTH = 48, 32


def _centroids(seed, clusters):
    return np.random.default_rng(seed).standard_normal((HEADS, clusters, DIM)).astype("float32")


# name: (kernel, options); every kernel, every sparse pattern family, every Combiner variant, every routing.
KERNEL_CASES = {
    "dense_causal": ("dense", dict(causal=True)),
    "dense_bidirectional": ("dense", dict(causal=False)),
    "local": ("local", dict(block_size=8, look_back=1)),
    "routing_balanced": ("routing", dict(centroids=_centroids(1, 4), window=8)),
    "routing_causal": ("routing", dict(centroids=_centroids(2, 4), window=8, routing="causal")),
    "routing_unshared_keys": ("routing", dict(centroids=_centroids(3, 4), window=8, share_qk=False)),
    "routing_hashing": ("routing", dict(hash_projection=np.linalg.qr(
        np.random.default_rng(4).standard_normal((HEADS, DIM, 2)))[0].transpose(0, 2, 1).astype("float32"),
        window=8)),
    "routing_cluster_strided": ("routing", dict(centroids=_centroids(5, 4), window=8, share_qk=False,
                                                membership="strided")),
    "strided": ("strided", dict(stride=8)),
    "sparse_fixed": ("sparse", dict(pattern="fixed", stride=8, summary=2)),
    "sparse_local_strided": ("sparse", dict(pattern="local+strided", stride=8)),
    "combiner_fixed": ("combiner", dict(variant="fixed", segment_length=8)),
    "combiner_logsparse": ("combiner", dict(variant="logsparse")),
    "combiner_axial": ("combiner", dict(variant="axial", segment_length=8)),
    "combiner_mixture": ("combiner", dict(variant="mixture", segment_length=8)),
}
SHARED_KEYS = {"routing"}  # kernels that take k = None (keys are the queries) unless share_qk=False
# Every kernel decodes on any backend: a decoded row is the full pass's row, except in balanced routing, where it
# is the row of a full pass over its prefix (membership depends on later tokens), so there both backends'
# decoding is compared.
DECODED_CASES = ("dense_causal", "local", "strided", "sparse_fixed", "sparse_local_strided", "routing_causal",
                 "combiner_fixed", "combiner_logsparse", "combiner_axial", "combiner_mixture")
DECODED_ACROSS_BACKENDS = ("routing_balanced", "routing_unshared_keys", "routing_hashing", "routing_cluster_strided")
PROMPT = 11  # decoded cases: positions 0 .. PROMPT - 1 are the prompt, the rest are decoded one at a time


def kernel_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((BATCH, HEADS, LENGTH, DIM)).astype("float32") for _ in range(3)]


def kernel_outputs():
    """{case: output as float32 numpy} of every kernel case on this backend."""
    q, k, v = kernel_inputs()
    outputs = {}
    for name, (kernel, options) in KERNEL_CASES.items():
        keys = None if kernel in SHARED_KEYS and options.get("share_qk", True) else k
        out = get_kernel(kernel)(q, keys, v, **options)
        outputs[name] = np.asarray(ops.convert_to_numpy(out), np.float32)
    return outputs


def decoded_outputs(cases=DECODED_CASES + DECODED_ACROSS_BACKENDS, compile_step=None):
    """{case: rows PROMPT .. LENGTH - 1 of the kernel's output, decoded one position at a time after a prompt}
    of `cases` on this backend (float32 numpy); `compile_step` (e.g. jax.jit) compiles each case's step once
    for every position (its shapes must not depend on the position)."""
    q, k, v = kernel_inputs()
    outputs = {}
    for name in cases:
        kernel, options = KERNEL_CASES[name]
        keys = None if kernel in SHARED_KEYS and options.get("share_qk", True) else k
        start, step = get_decoder(kernel)
        step = functools.partial(step, **options)
        if compile_step is not None:
            step = compile_step(step)
        cache = start(None, q[:, :, :PROMPT], None if keys is None else keys[:, :, :PROMPT], v[:, :, :PROMPT],
                      LENGTH, **options)
        rows = []
        for position in range(PROMPT, LENGTH):
            span = slice(position, position + 1)
            out, cache = step(None, q[:, :, span], None if keys is None else keys[:, :, span], v[:, :, span], cache,
                              ops.convert_to_tensor(position, "int32"))
            rows.append(np.asarray(ops.convert_to_numpy(out), np.float32))
        outputs[name] = np.concatenate(rows, axis=2)
    return outputs


def family_models():
    """{family (or a variant of one): an unbuilt small model} (initial weights differ between backends: copy
    them)."""
    return {
        "routing": routing_transformer.RoutingTransformerLM(
            vocabulary_size=VOCABULARY, num_layers=2, hidden_dim=32, ffn_dim=64, local_heads=2, routing_heads=2,
            num_clusters=2, window=16, block_size=8, max_relative_position=8, skip_first=1, dropout=0.0,
            decay=0.9, seed=1),
        # Causal routing with the attention weights kept for the backward pass (a closure over forward tensors
        # in the custom gradient).
        "routing_kept": routing_transformer.RoutingTransformerLM(
            vocabulary_size=VOCABULARY, num_layers=2, hidden_dim=32, ffn_dim=64, local_heads=2, routing_heads=2,
            num_clusters=2, window=16, block_size=8, max_relative_position=8, dropout=0.0, routing="causal",
            keep_attention_weights=True, seed=4),
        "sparse": sparse_transformer.SparseTransformerLM(
            vocabulary_size=VOCABULARY, num_layers=2, hidden_dim=32, num_heads=2, attention_schedule="fixed",
            stride=8, summary=2, max_length=MODEL_LENGTH, seed=2),
        "combiner": combiner.CombinerLM(
            vocabulary_size=VOCABULARY, num_layers=2, hidden_dim=32, num_heads=2, variant="mixture",
            segment_length=8, max_length=MODEL_LENGTH, seed=3),
    }


def training_ids(seed=0, batch=8):
    """Batches with structure to learn (a repeated random phrase), [batch, MODEL_LENGTH + 1]."""
    rng = np.random.default_rng(seed)
    phrase = rng.integers(0, VOCABULARY, 12)
    starts = rng.integers(0, 12, batch)
    return np.stack([np.resize(np.roll(phrase, -s), MODEL_LENGTH + 1) for s in starts]).astype("int32")
