"""SparseTransformerLM: strict causality for every schedule kind, a jit_compile fit step and `.keras` round trip,
remat (same loss and gradients; sub-layer dropout refused), mixed precision, the paper's preset (pre-LN,
gelu_sigmoid, untied zero head, factorised positions, half-size q/k, initialisation), parse_schedule and the
argument checks."""

import math

import numpy as np
import pytest
import tensorflow as tf

import keras

from common.layers import DecoderBlock, FeedForward
from common.layers.feed_forward import gelu_sigmoid
from common.metrics import LanguageModelLoss
from common.models import DecoderLM
from sparse_transformer import SparseAttention, SparseTransformerLM
from sparse_transformer.model import parse_schedule
from tests.layer_checks import check_keras_round_trip

pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1:UserWarning")

VOCAB, LENGTH = 32, 22
SMALL = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, num_heads=2, stride=4, summary=1, max_length=32,
             seed=1)


def _model(**overrides):
    keras.utils.set_random_seed(0)
    return SparseTransformerLM(**dict(SMALL, **overrides))


def _ids(seed, batch=2, length=LENGTH):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int32)


def _randomise_head(model, seed=0, std=0.5):
    """The output head starts at zero, which would make every logit (and every other gradient) zero."""
    kernel = model.logits_layer.kernel
    kernel.assign(std * np.random.default_rng(seed).standard_normal(kernel.shape).astype(np.float32))


@pytest.mark.parametrize("schedule", ["fixed", "b,bT", "local+strided", "local|strided"])
def test_model_is_strictly_causal(schedule):
    """Logits at position p predict id p from ids < p: redrawing the ids after t changes no logit at
    positions <= t + 1, and does change later ones. Length 22 is padded inside the kernels."""
    model = _model(attention_schedule=schedule, num_summary_patterns=2)
    model(_ids(0))
    _randomise_head(model)
    ids = _ids(0)
    base = np.asarray(model(ids, training=False))
    rng = np.random.default_rng(1)
    for t in range(0, 20, 3):
        changed = ids.copy()
        changed[:, t + 1:] = (ids[:, t + 1:] + rng.integers(1, VOCAB, ids[:, t + 1:].shape)) % VOCAB
        out = np.asarray(model(changed, training=False))
        np.testing.assert_allclose(out[:, :t + 2], base[:, :t + 2], rtol=0, atol=1e-5, err_msg=f"t={t}")
        assert np.abs(out[:, t + 2:] - base[:, t + 2:]).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("options", [dict(attention_schedule="fixed", num_summary_patterns=2, dropout=0.1),
                                     dict(attention_schedule="local|strided", position_axes=(4, 4, 2), qk_ratio=0.5)],
                         ids=["fixed", "local|strided-image-positions"])
def test_jit_fit_step_and_keras_round_trip(options):
    model = _model(num_layers=1, **options)  # one layer: XLA compiles it faster
    ids = _ids(2)
    model(ids)
    before = [np.array(w) for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LanguageModelLoss(), jit_compile=True)
    history = model.fit(ids, ids, epochs=2, batch_size=len(ids), verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][1] < history.history["loss"][0]
    changed = [not np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.trainable_weights)]
    assert all(changed), [w.path for w, c in zip(model.trainable_weights, changed) if not c]
    restored = check_keras_round_trip(model, ids)
    assert isinstance(restored, SparseTransformerLM) and restored.get_config() == model.get_config()


def test_interleaved_schedule_keras_round_trip():
    model = _model(attention_schedule="b,bT", num_layers=3)
    ids = _ids(3)
    model(ids)
    _randomise_head(model)
    restored = check_keras_round_trip(model, ids)
    assert restored.get_config() == model.get_config()
    assert [b.attention.pattern for b in restored.blocks] == ["local", "strided", "local"]


def _loss_and_gradients(model, ids):
    with tf.GradientTape() as tape:
        loss = LanguageModelLoss()(ids, model(ids, training=True))
    return float(loss), [np.asarray(tf.convert_to_tensor(g)) for g in tape.gradient(loss, model.trainable_weights)]


def test_remat_gives_the_same_loss_and_gradients():
    ids = _ids(3)
    options = dict(attention_schedule="fixed,local+strided", num_summary_patterns=2)
    plain, remat = _model(remat=False, **options), _model(remat=True, **options)
    plain(ids), remat(ids)
    _randomise_head(plain)
    for source, target in zip(plain.weights, remat.weights):
        assert source.path.split("/", 1)[1] == target.path.split("/", 1)[1]
        target.assign(source)
    assert all(block.remat for block in remat.blocks) and not any(block.remat for block in plain.blocks)
    loss, gradients = _loss_and_gradients(plain, ids)
    remat_loss, remat_gradients = _loss_and_gradients(remat, ids)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    for weight, got, want in zip(plain.trainable_weights, remat_gradients, gradients):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=weight.path)
    assert sum(np.abs(g).max() > 0 for g in gradients) == len(gradients)  # every weight gets a gradient


def test_remat_refuses_sub_layer_dropout_only():
    """Documented in DecoderBlock: the recompute would redraw a sub-layer's dropout masks; residual dropout
    (outside the recomputed branch) is fine."""
    attention = dict(num_heads=2, key_dim=4, pattern="fixed", stride=4, summary=1)
    with pytest.raises(ValueError, match=r"remat=True recomputes .* set its dropout to 0 \(got 0.1\)"):
        DecoderBlock(SparseAttention(dropout=0.1, **attention), FeedForward(8), remat=True)
    with pytest.raises(ValueError, match=r"remat=True recomputes .* redraw its dropout masks"):
        DecoderBlock(SparseAttention(**attention), FeedForward(8, dropout=0.2), remat=True)
    with pytest.raises(ValueError, match=r"remat=True recomputes"):
        DecoderLM(VOCAB, 1, 16, SparseAttention(dropout=0.1, **attention), ffn_dim=8, remat=True)
    DecoderBlock(SparseAttention(dropout=0.1, **attention), FeedForward(8, dropout=0.2), remat=False)
    DecoderBlock(SparseAttention(**attention), FeedForward(8), dropout=0.3, remat=True)
    model = _model(remat=True, dropout=0.3)  # the preset's dropout is residual: accepted
    ids = _ids(4)
    loss, _ = _loss_and_gradients(model, ids)
    assert np.isfinite(loss)


def test_mixed_precision_computes_in_bfloat16_with_float32_variables_and_logits():
    ids = _ids(5)
    model = _model(mixed_precision=True)
    logits = model(ids)
    assert logits.dtype == "float32"
    assert all(w.dtype == "float32" for w in model.weights)
    assert model.compute_dtype == "bfloat16"
    for block in model.blocks:
        assert block.attention.compute_dtype == "bfloat16" and block.feed_forward.compute_dtype == "bfloat16"
    # At initialisation the zero head gives log(V) in both precisions.
    reference = _model()
    reference(ids)
    initial = float(LanguageModelLoss()(ids, logits))
    np.testing.assert_allclose(initial, float(LanguageModelLoss()(ids, reference(ids))), rtol=1e-6)
    np.testing.assert_allclose(initial, math.log(VOCAB), rtol=1e-6)
    # With the same (random-headed) weights, bfloat16 logits stay close to float32 ones.
    _randomise_head(reference)
    for source, target in zip(reference.weights, model.weights):
        target.assign(source)
    want, got = np.asarray(reference(ids)), np.asarray(model(ids))
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-2 * np.abs(want).max())
    np.testing.assert_allclose(float(LanguageModelLoss()(ids, got)), float(LanguageModelLoss()(ids, want)),
                               rtol=1e-2)


@pytest.mark.slow
def test_mixed_precision_jit_fit_step():
    ids = _ids(6)
    model = _model(mixed_precision=True, num_layers=1, attention_schedule="local")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=LanguageModelLoss(), jit_compile=True)
    history = model.fit(ids, ids, epochs=2, batch_size=len(ids), verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    np.testing.assert_allclose(history.history["loss"][0], math.log(VOCAB), rtol=1e-3)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert all(w.dtype == "float32" for w in model.weights)


# --- the preset ---------------------------------------------------------------------------------------------

def test_preset_follows_the_paper():
    model = _model(attention_schedule="fixed", ffn_multiple=2.0, qk_ratio=0.5)
    model(_ids(7))
    assert model.norm_placement == "pre" and model.final_norm and model.final_norm_layer is not None
    assert model.norm_epsilon == 1e-5
    assert model.ffn_activation == "gelu_sigmoid" and model.ffn_use_bias and model.ffn_dim == 2 * 16
    x = np.linspace(-4, 4, 9).astype(np.float32)
    np.testing.assert_allclose(np.asarray(gelu_sigmoid(x)), x / (1 + np.exp(-1.702 * x)), rtol=1e-6)
    assert not model.tie_embeddings and not model.output_bias and model.output_bias_weight is None
    assert not model.logits_layer.use_bias and not np.asarray(model.logits_layer.kernel).any()
    for block in model.blocks:
        attention = block.attention
        assert isinstance(attention, SparseAttention) and attention.causal and attention.use_bias
        assert attention.pattern == "fixed" and (attention.stride, attention.summary) == (4, 1)
        assert (attention.value_dim, attention.key_dim) == (8, 4)  # qk_ratio=0.5: half-size q and k
        assert attention.dropout == 0 and block.feed_forward.dropout == 0  # dropout only on the residuals
        assert block.feed_forward.hidden_dim == 32 and block.feed_forward.activation == "gelu_sigmoid"


def test_defaults_are_the_enwik8_model():
    model = SparseTransformerLM()
    assert (model.num_layers, model.hidden_dim, model.ffn_dim) == (30, 512, 2048)
    attention = model.blocks[0].attention
    assert (attention.num_heads, attention.pattern, attention.stride, attention.summary) == (8, "fixed", 128, 32)
    assert model.position_axes == (96, 128)  # 12,288 = 96 x 128


def test_text_positions_are_row_and_column_of_the_stride():
    """position i gets table_0[i // stride] + table_1[i % stride], ceil(max_length / stride) rows."""
    model = _model(max_length=30)
    model(_ids(8))
    assert model.position_axes == (8, 4)
    rows, columns = (np.asarray(t) for t in model.position_embedding.tables)
    got = np.asarray(model.position_embedding(np.zeros((1, 30, 16), np.float32)))[0]
    i = np.arange(30)
    np.testing.assert_allclose(got, rows[i // 4] + columns[i % 4], rtol=1e-6)


def test_image_positions_are_row_column_channel():
    model = _model(position_axes=(32, 32, 3), max_length=3072)
    model.build((1, 8))
    assert model.position_axes == (32, 32, 3)
    assert [tuple(t.shape) for t in model.position_embedding.tables] == [(32, 16), (32, 16), (3, 16)]
    rows, columns, channels = (np.asarray(t) for t in model.position_embedding.tables)
    i = np.array([0, 1, 2, 3, 95, 96, 200, 3071])
    x = np.zeros((1, 3072, 16), np.float32)
    got = np.asarray(model.position_embedding(x))[0, i]
    np.testing.assert_allclose(got, rows[i // 96] + columns[(i // 3) % 32] + channels[i % 3], rtol=1e-6)


def test_initialisation_scales():
    """q, k, v, W1: variance 0.125 / d; attention output and W2: 0.125 / (2 N fan_in); token embeddings std
    0.125 / sqrt(d); position tables 0.125 / sqrt(d n_tables). Wide layers so the estimates are tight."""
    d, layers, ffn = 256, 2, 512
    model = SparseTransformerLM(vocabulary_size=64, num_layers=layers, hidden_dim=d, num_heads=4,
                                attention_schedule="local", stride=16, max_length=256, ffn_multiple=2.0)
    model.build((1, 16))

    def check(weight, std, rtol=0.03):
        values = np.asarray(weight)
        assert abs(values.mean()) < 0.05 * std, weight.path
        np.testing.assert_allclose(values.std(), std, rtol=rtol, err_msg=weight.path)

    for block in model.blocks:
        attention, feed_forward = block.attention, block.feed_forward
        for kernel, _ in (attention.query, attention.key, attention.value):
            check(kernel, math.sqrt(0.125 / d))
        check(attention.output_projection[0], math.sqrt(0.125 / (2 * layers * d)))
        check(feed_forward.inner.kernel, math.sqrt(0.125 / d))
        check(feed_forward.outer.kernel, math.sqrt(0.125 / (2 * layers * ffn)))
        for bias in (attention.query[1], attention.output_projection[1], feed_forward.inner.bias):
            assert not np.asarray(bias).any()
    check(model.token_embedding.embeddings, 0.125 / math.sqrt(d))
    positions = np.concatenate([np.asarray(t).ravel() for t in model.position_embedding.tables])
    np.testing.assert_allclose(positions.std(), 0.125 / math.sqrt(d * 2), rtol=0.06)


def test_config_round_trips():
    options = dict(attention_schedule="b,bT", dropout=0.2, qk_ratio=0.5, ffn_multiple=2.0, remat=True,
                   position_axes=[4, 4, 2], num_summary_patterns=1)
    model = _model(**options)
    config = model.get_config()
    clone = SparseTransformerLM.from_config(config)
    assert clone.get_config() == config
    for key, value in dict(SMALL, **options).items():
        assert config[key] == value, key
    assert [block.attention.pattern for block in clone.blocks] == ["local", "strided"]


def test_a_random_output_head_gives_the_layers_below_a_gradient_at_the_first_step():
    """The released zero head (the default) passes no gradient below it on the first step; the option
    `logits_initializer` (cpu_small.gin: glorot_uniform) does, and round-trips."""
    ids = _ids(8)

    def gradients(model):
        with tf.GradientTape() as tape:
            logits = model(ids, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(ids, logits))
        variables = [model.token_embedding.embeddings, model.blocks[0].feed_forward.trainable_weights[0]]
        return [float(tf.norm(g)) for g in tape.gradient(loss, variables)]

    assert gradients(_model()) == [0.0, 0.0]
    model = _model(logits_initializer="glorot_uniform")
    assert all(g > 0 for g in gradients(model)) and np.asarray(model.logits_layer.kernel).std() > 0.05
    clone = SparseTransformerLM.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    check_keras_round_trip(model, ids)


# --- schedules ----------------------------------------------------------------------------------------------

def test_parse_schedule_interleaves_entries_over_the_layers():
    assert parse_schedule("b,bT,b,b", 8) == ["local", "strided", "local", "local"] * 2
    assert parse_schedule("bT,b,b,b", 6) == ["strided", "local", "local", "local", "strided", "local"]
    assert parse_schedule("a", 2) == ["all", "all"]
    assert parse_schedule("fixed, local+strided", 3) == ["fixed", "local+strided", "fixed"]
    assert parse_schedule("local|strided", 1) == ["local|strided"]


@pytest.mark.parametrize("schedule", ["b_all", "b,bT_all", "a_all"])
def test_parse_schedule_rejects_bidirectional_codes(schedule):
    with pytest.raises(ValueError, match=r"is bidirectional; a decoder LM needs causal patterns"):
        parse_schedule(schedule, 4)
    with pytest.raises(ValueError, match=r"is bidirectional"):
        _model(attention_schedule=schedule)


def test_model_schedule_sets_each_layers_pattern():
    model = _model(attention_schedule="b,bT,b,b", num_layers=8)
    assert [block.attention.pattern for block in model.blocks] == ["local", "strided", "local", "local"] * 2


def test_fixed_with_eight_heads_and_four_summary_patterns_builds():
    model = _model(num_heads=8, stride=8, summary=2, num_summary_patterns=4)
    logits = model(_ids(9))
    assert logits.shape == (2, LENGTH, VOCAB)
    attention = model.blocks[0].attention
    assert attention.num_heads == 8 and attention.num_summary_patterns == 4


# --- bad arguments ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden_dim=17), r"hidden_dim 17 must be divisible by num_heads 2"),
    (dict(num_heads=0), r"num_heads must be an integer >= 1"),
    (dict(attention_schedule="dilated"), r"unknown attention pattern 'dilated'"),
    (dict(summary=3, num_summary_patterns=2), r"must not exceed the stride \(4\)"),
    (dict(num_summary_patterns=4, summary=1), r"num_heads \(2\) must be divisible by num_summary_patterns \(4\)"),
    (dict(attention_schedule="local|strided|block"), r"num_heads \(2\) must be divisible by the 3 head groups"),
    (dict(stride=0), r"stride must be an integer >= 1"),
    (dict(position_axes=(4, 4)), r"position_axes \(4, 4\) cover 16 positions, fewer than max_length 32"),
    (dict(qk_ratio=0.01), r"key_dim"),
    (dict(max_length=0), r"max_length must be an integer >= 1"),
])
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(**kwargs)


def test_text_positions_without_a_stride_raise_a_value_error():
    """A dense schedule needs no stride for attention, but the text positions (i // stride, i % stride) do."""
    _model(attention_schedule="a", stride=None, position_axes=(32,))  # explicit positions: fine
    with pytest.raises(ValueError, match=r"stride"):
        _model(attention_schedule="a", stride=None)
