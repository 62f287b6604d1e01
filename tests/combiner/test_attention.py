"""combiner_attention: full attention in fact (the effective matrix), every variant and option against the
paper-equation reference (forward and gradients), causality, padding, dynamic lengths, bfloat16, and the
absence of length x length tensors."""

import numpy as np
import pytest
import tensorflow as tf

from combiner.attention import combiner_attention
from combiner.cummax import cummax
from combiner.logsparse import num_levels
from combiner.summaries import LOCAL_SUMMARIES
from common.attention import dense_attention
from tests.combiner import _reference as ref
from tests.kernel_checks import assert_weights_exactly_on, causal_support, effective_matrix, square_tensors

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1:UserWarning")  # 1 key

TOL = dict(rtol=1e-5, atol=1e-5)
HEADS, KEY_DIM, VALUE_DIM = 2, 4, 3
# (variant, causal): every form the kernel has.
FORMS = [("fixed", True), ("fixed", False), ("logsparse", True), ("axial", True), ("axial", False),
         ("mixture", True), ("mixture", False)]
FORM_IDS = [f"{v}-{'causal' if c else 'bidirectional'}" for v, c in FORMS]


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _inputs(seed, length, batch=1, heads=HEADS, key_dim=KEY_DIM, value_dim=VALUE_DIM):
    rng = np.random.default_rng(seed)
    return [_normal(rng, batch, heads, length, dim) for dim in (key_dim, key_dim, value_dim)]


def _run(q, k, v, **options):
    return np.asarray(combiner_attention(tf.constant(q), tf.constant(k), tf.constant(v), **options))


def _eye(length, heads=HEADS):
    return np.broadcast_to(np.eye(length, dtype=np.float32), (1, heads, length, length)).copy()


def _projection(seed, dim, key_dim=KEY_DIM, heads=HEADS):
    """A row projection mixing heads, in TF for the kernel and numpy for the reference (any summary width)."""
    rng = np.random.default_rng(seed)
    weights = _normal(rng, heads, dim, heads, key_dim)
    as_tf = lambda s: tf.tanh(tf.einsum("bhld,hdgk->bglk", s, weights))  # noqa: E731
    as_np = lambda s: np.tanh(np.einsum("bhld,hdgk->bglk", s, weights.astype(np.float64)))  # noqa: E731
    return as_tf, as_np


def _options(variant, causal, segment_length=4):
    return dict(variant=variant, causal=causal, segment_length=None if variant == "logsparse" else segment_length)


# --- full attention in fact ---------------------------------------------------------------------------------

def _cases(forms, sizes):
    """(variant, causal, length, segment_length) and ids; bidirectional forms only where the segment divides
    the length (the others raise, see test_errors.py)."""
    cases = [(variant, causal, length, segment) for variant, causal in forms for length, segment in sizes
             if causal or length % segment == 0]
    return cases, [f"{v}-{'causal' if c else 'bidirectional'}-{n}-{m}" for v, c, n, m in cases]


FULL_CASES, FULL_IDS = _cases(FORMS, [(16, 4), (12, 3), (15, 5), (10, 4), (7, 8)])


@pytest.mark.parametrize("variant,causal,length,segment_length", FULL_CASES, ids=FULL_IDS)
def test_effective_matrix_is_full_attention(variant, causal, length, segment_length):
    """kernel(q, k, eye): causal rows are positive on j <= i, zero on j > i; bidirectional rows are positive
    everywhere; every row sums to 1."""
    q, k, _ = _inputs(length * 10 + segment_length, length)
    matrix = effective_matrix(combiner_attention, q, k, **_options(variant, causal, segment_length))
    assert matrix.shape == (1, HEADS, length, length)
    assert_weights_exactly_on(matrix, causal_support(length, length) if causal else True)


@pytest.mark.parametrize("row_summary", ["wsum", "proj", "wsum_proj"])
def test_axial_row_summaries_are_full_attention(row_summary):
    """With learned region keys the structure is the same (here the projection of v = eye's summaries)."""
    length = 12
    q, k, _ = _inputs(1, length)
    projection, _ = _projection(2, length if row_summary == "proj" else KEY_DIM)
    for causal in (True, False):
        matrix = _run(q, k, _eye(length), variant="axial", segment_length=4, causal=causal,
                      row_summary=row_summary, row_projection=projection)
        np.testing.assert_allclose(matrix.sum(-1), 1.0, rtol=0, atol=1e-5)
        support = np.tril(np.ones((length, length), bool)) if causal else np.ones((length, length), bool)
        assert (matrix[..., support] > 0).all() and (matrix[..., ~support] == 0).all()


@pytest.mark.parametrize("length", [1, 2, 3, 8, 9, 17, 33])
def test_logsparse_reaches_position_zero_from_everywhere(length):
    """bit_length(L - 1) levels (the JAX release's ceil(log2(L - 1)) misses position 0 from L - 1 = 2^k)."""
    q, k, _ = _inputs(length, length)
    matrix = _run(q, k, _eye(length), variant="logsparse")
    below = np.tril(np.ones((length, length), bool))
    assert (matrix[..., below] > 0).all() and (matrix[..., ~below] == 0).all()
    assert num_levels(length) == max(length - 1, 0).bit_length()


def test_region_blocks_have_rank_one():
    """Paper section 3.3: the queries of one segment share each earlier segment's local expectation, so that
    block of the effective matrix (Combiner-Fixed) has rank 1."""
    q, k, _ = _inputs(3, 16)
    matrix = _run(q, k, _eye(16), variant="fixed", segment_length=4)[0, 0]
    block = matrix[12:16, 0:4]
    assert np.linalg.matrix_rank(block, tol=1e-6) == 1


# --- against the paper-equation reference ------------------------------------------------------------------

REFERENCE_CASES = (
    [("fixed", causal, {"local_summary": s}) for s in LOCAL_SUMMARIES for causal in (True, False)] +
    [("axial", causal, {"row_summary": s}) for s in ("none", "wsum", "proj", "wsum_proj") for causal in (True, False)] +
    [("mixture", True, {}), ("mixture", False, {}), ("logsparse", True, {})])


def _with_weights(variant, options, seed):
    """Kernel and reference options: pooling kernels for deepset, a row projection for proj."""
    kernel, reference = dict(options), dict(options)
    if options.get("local_summary", "").startswith("deepset"):
        rng = np.random.default_rng(seed)
        for name in ("query_pooling_kernel", "key_pooling_kernel"):
            weight = _normal(rng, KEY_DIM, KEY_DIM)
            kernel[name], reference[name] = tf.constant(weight), weight.astype(np.float64)
    if options.get("row_summary") in ("proj", "wsum_proj"):
        dim = VALUE_DIM if options["row_summary"] == "proj" else KEY_DIM
        kernel["row_projection"], reference["row_projection"] = _projection(seed, dim)
    return kernel, reference


REFERENCE_PARAMS = [(v, c, o, n, m) for v, c, o in REFERENCE_CASES for n, m in [(12, 4), (16, 4), (10, 4)]
                    if c or n % m == 0]


@pytest.mark.parametrize("variant,causal,options,length,segment_length", REFERENCE_PARAMS,
                         ids=[f"{v}-{'c' if c else 'b'}-{'-'.join(map(str, o.values()))}-{n}" for v, c, o, n, _ in
                              REFERENCE_PARAMS])
def test_matches_reference(variant, causal, options, length, segment_length):
    q, k, v = _inputs(length + 7, length, batch=2)
    kernel_options, reference_options = _with_weights(variant, options, length)
    got = _run(q, k, v, **_options(variant, causal, segment_length), **kernel_options)
    want, _ = ref.combiner(q, k, v, **_options(variant, causal, segment_length), **reference_options)
    assert got.shape == (2, HEADS, length, VALUE_DIM)
    np.testing.assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("variant,causal", FORMS, ids=FORM_IDS)
def test_effective_matrix_matches_reference(variant, causal):
    q, k, _ = _inputs(4, 12)
    got = _run(q, k, _eye(12), **_options(variant, causal, 3))
    _, want = ref.combiner(q, k, _eye(12), **_options(variant, causal, 3))
    np.testing.assert_allclose(got, want, **TOL)


GRADIENT_CASES = [("fixed", True, {}), ("fixed", False, {"local_summary": "deepset-mean"}),
                  ("fixed", True, {"local_summary": "relu-sum"}), ("logsparse", True, {}),
                  ("axial", True, {"row_summary": "proj"}), ("axial", False, {"row_summary": "wsum"}),
                  ("mixture", True, {}), ("mixture", False, {})]


@pytest.mark.parametrize("variant,causal,options", GRADIENT_CASES,
                         ids=[f"{v}-{'c' if c else 'b'}-{'-'.join(map(str, o.values()))}" for v, c, o in
                              GRADIENT_CASES])
def test_gradients_match_reference(variant, causal, options):
    """Gradients of sum(out * cotangent) w.r.t. q, k, v against central differences of the reference."""
    length, heads = (9 if causal else 12), 1
    q, k, v = _inputs(11, length, heads=heads, key_dim=3, value_dim=2)
    rng = np.random.default_rng(12)
    weights = {}
    if options.get("local_summary", "").startswith("deepset"):
        weights = {name: _normal(rng, 3, 3) for name in ("query_pooling_kernel", "key_pooling_kernel")}
    kernel_options = dict(_options(variant, causal, 3), **options, **{n: tf.constant(w) for n, w in weights.items()})
    reference_options = dict(_options(variant, causal, 3), **options, **weights)
    if options.get("row_summary") == "proj":
        kernel_options["row_projection"], reference_options["row_projection"] = _projection(13, 2, 3, heads)
    cotangent = rng.standard_normal((1, heads, length, 2))
    tensors = [tf.constant(x) for x in (q, k, v)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        loss = tf.reduce_sum(combiner_attention(*tensors, **kernel_options) * cotangent)
    got = tape.gradient(loss, tensors)
    want = ref.numeric_gradients(lambda *a: ref.combiner(*a, **reference_options)[0], [q, k, v], cotangent)
    for name, g, w in zip("qkv", got, want):
        assert np.abs(w).max() > 1e-3, name
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_segment_covering_the_sequence_is_dense_attention():
    """One segment (fixed, axial) is plain softmax attention: every key is direct."""
    q, k, v = _inputs(5, 8)
    want = np.asarray(dense_attention(*map(tf.constant, (q, k, v)), causal=True))
    for variant in ("fixed", "axial"):
        np.testing.assert_allclose(_run(q, k, v, variant=variant, segment_length=8), want, **TOL)


@pytest.mark.parametrize("size", [1, 2, 7, 8, 9])
def test_cummax_and_its_gradient(size):
    """Values as numpy's; the custom gradient as autodiff of a loop of maxima (inputs without ties)."""
    x = tf.constant(_normal(np.random.default_rng(size), 2, size, 3))
    upstream = tf.constant(_normal(np.random.default_rng(size + 1), 2, size, 3))

    def naive(x, reverse):
        items = tf.unstack(x, axis=1)[::-1] if reverse else tf.unstack(x, axis=1)
        out = [items[0]]
        for item in items[1:]:
            out.append(tf.maximum(out[-1], item))
        return tf.stack(out[::-1] if reverse else out, axis=1)

    for reverse in (False, True):
        want = np.maximum.accumulate(x.numpy()[:, ::-1] if reverse else x.numpy(), axis=1)
        want = want[:, ::-1] if reverse else want
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            got, reference = cummax(x, 1, reverse=reverse), naive(x, reverse)
        np.testing.assert_array_equal(got.numpy(), want)
        np.testing.assert_allclose(tape.gradient(got, x, upstream).numpy(),
                                   tape.gradient(reference, x, upstream).numpy(), rtol=1e-6, atol=1e-6)


# --- causality, padding, shapes, dtypes ----------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["fixed", "logsparse", "axial", "mixture"])
def test_causality(variant):
    """Changing q, k, v after t changes no output at positions <= t (length 14: padded inside)."""
    length = 14
    q, k, v = _inputs(7, length)
    options = _options(variant, True)
    base = _run(q, k, v, **options)
    rng = np.random.default_rng(8)
    for t in range(length - 1):
        changed = [x.copy() for x in (q, k, v)]
        for x in changed:
            x[:, :, t + 1:] = 10 * _normal(rng, *x[:, :, t + 1:].shape)
        out = _run(*changed, **options)
        np.testing.assert_allclose(out[:, :, :t + 1], base[:, :, :t + 1], rtol=0, atol=1e-6, err_msg=f"t={t}")
        assert np.abs(out[:, :, t + 1:] - base[:, :, t + 1:]).max() > 1e-3


@pytest.mark.parametrize("variant", ["fixed", "axial", "mixture"])
def test_causal_padding_equals_the_padded_sequence(variant):
    """A causal length that is not a multiple of the segment is padded inside: the output equals the first
    positions of the kernel on any longer multiple-length sequence with the same prefix."""
    q, k, v = _inputs(9, 16)
    full = _run(q, k, v, variant=variant, segment_length=4)
    cut = _run(q[:, :, :13], k[:, :, :13], v[:, :, :13], variant=variant, segment_length=4)
    assert cut.shape == (1, HEADS, 13, VALUE_DIM)
    np.testing.assert_allclose(cut, full[:, :, :13], **TOL)


def test_value_dim_differs_and_batch():
    q, k, v = _inputs(10, 16, batch=3, value_dim=7)
    for variant, causal in FORMS:
        out = _run(q, k, v, **_options(variant, causal))
        assert out.shape == (3, HEADS, 16, 7)
        for b in range(3):  # batch entries are independent
            np.testing.assert_allclose(out[b:b + 1], _run(q[b:b + 1], k[b:b + 1], v[b:b + 1],
                                                          **_options(variant, causal)), **TOL)


@pytest.mark.parametrize("variant,causal", FORMS, ids=FORM_IDS)
def test_bfloat16(variant, causal):
    low = [tf.cast(x, tf.bfloat16) for x in _inputs(11, 16)]
    out = combiner_attention(*low, **_options(variant, causal))
    assert out.dtype == tf.bfloat16
    want = combiner_attention(*[tf.cast(x, tf.float32) for x in low], **_options(variant, causal))
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), want.numpy(), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "jit"])
@pytest.mark.parametrize("variant,causal", [f for f in FORMS if f[0] != "logsparse"],
                         ids=[i for f, i in zip(FORMS, FORM_IDS) if f[0] != "logsparse"])
def test_dynamic_length_signature(variant, causal, jit):
    """Fixed, axial and mixture trace once for any batch and length (SavedModel serving signatures)."""
    signature = [tf.TensorSpec([None, HEADS, None, KEY_DIM], tf.float32)] * 2 + [
        tf.TensorSpec([None, HEADS, None, VALUE_DIM], tf.float32)]
    run = tf.function(lambda q, k, v: combiner_attention(q, k, v, **_options(variant, causal)),
                      input_signature=signature, jit_compile=jit)
    for batch, length in ((1, 13 if causal else 12), (2, 24)):
        q, k, v = _inputs(length, length, batch=batch)
        np.testing.assert_allclose(run(q, k, v).numpy(), _run(q, k, v, **_options(variant, causal)), **TOL)
    assert run.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "jit"])
def test_logsparse_dynamic_length_equals_the_static_call(jit):
    """With max_length, logsparse traces once for any batch and length up to it: it runs the levels of
    max_length, and those with 2^level >= length change nothing: outputs are the static call's bit for bit
    outside XLA; gradients to float32 rounding (a traced gradient sums its parts in another order: the static
    length traced differs from eager as much)."""
    max_length = 17  # 5 levels: length 1 runs 5 no-op levels, length 17 none
    signature = [tf.TensorSpec([None, HEADS, None, KEY_DIM], tf.float32)] * 2 + [
        tf.TensorSpec([None, HEADS, None, VALUE_DIM], tf.float32)] * 2

    def attend_and_differentiate(q, k, v, upstream, **options):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = combiner_attention(q, k, v, variant="logsparse", **options)
        return out, tape.gradient(out, [q, k, v], upstream)

    run = tf.function(lambda *x: attend_and_differentiate(*x, max_length=max_length), input_signature=signature,
                      jit_compile=jit)
    for batch, length in ((1, 1), (2, 2), (1, 5), (2, 8), (1, 9), (2, 17)):
        q, k, v, upstream = (tf.constant(x) for x in _inputs(length, length, batch=batch)
                             + _inputs(length + 1, length, batch=batch, key_dim=VALUE_DIM)[2:])
        (got, got_grads), (want, want_grads) = run(q, k, v, upstream), attend_and_differentiate(q, k, v, upstream)
        if jit:
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6, err_msg=f"length {length}")
        else:
            np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=f"length {length}")
        for a, b in zip(got_grads, want_grads):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6, err_msg=f"length {length}")
    assert run.experimental_get_tracing_count() == 1


# --- cost ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,causal", FORMS, ids=FORM_IDS)
def test_no_length_by_length_tensor(variant, causal):
    assert square_tensors(dense_attention, 1024, causal=causal)  # the detector works
    found = square_tensors(combiner_attention, 1024, **_options(variant, causal, 32))
    assert not found, found[:5]

