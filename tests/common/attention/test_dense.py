"""dense_attention against an independent float64 numpy reference (tests/common/attention/_reference.py)."""

import numpy as np
import pytest
import tensorflow as tf

from common.attention import dense_attention
from tests.common.attention import _reference as ref
from tests.kernel_checks import assert_weights_exactly_on, causal_support, effective_matrix

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1:UserWarning")  # length 1

TOL = dict(rtol=1e-5, atol=1e-5)
BATCH, HEADS, KEY_DIM, VALUE_DIM = 2, 2, 4, 3


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _inputs(seed, q_length=6, k_length=None, key_dim=KEY_DIM, value_dim=VALUE_DIM):
    rng = np.random.default_rng(seed)
    k_length = q_length if k_length is None else k_length
    return (_normal(rng, BATCH, HEADS, q_length, key_dim), _normal(rng, BATCH, HEADS, k_length, key_dim),
            _normal(rng, BATCH, HEADS, k_length, value_dim))


def _as_tf(options):
    return {name: tf.constant(value) if isinstance(value, np.ndarray) else value for name, value in options.items()}


def _random_mask(rng, shape):
    mask = rng.random(shape) < 0.6
    mask[..., -1] = True  # the last key is visible to every query, causal or not, whatever the alignment
    return mask


def _case(name, q_length, k_length, value_dim, seed):
    """Options of one reference case (numpy arrays; the test converts them)."""
    rng = np.random.default_rng(seed + 100)
    shape = (q_length, k_length)
    options = {}
    parts = name.split("+")
    for part in parts:
        if part == "mask2":
            options["mask"] = _random_mask(rng, shape)
        elif part == "mask3":
            options["mask"] = _random_mask(rng, (HEADS,) + shape)
        elif part == "mask4":
            options["mask"] = _random_mask(rng, (BATCH, 1) + shape)
        elif part == "bias2":
            options["bias"] = _normal(rng, *shape)
        elif part == "bias4":
            options["bias"] = _normal(rng, BATCH, HEADS, *shape)
        elif part == "relk":
            options["relative_keys"] = _normal(rng, 5, KEY_DIM)
        elif part == "relv":
            options["relative_values"] = _normal(rng, 5, value_dim)
        elif part == "relwide":  # m = 10 exceeds every distance: no clipping
            options["relative_keys"] = _normal(rng, 21, KEY_DIM)
            options["relative_values"] = _normal(rng, 21, value_dim)
        elif part == "relnarrow":  # m = 1: almost every distance is clipped
            options["relative_keys"] = _normal(rng, 3, KEY_DIM)
            options["relative_values"] = _normal(rng, 3, value_dim)
        elif part == "scale":
            options["scale"] = 0.37
        elif part != "plain":
            raise AssertionError(part)
    return options


CASES = [
    # (options, q_length, k_length, value_dim)
    ("plain", 6, 6, VALUE_DIM),
    ("plain", 6, 6, 7),
    ("plain", 1, 1, VALUE_DIM),
    ("mask2", 6, 6, VALUE_DIM),
    ("mask3", 6, 6, VALUE_DIM),
    ("mask4", 6, 6, VALUE_DIM),
    ("bias2", 6, 6, VALUE_DIM),
    ("bias4", 6, 6, VALUE_DIM),
    ("relk", 6, 6, VALUE_DIM),
    ("relv", 6, 6, VALUE_DIM),
    ("relk+relv", 7, 7, VALUE_DIM),
    ("relwide", 6, 6, VALUE_DIM),
    ("relnarrow", 6, 6, VALUE_DIM),
    ("scale", 6, 6, VALUE_DIM),
    ("plain", 3, 7, VALUE_DIM),  # q_length < k_length: queries are the last positions when causal
    ("relk+relv", 3, 7, VALUE_DIM),
    ("mask4+bias4+relk+relv+scale", 3, 7, 5),
    ("mask2+bias2+relnarrow", 6, 6, 2),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("name,q_length,k_length,value_dim", CASES,
                         ids=[f"{c[0]}-q{c[1]}-k{c[2]}-v{c[3]}" for c in CASES])
def test_matches_numpy_reference(name, q_length, k_length, value_dim, causal):
    q, k, v = _inputs(sum(map(ord, name)) + q_length, q_length, k_length, value_dim=value_dim)
    options = _case(name, q_length, k_length, value_dim, seed=q_length)
    out = dense_attention(tf.constant(q), tf.constant(k), tf.constant(v), causal=causal, **_as_tf(options))
    assert tuple(out.shape) == (BATCH, HEADS, q_length, value_dim)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(np.asarray(out), ref.attention(q, k, v, causal=causal, **options), **TOL)


def test_causal_alignment_of_short_queries():
    """With q_length < k_length the single query is the last position: it sees every key, causal or not."""
    q, k, v = _inputs(1, q_length=1, k_length=5)
    causal = dense_attention(tf.constant(q), tf.constant(k), tf.constant(v), causal=True)
    full = dense_attention(tf.constant(q), tf.constant(k), tf.constant(v), causal=False)
    np.testing.assert_allclose(np.asarray(causal), np.asarray(full), **TOL)
    # and it is not the first position (which would only see key 0).
    assert not np.allclose(np.asarray(causal), np.broadcast_to(v[:, :, :1], causal.shape), atol=1e-3)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("q_length,k_length", [(1, 1), (6, 6), (4, 9)])
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_effective_attention_matrix(q_length, k_length, causal, relative):
    q, k, _ = _inputs(7, q_length, k_length)
    options = {"relative_keys": _normal(np.random.default_rng(3), 5, KEY_DIM)} if relative else {}
    matrix = effective_matrix(dense_attention, q, k, causal=causal, **_as_tf(options))
    assert matrix.shape == (BATCH, HEADS, q_length, k_length)
    assert_weights_exactly_on(matrix, causal_support(q_length, k_length) if causal else True)
    eye = np.broadcast_to(np.eye(k_length, dtype=np.float32), (BATCH, HEADS, k_length, k_length))
    np.testing.assert_allclose(matrix, ref.attention(q, k, eye, causal=causal, **options), **TOL)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_fully_masked_rows_are_zero(causal):
    q, k, v = _inputs(11, 6)
    mask = np.ones((BATCH, HEADS, 6, 6), bool)
    mask[0, 1, 2] = False
    mask[1, :, 4] = False
    mask[:, 0, 5] = False
    tensors = [tf.constant(x) for x in (q, k, v)]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = dense_attention(*tensors, causal=causal, mask=tf.constant(mask))
        loss = tf.reduce_sum(out * out)
    out = np.asarray(out)
    masked_rows = ~mask.any(-1)
    assert masked_rows.sum() == 1 * 1 + 1 * 2 + 2 * 1
    assert (out[masked_rows] == 0).all()
    np.testing.assert_allclose(out, ref.attention(q, k, v, causal=causal, mask=mask), **TOL)
    grads = tape.gradient(loss, tensors)
    for grad in grads:
        assert np.isfinite(np.asarray(grad)).all()
    assert (np.asarray(grads[0])[masked_rows] == 0).all()  # a query that sees nothing gets no gradient


def test_causal_queries_before_every_key_are_zero():
    """q_length > k_length when causal: the first q_length - k_length queries see no key at all."""
    q, k, v = _inputs(12, q_length=5, k_length=3)
    out = np.asarray(dense_attention(tf.constant(q), tf.constant(k), tf.constant(v), causal=True))
    assert (out[:, :, :2] == 0).all()
    np.testing.assert_allclose(out, ref.attention(q, k, v, causal=True), **TOL)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_causality(causal):
    """Changing q, k, v after position t changes no output at positions <= t (and does when bidirectional)."""
    length = 8
    q, k, v = _inputs(13, length)
    base = np.asarray(dense_attention(tf.constant(q), tf.constant(k), tf.constant(v), causal=causal))
    rng = np.random.default_rng(14)
    for t in range(length - 1):
        changed = [x.copy() for x in (q, k, v)]
        for x in changed:
            x[:, :, t + 1:] = _normal(rng, *x[:, :, t + 1:].shape)
        out = np.asarray(dense_attention(*[tf.constant(x) for x in changed], causal=causal))
        if causal:
            np.testing.assert_allclose(out[:, :, :t + 1], base[:, :, :t + 1], rtol=0, atol=1e-6)
        else:
            assert np.abs(out[:, :, :t + 1] - base[:, :, :t + 1]).max() > 1e-3


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_bfloat16(causal, relative):
    rng = np.random.default_rng(15)
    arrays = list(_inputs(16, 6, 6))
    mask = _random_mask(rng, (6, 6))
    if relative:
        arrays += [_normal(rng, 5, KEY_DIM), _normal(rng, 5, VALUE_DIM)]
    low = [tf.cast(tf.constant(x), tf.bfloat16) for x in arrays]
    high = [tf.cast(x, tf.float32) for x in low]  # the same (rounded) values, in float32

    def run(q, k, v, *tables):
        extra = dict(zip(("relative_keys", "relative_values"), tables))
        return dense_attention(q, k, v, causal=causal, mask=tf.constant(mask), **extra)

    out_low, out_high = run(*low), run(*high)
    assert out_low.dtype == tf.bfloat16
    assert tuple(out_low.shape) == (BATCH, HEADS, 6, VALUE_DIM)
    np.testing.assert_allclose(tf.cast(out_low, tf.float32).numpy(), out_high.numpy(), rtol=2e-2, atol=2e-2)


def test_bfloat16_softmax_runs_in_float32():
    """Logits 256 + [0, 1]: in bfloat16 257 rounds to 256 (equal weights); in float32 they stay apart."""
    q = np.full((1, 1, 1, 1), 16.0, np.float32)
    k = np.full((1, 1, 2, 1), 16.0, np.float32)
    v = np.array([1.0, 0.0], np.float32).reshape(1, 1, 2, 1)
    bias = np.array([[0.0, 1.0]], np.float32)
    args = [tf.cast(tf.constant(x), tf.bfloat16) for x in (q, k, v)]
    out = dense_attention(*args, causal=False, bias=tf.constant(bias))
    expected = 1 / (1 + np.e)  # softmax([256, 257])[0] = 0.269, where a bfloat16 softmax gives 0.5
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy().ravel(), [expected], rtol=1e-2)


GRADIENT_CASES = [
    # (name, q_length, k_length, causal)
    ("plain", 4, 4, True),
    ("plain", 4, 4, False),
    ("relk+relv", 4, 4, True),
    ("relnarrow", 5, 5, False),
    ("mask2+bias2+relk+relv+scale", 3, 5, True),
    ("mask4+relk+relv", 3, 5, False),
]


@pytest.mark.parametrize("name,q_length,k_length,causal", GRADIENT_CASES,
                         ids=[f"{c[0]}-q{c[1]}-k{c[2]}-{'causal' if c[3] else 'bi'}" for c in GRADIENT_CASES])
def test_gradients_match_finite_differences(name, q_length, k_length, causal):
    q, k, v = _inputs(17, q_length, k_length)
    options = _case(name, q_length, k_length, VALUE_DIM, seed=5)
    tables = [table for table in ("relative_keys", "relative_values") if table in options]
    fixed = {option: value for option, value in options.items() if option not in tables}
    arrays = [q, k, v] + [options[name] for name in tables]
    cotangent = np.random.default_rng(18).standard_normal((BATCH, HEADS, q_length, VALUE_DIM))

    tensors = [tf.constant(x) for x in arrays]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        out = dense_attention(*tensors[:3], causal=causal, **dict(zip(tables, tensors[3:])), **_as_tf(fixed))
        loss = tf.reduce_sum(out * tf.constant(cotangent, tf.float32))
    grads = tape.gradient(loss, tensors)

    def reference(q, k, v, *tables_):
        return ref.attention(q, k, v, causal=causal, **dict(zip(tables, tables_)), **fixed)

    expected = ref.numeric_gradients(reference, arrays, cotangent)
    for label, got, want in zip(["q", "k", "v"] + tables, grads, expected):
        assert got is not None, label
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), want, **TOL, err_msg=label)
