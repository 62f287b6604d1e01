"""local_attention against dense_attention with the local mask; local_mask against its formula; blocking."""

import numpy as np
import pytest
import tensorflow as tf

from common.attention import dense_attention, local_attention, local_mask
from tests.common.attention import _reference as ref
from tests.kernel_checks import assert_weights_exactly_on, effective_matrix, square_tensors

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1:UserWarning")  # length 1

TOL = dict(rtol=1e-5, atol=1e-5)
HEADS, KEY_DIM, VALUE_DIM = 2, 4, 3
LENGTHS = [1, 5, 31, 32, 33, 64, 100]
BLOCKS = [1, 4, 8, 16, 32]
LOOK_BACKS = [0, 1, 2]
# (causal, look_ahead)
MODES = [(True, None), (True, 0), (False, None), (False, 0), (False, 1), (False, 2)]


def _normal(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _inputs(seed, length, batch=1, key_dim=KEY_DIM, value_dim=VALUE_DIM):
    rng = np.random.default_rng(seed)
    return [tf.constant(_normal(rng, batch, HEADS, length, dim)) for dim in (key_dim, key_dim, value_dim)]


def _tables(seed, m, key_dim=KEY_DIM, value_dim=VALUE_DIM):
    rng = np.random.default_rng(seed)
    return {"relative_keys": tf.constant(_normal(rng, 2 * m + 1, key_dim)),
            "relative_values": tf.constant(_normal(rng, 2 * m + 1, value_dim))}


def _dense_local(q, k, v, block_size, look_back, look_ahead, causal, **options):
    """The dense reference: dense attention restricted by the test's own local-mask formula."""
    mask = ref.local_mask(q.shape[2], block_size, look_back, look_ahead, causal)
    return dense_attention(q, k, v, causal=False, mask=tf.constant(mask), **options)


def _combinations():
    for look_back in LOOK_BACKS:
        for causal, look_ahead in MODES:
            for m in (None, 2, 40):  # no tables; tables clipped inside the window; tables wider than it
                yield look_back, causal, look_ahead, m


@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_dense_with_local_mask(length, block_size):
    q, k, v = _inputs(length * 100 + block_size, length)
    for look_back, causal, look_ahead, m in _combinations():
        options = {} if m is None else _tables(m + look_back, m)
        if look_back == 2:
            options["scale"] = 0.6
        got = local_attention(q, k, v, block_size=block_size, look_back=look_back, look_ahead=look_ahead,
                              causal=causal, **options)
        want = _dense_local(q, k, v, block_size, look_back, look_ahead, causal, **options)
        label = f"look_back={look_back} causal={causal} look_ahead={look_ahead} m={m}"
        assert tuple(got.shape) == (1, HEADS, length, VALUE_DIM), label
        assert got.dtype == tf.float32, label
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL, err_msg=label)


@pytest.mark.parametrize("length", LENGTHS)
def test_local_mask_formula(length):
    for block_size in BLOCKS:
        for look_back in LOOK_BACKS:
            for causal, look_ahead in MODES:
                got = np.asarray(local_mask(length, block_size, look_back=look_back, look_ahead=look_ahead,
                                            causal=causal))
                want = ref.local_mask(length, block_size, look_back, look_ahead, causal)
                assert got.shape == (length, length)
                np.testing.assert_array_equal(got, want, err_msg=f"{block_size} {look_back} {causal} {look_ahead}")


def test_local_mask_defaults():
    """Defaults: look_back=1, causal=True; bidirectional look_ahead defaults to look_back."""
    np.testing.assert_array_equal(np.asarray(local_mask(20, 4)), ref.local_mask(20, 4, 1, 0, True))
    np.testing.assert_array_equal(np.asarray(local_mask(20, 4, look_back=2, causal=False)),
                                  ref.local_mask(20, 4, 2, 2, False))


def test_local_with_covering_window_equals_dense():
    """A window that covers the whole sequence is plain dense attention."""
    q, k, v = _inputs(3, 20)
    for causal in (True, False):
        got = local_attention(q, k, v, block_size=8, look_back=3, causal=causal)
        want = dense_attention(q, k, v, causal=causal)
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)


def test_effective_attention_matrix():
    length = 21
    q, k, _ = _inputs(4, length)
    for causal, look_ahead in MODES:
        matrix = effective_matrix(local_attention, q, k, block_size=4, look_back=1, look_ahead=look_ahead,
                                  causal=causal)
        assert_weights_exactly_on(matrix, ref.local_mask(length, 4, 1, look_ahead, causal))


GRADIENT_CASES = [
    # (length, block_size, look_back, causal, look_ahead, m)
    (1, 4, 1, True, None, 2),
    (5, 1, 2, True, None, 2),
    (13, 4, 1, True, None, 2),
    (13, 4, 0, True, None, 1),
    (16, 8, 1, False, None, 3),
    (19, 4, 2, False, 1, 2),
    (19, 8, 0, False, 2, 20),
    (33, 16, 1, True, None, 20),
]


@pytest.mark.parametrize("keep_weights", [False, True], ids=["recomputed", "kept"])
@pytest.mark.parametrize("length,block_size,look_back,causal,look_ahead,m", GRADIENT_CASES)
def test_gradients_match_dense(length, block_size, look_back, causal, look_ahead, m, keep_weights):
    q, k, v = _inputs(length + block_size, length)
    tables = _tables(m, m)
    tensors = [q, k, v, tables["relative_keys"], tables["relative_values"]]
    cotangent = tf.constant(np.random.default_rng(5).standard_normal((1, HEADS, length, VALUE_DIM)), tf.float32)

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            out = fn(*tensors[:3], block_size, look_back, look_ahead, causal, relative_keys=tensors[3],
                     relative_values=tensors[4])
            loss = tf.reduce_sum(out * cotangent)
        return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, tensors)]

    def local(q, k, v, block_size, look_back, look_ahead, causal, **options):
        return local_attention(q, k, v, block_size=block_size, look_back=look_back, look_ahead=look_ahead,
                               causal=causal, keep_weights=keep_weights, **options)

    for label, got, want in zip(["q", "k", "v", "relative_keys", "relative_values"], grads(local),
                                grads(_dense_local)):
        if length > 1 or label in ("v", "relative_values"):  # one query: the logits do not matter
            assert np.abs(want).max() > 0, label
        np.testing.assert_allclose(got, want, **TOL, err_msg=label)


@pytest.mark.parametrize("block_size,look_back", [(1, 2), (4, 0), (8, 1), (8, 2), (64, 1)])
@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_causality(block_size, look_back, relative):
    """Changing q, k, v at positions > t changes no output at positions <= t."""
    length = 29
    q, k, v = [x.numpy() for x in _inputs(6, length)]
    options = _tables(7, 3) if relative else {}
    run = lambda *args: local_attention(*[tf.constant(x) for x in args], block_size=block_size,  # noqa: E731
                                        look_back=look_back, causal=True, **options).numpy()
    base = run(q, k, v)
    rng = np.random.default_rng(8)
    for t in range(length - 1):
        changed = [x.copy() for x in (q, k, v)]
        for x in changed:
            x[:, :, t + 1:] = 10 * _normal(rng, *x[:, :, t + 1:].shape)
        out = run(*changed)
        np.testing.assert_allclose(out[:, :, :t + 1], base[:, :, :t + 1], rtol=0, atol=1e-6, err_msg=f"t={t}")
        assert np.abs(out[:, :, t + 1:] - base[:, :, t + 1:]).max() > 1e-3


def test_bidirectional_sees_the_future():
    """The control for test_causality: with look_ahead, a change after t does reach position t."""
    length, block_size = 16, 4
    q, k, v = [x.numpy() for x in _inputs(9, length)]
    base = local_attention(*map(tf.constant, (q, k, v)), block_size=block_size, look_ahead=1, causal=False)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 5] += 1.0
    v2[:, :, 5] += 1.0
    out = local_attention(*map(tf.constant, (q, k2, v2)), block_size=block_size, look_ahead=1, causal=False)
    diff = np.abs(out.numpy() - base.numpy()).max(axis=(0, 1, 3))
    # key 5 is in block 1: visible to blocks 0, 1, 2 (positions 0..11), not to block 3.
    assert (diff[:12] > 1e-4).all() and (diff[12:] == 0).all()


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_bfloat16(causal):
    q, k, v = _inputs(10, 19)
    tables = _tables(11, 3)
    low = [tf.cast(x, tf.bfloat16) for x in (q, k, v, tables["relative_keys"], tables["relative_values"])]
    high = [tf.cast(x, tf.float32) for x in low]

    def run(q, k, v, rk, rv):
        return local_attention(q, k, v, block_size=4, look_back=1, causal=causal, relative_keys=rk,
                               relative_values=rv)

    out_low = run(*low)
    assert out_low.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(out_low, tf.float32).numpy(), run(*high).numpy(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "jit"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_dynamic_length_signature(jit, causal):
    tables = _tables(12, 3)
    signature = [tf.TensorSpec([None, HEADS, None, KEY_DIM], tf.float32)] * 2 + [
        tf.TensorSpec([None, HEADS, None, VALUE_DIM], tf.float32)]

    @tf.function(input_signature=signature, jit_compile=jit)
    def run(q, k, v):
        return local_attention(q, k, v, block_size=8, look_back=1, causal=causal, **tables)

    for batch, length in ((1, 13), (2, 40)):
        q, k, v = _inputs(length, length, batch=batch)
        got = run(q, k, v)
        want = _dense_local(q, k, v, 8, 1, None, causal, **tables)
        assert tuple(got.shape) == (batch, HEADS, length, VALUE_DIM)
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)
    assert run.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_jit_compile_with_gradients(causal):
    q, k, v = _inputs(14, 37)
    tables = _tables(15, 4)

    def loss_and_grads(fn):
        def step(q, k, v, rk, rv):
            with tf.GradientTape() as tape:
                tape.watch([q, k, v, rk, rv])
                out = fn(q, k, v, block_size=8, look_back=1, look_ahead=None, causal=causal,
                         relative_keys=rk, relative_values=rv)
                loss = tf.reduce_sum(tf.sin(out))
            return out, [tf.convert_to_tensor(g) for g in tape.gradient(loss, [q, k, v, rk, rv])]
        return step

    def local(q, k, v, **options):
        return local_attention(q, k, v, **options)

    def dense(q, k, v, *, block_size, look_back, look_ahead, causal, **options):
        return _dense_local(q, k, v, block_size, look_back, look_ahead, causal, **options)

    args = (q, k, v, tables["relative_keys"], tables["relative_values"])
    out, grads = tf.function(loss_and_grads(local), jit_compile=True)(*args)
    want_out, want_grads = loss_and_grads(dense)(*args)
    np.testing.assert_allclose(out.numpy(), want_out.numpy(), **TOL)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOL)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_really_blocked(causal):
    rng = np.random.default_rng(16)
    tables = {"relative_keys": tf.constant(_normal(rng, 9, 8)), "relative_values": tf.constant(_normal(rng, 9, 8))}
    # The detector works: dense attention at this length builds length x length tensors.
    assert square_tensors(dense_attention, 1024, causal=causal, **tables)
    found = square_tensors(local_attention, 1024, block_size=64, look_back=1, causal=causal, **tables)
    assert not found, found[:5]

