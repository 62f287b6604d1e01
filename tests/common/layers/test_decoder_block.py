"""DecoderBlock against the pre-LN and post-LN formulas computed from its own sub-layers."""

import keras
import numpy as np
import pytest

from common.layers import DecoderBlock, FeedForward, SelfAttention
from tests.layer_checks import run_layer_checks

TOL = dict(rtol=1e-4, atol=1e-5)
SHAPE = (2, 8, 6)


def _inputs(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _block(norm_placement, seed=1, **kwargs):
    block = DecoderBlock(SelfAttention(num_heads=2, key_dim=3, use_bias=True),
                         FeedForward(10, activation="gelu", use_bias=True), norm_placement=norm_placement,
                         **kwargs)
    block.build(SHAPE)
    rng = np.random.default_rng(seed)
    for weight in block.weights:  # non-trivial norms and biases, so that every term counts
        if any(part in weight.path for part in ("gamma", "beta", "bias")):
            base = 1.0 if "gamma" in weight.path else 0.0
            weight.assign(base + 0.3 * rng.standard_normal(weight.shape).astype(np.float32))
    return block


def _np(x):
    return np.asarray(x)


def test_pre_ln_formula():
    x = _inputs()
    block = _block("pre")
    attn, ffn, ln1, ln2 = block.attention, block.feed_forward, block.attention_norm, block.feed_forward_norm
    y = x + _np(attn(ln1(x)))
    expected = y + _np(ffn(ln2(y)))
    np.testing.assert_allclose(_np(block(x)), expected, **TOL)


def test_post_ln_formula():
    x = _inputs(seed=2)
    block = _block("post")
    attn, ffn, ln1, ln2 = block.attention, block.feed_forward, block.attention_norm, block.feed_forward_norm
    y = _np(ln1(x + _np(attn(x))))
    expected = _np(ln2(y + _np(ffn(y))))
    np.testing.assert_allclose(_np(block(x)), expected, **TOL)
    # Post-LN output is normalised by the last LayerNorm: (out - beta) / gamma has zero mean, unit variance.
    gamma, beta = _np(ln2.gamma), _np(ln2.beta)
    standard = (_np(block(x)) - beta) / gamma
    np.testing.assert_allclose(standard.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(standard.var(-1), 1.0, atol=1e-3)


def test_pre_and_post_differ_with_the_same_weights():
    x = _inputs(seed=3)
    pre, post = _block("pre"), _block("post")
    post.set_weights(pre.get_weights())
    assert not np.allclose(_np(pre(x)), _np(post(x)), atol=1e-3)


def test_norm_epsilon_reaches_the_norms():
    block = DecoderBlock(SelfAttention(num_heads=1, key_dim=2), FeedForward(4), norm_epsilon=0.3)
    assert block.attention_norm.epsilon == 0.3 and block.feed_forward_norm.epsilon == 0.3


def test_block_is_causal():
    x = _inputs(seed=4)
    for placement in ("pre", "post"):
        block = _block(placement)
        out = _np(block(x))
        changed = x.copy()
        changed[:, 5:] += 1.0
        new = _np(block(changed))
        np.testing.assert_allclose(new[:, :5], out[:, :5], rtol=1e-5, atol=1e-6)
        assert not np.allclose(new[:, 5:], out[:, 5:], atol=1e-4)


def test_residual_dropout_only_in_training():
    x = _inputs(seed=5)
    block = _block("pre", dropout=0.5, seed=3)
    reference = _block("pre")
    reference.set_weights(block.get_weights())
    expected = _np(reference(x))
    np.testing.assert_allclose(_np(block(x)), expected, **TOL)
    np.testing.assert_allclose(_np(block(x, training=False)), expected, **TOL)
    assert not np.allclose(_np(block(x, training=True)), expected, atol=1e-4)


def test_accepts_serialised_sublayers():
    attention = keras.saving.serialize_keras_object(SelfAttention(num_heads=2, key_dim=3, name="attn"))
    feed_forward = keras.saving.serialize_keras_object(FeedForward(5, activation="relu", name="ffn"))
    a, b = DecoderBlock(attention, feed_forward), DecoderBlock(attention, feed_forward)
    assert isinstance(a.attention, SelfAttention) and isinstance(a.feed_forward, FeedForward)
    assert a.attention is not b.attention and a.feed_forward is not b.feed_forward
    assert a.feed_forward.hidden_dim == 5 and a.attention.num_heads == 2


def test_unknown_norm_placement_raises():
    with pytest.raises(ValueError, match="norm_placement 'middle'"):
        DecoderBlock(SelfAttention(num_heads=1, key_dim=2), FeedForward(4), norm_placement="middle")


def test_config_keeps_options():
    block = DecoderBlock(SelfAttention(num_heads=2, key_dim=3, kernel="local", kernel_options={"block_size": 2}),
                         FeedForward(7, activation="geglu"), norm_placement="post", norm_epsilon=1e-3,
                         dropout=0.2, seed=4)
    clone = DecoderBlock.from_config(block.get_config())
    assert (clone.norm_placement, clone.norm_epsilon, clone.dropout, clone.seed) == ("post", 1e-3, 0.2, 4)
    assert clone.attention.kernel == "local" and clone.attention.kernel_options == {"block_size": 2}
    assert clone.feed_forward.activation == "geglu" and clone.feed_forward.hidden_dim == 7


@pytest.mark.parametrize("norm_placement", ["pre", "post"])
def test_standard_layer_checks(norm_placement):
    x = _inputs(seed=6)
    kwargs = dict(
        attention=keras.saving.serialize_keras_object(
            SelfAttention(num_heads=2, key_dim=3, kernel="local", kernel_options={"block_size": 4},
                          max_relative_position=2)),
        feed_forward=keras.saving.serialize_keras_object(FeedForward(10, activation="geglu")),
        norm_placement=norm_placement)
    run_layer_checks(DecoderBlock, kwargs, x, x.shape)
