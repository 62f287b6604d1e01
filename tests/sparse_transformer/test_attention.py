"""sparse_attention: equal to dense attention under `attention_mask` for every pattern (forward and gradients,
causal and bidirectional, padded lengths, several head counts), its effective attention matrix, causality,
dynamic lengths, bfloat16 and the registry."""

import numpy as np
import pytest
import tensorflow as tf

from common.attention import dense_attention, get_kernel
from sparse_transformer import attention_mask, sparse_attention
from tests.kernel_checks import assert_weights_exactly_on, effective_matrix, square_tensors

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1:UserWarning")  # 1 key

TOL = dict(rtol=1e-5, atol=1e-5)
KEY_DIM, VALUE_DIM = 4, 3
NUM_SUMMARY_PATTERNS = 2
PATTERNS = ["all", "local", "strided", "block", "summary", "fixed", "local+strided", "strided+block+summary",
            "all+summary", "summary+block", "local|strided", "fixed|local+strided"]
# (length, stride, summary, heads): multiples of the stride and not (padded inside), one length below it.
SIZES = [(16, 4, 1, 2), (13, 4, 1, 4), (3, 4, 2, 2), (22, 5, 2, 4)]
CAUSAL = [True, False]
CAUSAL_IDS = ["causal", "bidirectional"]


def _inputs(seed, length, heads, batch=2, key_dim=KEY_DIM, value_dim=VALUE_DIM):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.standard_normal((batch, heads, length, dim)).astype(np.float32))
            for dim in (key_dim, key_dim, value_dim)]


def _options(pattern, causal, stride, summary):
    return dict(pattern=pattern, causal=causal, stride=stride, summary=summary,
                num_summary_patterns=NUM_SUMMARY_PATTERNS)


def _mask(length, heads, pattern, causal, stride, summary):
    return attention_mask(length, num_heads=heads, **_options(pattern, causal, stride, summary))


def _reference(q, k, v, pattern, causal, stride, summary):
    mask = _mask(q.shape[2], q.shape[1], pattern, causal, stride, summary)
    return dense_attention(q, k, v, causal=False, mask=mask[None])


@pytest.mark.parametrize("causal", CAUSAL, ids=CAUSAL_IDS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_equals_dense_attention_under_the_mask(pattern, causal):
    for length, stride, summary, heads in SIZES:
        q, k, v = _inputs(length, length, heads)
        got = sparse_attention(q, k, v, **_options(pattern, causal, stride, summary))
        assert got.shape == (2, heads, length, VALUE_DIM)
        np.testing.assert_allclose(np.asarray(got), np.asarray(_reference(q, k, v, pattern, causal, stride,
                                                                              summary)),
                                   err_msg=f"length={length} stride={stride} heads={heads}", **TOL)


@pytest.mark.parametrize("causal", CAUSAL, ids=CAUSAL_IDS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_gradients_equal_dense_attention_under_the_mask(pattern, causal):
    """d sum(out * cotangent) / d q, k, v with tf.GradientTape, a padded and an unpadded length."""
    for length, stride, summary, heads in (SIZES[1], SIZES[3]):
        q, k, v = _inputs(length + 1, length, heads)
        cotangent = tf.constant(np.random.default_rng(length).standard_normal((2, heads, length, VALUE_DIM)),
                                tf.float32)
        grads = []
        for fn in (lambda *x: sparse_attention(*x, **_options(pattern, causal, stride, summary)),
                   lambda *x: _reference(*x, pattern, causal, stride, summary)):
            with tf.GradientTape() as tape:
                tape.watch([q, k, v])
                loss = tf.reduce_sum(fn(q, k, v) * cotangent)
            grads.append(tape.gradient(loss, [q, k, v]))
        for name, got, want in zip("qkv", *grads):
            assert np.abs(np.asarray(want)).max() > 1e-3, name
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), err_msg=f"{name} length={length}", **TOL)


@pytest.mark.parametrize("causal", CAUSAL, ids=CAUSAL_IDS)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_effective_matrix_is_the_row_normalised_mask(pattern, causal):
    """kernel(q, k, eye) is the attention matrix: zero exactly where the mask is False, positive where it is
    True, rows summing to 1 (to 0 for a query that sees no key, e.g. summary alone)."""
    length, stride, summary, heads = 14, 4, 1, 4
    q, k, _ = _inputs(3, length, heads)
    matrix = effective_matrix(sparse_attention, q, k, **_options(pattern, causal, stride, summary))
    assert_weights_exactly_on(matrix, np.asarray(_mask(length, heads, pattern, causal, stride, summary)))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_causality(pattern):
    """Changing k and v after position t changes no output at positions <= t (length 15: padded inside)."""
    length, stride, summary, heads = 15, 4, 1, 4
    q, k, v = _inputs(4, length, heads)
    options = _options(pattern, True, stride, summary)
    base = np.asarray(sparse_attention(q, k, v, **options))
    rng = np.random.default_rng(5)
    for t in range(0, length - 1, 2):
        changed = [x.numpy() for x in (k, v)]
        for x in changed:
            x[:, :, t + 1:] = 10 * rng.standard_normal(x[:, :, t + 1:].shape)
        out = np.asarray(sparse_attention(q, *map(tf.constant, changed), **options))
        np.testing.assert_allclose(out[:, :, :t + 1], base[:, :, :t + 1], rtol=0, atol=1e-6, err_msg=f"t={t}")


@pytest.mark.parametrize("causal", CAUSAL, ids=CAUSAL_IDS)
@pytest.mark.parametrize("pattern", ["fixed", "local+strided", "local|strided", "all", "summary", "strided"])
def test_dynamic_length_signature(pattern, causal):
    """One trace with [None, heads, None, dim] serves every batch and length, with the eager result."""
    heads, options = 4, _options(pattern, causal, 4, 1)
    signature = [tf.TensorSpec([None, heads, None, KEY_DIM], tf.float32)] * 2 + [
        tf.TensorSpec([None, heads, None, VALUE_DIM], tf.float32)]
    run = tf.function(lambda q, k, v: sparse_attention(q, k, v, **options), input_signature=signature)
    for batch, length in ((1, 7), (2, 12), (3, 13)):
        q, k, v = _inputs(length, length, heads, batch=batch)
        np.testing.assert_allclose(run(q, k, v).numpy(), np.asarray(sparse_attention(q, k, v, **options)),
                                   err_msg=f"length={length}", **TOL)
    assert run.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("causal", CAUSAL, ids=CAUSAL_IDS)
@pytest.mark.parametrize("pattern", ["fixed", "local+strided", "local|strided", "strided"])
def test_bfloat16_in_bfloat16_out_close_to_float32(pattern, causal):
    low = [tf.cast(x, tf.bfloat16) for x in _inputs(6, 13, 4)]
    options = _options(pattern, causal, 4, 1)
    out = sparse_attention(*low, **options)
    assert out.dtype == tf.bfloat16
    want = sparse_attention(*[tf.cast(x, tf.float32) for x in low], **options)
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), want.numpy(), rtol=3e-2, atol=3e-2)


def test_scale_and_value_dim():
    q, k, v = _inputs(7, 10, 2, value_dim=7)
    options = _options("fixed", True, 4, 1)
    got = sparse_attention(q, k, v, scale=0.3, **options)
    assert got.shape == (2, 2, 10, 7)
    mask = _mask(10, 2, "fixed", True, 4, 1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(dense_attention(q, k, v, causal=False, mask=mask[None],
                                                                           scale=0.3)), **TOL)


def test_batch_entries_are_independent():
    q, k, v = _inputs(8, 13, 2, batch=3)
    options = _options("local+strided", True, 4, 1)
    out = np.asarray(sparse_attention(q, k, v, **options))
    for b in range(3):
        np.testing.assert_allclose(out[b:b + 1], np.asarray(sparse_attention(q[b:b + 1], k[b:b + 1], v[b:b + 1],
                                                                             **options)), **TOL)


def test_registered_kernel():
    assert get_kernel("sparse") is sparse_attention


@pytest.mark.parametrize("shapes,match", [
    (((1, 2, 8, 4), (1, 2, 8, 5), (1, 2, 8, 3)), r"same key_dim"),
    (((1, 2, 8, 4), (1, 2, 6, 4), (1, 2, 6, 3)), r"self-attention: q and k must have the same length"),
    (((1, 2, 8), (1, 2, 8), (1, 2, 8)), r"rank 4"),
])
def test_contract_shapes(shapes, match):
    with pytest.raises(ValueError, match=match):
        sparse_attention(*(tf.zeros(s) for s in shapes), pattern="local", stride=4)


def test_static_number_of_heads_is_required():
    spec = tf.TensorSpec([1, None, 8, 4], tf.float32)
    with pytest.raises(ValueError, match=r"static number of heads"):
        tf.function(lambda q, k, v: sparse_attention(q, k, v, pattern="local", stride=4)).get_concrete_function(
            spec, spec, spec)


@pytest.mark.parametrize("causal", CAUSAL, ids=CAUSAL_IDS)
@pytest.mark.parametrize("pattern", ["fixed", "local+strided|all", "strided", "local", "block"])
@pytest.mark.parametrize("chunk", [8, 16])
def test_query_chunks_give_the_same_output_and_gradients(pattern, causal, chunk):
    """query_chunk_size (recomputed chunks of queries; strided alone: chunks of residue classes) changes
    nothing but memory; 13 pads to 16, so chunks of 8 make two and 16 one."""
    q, k, v = _inputs(9, 13, 4)
    results = []
    for chunk in (None, chunk):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = sparse_attention(q, k, v, query_chunk_size=chunk, **_options(pattern, causal, 4, 1))
            loss = tf.reduce_sum(out * tf.range(13, dtype=tf.float32)[:, None])
        results.append([out] + tape.gradient(loss, [q, k, v]))
    for name, got, want in zip(["out", "q", "k", "v"], *results):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), err_msg=name, **TOL)


@pytest.mark.parametrize("options,match", [
    (dict(query_chunk_size=6), r"query_chunk_size \(6\) must be a multiple of the stride \(4\)"),
    (dict(query_chunk_size=0), r"query_chunk_size must be an integer >= 1"),
    (dict(query_chunk_size=8, dropout_rate=0.1), r"use dropout_rate=0 with it"),
])
def test_bad_query_chunk_size(options, match):
    q, k, v = _inputs(10, 12, 2)
    with pytest.raises(ValueError, match=match):
        sparse_attention(q, k, v, pattern="local", stride=4, **options)


@pytest.mark.parametrize("causal", CAUSAL, ids=CAUSAL_IDS)
@pytest.mark.parametrize("pattern", ["local", "strided", "block", "fixed", "local+strided"])
def test_no_length_by_length_tensor(pattern, causal):
    """Really sparse: at length 1024 and stride 32 no graph tensor has two dims >= length."""
    assert square_tensors(dense_attention, 1024, causal=causal)  # the detector works
    found = square_tensors(sparse_attention, 1024, pattern=pattern, stride=32, summary=8, causal=causal)
    assert not found, found[:5]
