"""Strided attention (the Routing Transformer's strided heads): each position attends to the positions at a
multiple of the stride from it, equal to dense attention under that mask, values and gradients, decoded one
token at a time as in the full pass, and never a length x length tensor."""

import numpy as np
import pytest
import tensorflow as tf

from common.attention import dense_attention, get_decoder, get_kernel, strided_attention
from tests.kernel_checks import assert_weights_exactly_on, effective_matrix, square_tensors


def strided_support(length, stride, causal):
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    support = (i - j) % stride == 0
    return support & (j <= i) if causal else support


def _qkv(length, seed=0, batch=2, heads=3, dim=8):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, heads, length, dim)).astype(np.float32) for _ in range(3)]


@pytest.mark.parametrize("length, stride", [(16, 4), (19, 4), (8, 8), (5, 8), (12, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_weights_exactly_on_the_positions_at_a_multiple_of_the_stride(length, stride, causal):
    q, k, _ = _qkv(length)
    matrix = effective_matrix(strided_attention, q, k, stride=stride, causal=causal)
    assert_weights_exactly_on(matrix, strided_support(length, stride, causal))


@pytest.mark.parametrize("length, stride", [(16, 4), (21, 4)])
@pytest.mark.parametrize("causal", [True, False])
def test_values_and_gradients_equal_dense_attention_under_the_mask(length, stride, causal):
    q, k, v = (tf.constant(x) for x in _qkv(length, seed=1))
    mask = tf.constant(strided_support(length, stride, causal))

    def both(q, k, v):
        return (strided_attention(q, k, v, stride=stride, causal=causal),
                dense_attention(q, k, v, causal=False, mask=mask))

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q, k, v])
        got, want = both(q, k, v)
        weights = tf.constant(np.random.default_rng(2).standard_normal(got.shape).astype(np.float32))
        got_loss, want_loss = tf.reduce_sum(got * weights), tf.reduce_sum(want * weights)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    for got_grad, want_grad in zip(tape.gradient(got_loss, [q, k, v]), tape.gradient(want_loss, [q, k, v])):
        np.testing.assert_allclose(got_grad.numpy(), want_grad.numpy(), rtol=1e-4, atol=1e-5)


def test_registered_kernel_and_decoder_give_the_full_pass_rows():
    length, stride, prompt = 23, 4, 6
    q, k, v = _qkv(length, seed=3)
    full = get_kernel("strided")(q, k, v, stride=stride).numpy()
    start, step = get_decoder("strided")
    cache = start(None, q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt], length, stride=stride)
    for position in range(prompt, length):
        row = slice(position, position + 1)
        out, cache = step(None, q[:, :, row], k[:, :, row], v[:, :, row], cache, tf.constant(position), stride=stride)
        np.testing.assert_allclose(out.numpy()[:, :, 0], full[:, :, position], rtol=1e-5, atol=1e-6)


def test_no_length_by_length_tensor():
    assert square_tensors(strided_attention, 256, stride=16) == []


@pytest.mark.parametrize("stride", [0, 2.5, True])
def test_bad_stride_is_refused(stride):
    q, k, v = _qkv(8)
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        strided_attention(q, k, v, stride=stride)


def test_decoding_needs_causal_attention():
    q, k, v = _qkv(4)
    start, step = get_decoder("strided")
    cache = start(None, q, k, v, 8, stride=2)
    with pytest.raises(ValueError, match="needs causal attention"):
        step(None, q[:, :, :1], k[:, :, :1], v[:, :, :1], cache, tf.constant(4), stride=2, causal=False)
