"""DecoderLM: causality, training, .keras round-trip, tied embeddings, options (target dropout, per-channel
image embeddings), errors, auxiliary losses."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from apps import sample, steps
from common.layers import SelfAttention
from common.metrics import BitsPerToken, LanguageModelLoss
from common.models import DecoderLM
from tests.layer_checks import check_keras_round_trip

VOCAB, HIDDEN, FFN = 11, 16, 24
AUX_LOSS = 5.0


@keras.saving.register_keras_serializable(package="tests")
class AuxLossAttention(SelfAttention):
    """Dense attention that adds a known constant auxiliary loss every call (like routing's commitment loss)."""

    def attend(self, q, k, v, training=None):
        self.add_loss(ops.convert_to_tensor(AUX_LOSS, "float32"))
        return super().attend(q, k, v, training=training)


def _local_relative():
    return SelfAttention(num_heads=2, key_dim=4, kernel="local", kernel_options={"block_size": 4},
                         max_relative_position=3)


def _dense():
    return SelfAttention(num_heads=2, key_dim=4)


def _model(attention=None, num_layers=2, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    attention = [_local_relative(), _dense()] if attention is None else attention
    return DecoderLM(vocabulary_size=VOCAB, num_layers=num_layers, hidden_dim=HIDDEN, attention=attention,
                     ffn_dim=FFN, **kwargs)


def _ids(seed=0, batch=2, length=24):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length)).astype(np.int32)


def _logits(model, ids):
    return np.asarray(model(ids, training=False))


@pytest.mark.parametrize("norm_placement", ["pre", "post"])
def test_causality_of_the_whole_model(norm_placement):
    model = _model(norm_placement=norm_placement, position_axes=(32,))
    ids = _ids()
    logits = _logits(model, ids)
    assert logits.shape == (2, 24, VOCAB) and logits.dtype == np.float32
    rng = np.random.default_rng(1)
    for t in [0, 1, 3, 4, 7, 12, 22, 23]:
        changed = ids.copy()
        # Change every token from t on (token t itself included): logits[t] predicts token t from ids < t.
        changed[:, t:] = (ids[:, t:] + rng.integers(1, VOCAB, size=ids[:, t:].shape)) % VOCAB
        new = _logits(model, changed)
        np.testing.assert_allclose(new[:, :t + 1], logits[:, :t + 1], rtol=1e-5, atol=1e-5, err_msg=f"t={t}")
        if t + 1 < 24:
            # Token t is seen by the very next position.
            assert not np.allclose(new[:, t + 1], logits[:, t + 1], atol=1e-4), t


def test_only_token_t_changed_affects_later_logits_only():
    model = _model()
    ids = _ids(seed=2)
    logits = _logits(model, ids)
    for t in [0, 5, 23]:
        changed = ids.copy()
        changed[:, t] = (ids[:, t] + 1) % VOCAB
        new = _logits(model, changed)
        np.testing.assert_allclose(new[:, :t + 1], logits[:, :t + 1], rtol=1e-5, atol=1e-5)


def test_first_position_is_predicted_from_the_start_vector():
    model = _model()
    ids = _ids(seed=3)
    logits = _logits(model, ids)
    np.testing.assert_allclose(logits[0, 0], logits[1, 0], rtol=1e-5, atol=1e-6)  # no token seen yet
    # A random change (a constant shift would be removed by the LayerNorms).
    model.start.assign(np.random.default_rng(0).standard_normal(model.start.shape).astype(np.float32))
    assert not np.allclose(_logits(model, ids)[:, 0], logits[:, 0], atol=1e-4)


def test_fit_with_jit_lowers_the_loss():
    model = _model(position_axes=(16,))
    pattern = np.array([3, 1, 4, 1, 5, 9, 2, 6], np.int32)
    rng = np.random.default_rng(4)
    ids = np.stack([np.roll(np.tile(pattern, 2), -rng.integers(0, 8)) for _ in range(16)]).astype(np.int32)
    # Plain SGD: XLA compiles its update much faster than Adam's on CPU.
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=LanguageModelLoss(), metrics=[BitsPerToken()],
                  jit_compile=True)
    history = model.fit(ids, ids, batch_size=8, epochs=8, verbose=0).history
    losses, bits = history["loss"], history["bits_per_token"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
    # Bits per token is the same cross-entropy in base 2 (no ignored tokens, equal batches).
    np.testing.assert_allclose(np.array(bits) * np.log(2), losses, rtol=1e-3)
    evaluated = model.evaluate(ids, ids, batch_size=8, verbose=0, return_dict=True)
    assert evaluated["loss"] < losses[0]


def test_keras_round_trip_gives_identical_logits():
    model = _model(position_axes=(4, 8), norm_placement="post", ffn_activation="gelu_sigmoid")
    ids = _ids(seed=5)
    model(ids)
    restored = check_keras_round_trip(model, ids)
    assert type(restored) is DecoderLM
    assert [b.attention.kernel for b in restored.blocks] == ["local", "dense"]
    assert restored.blocks[0].attention.max_relative_position == 3


def test_tied_embeddings():
    ids = _ids(seed=6)
    untied, tied = _model(), _model(tie_embeddings=True)
    untied(ids)
    logits = _logits(tied, ids)
    assert tied.logits_layer is None and untied.logits_layer is not None
    assert "logits" not in [layer.name for layer in tied.layers]
    assert "logits" in [layer.name for layer in untied.layers]
    # The untied model has a [hidden, vocab] kernel where the tied one has a [vocab] output bias only.
    assert len(untied.weights) == len(tied.weights) + 1
    n_params = lambda m: sum(int(np.prod(w.shape)) for w in m.weights)
    assert n_params(untied) - n_params(tied) == HIDDEN * VOCAB
    # logits = final hidden state @ embeddings^T + output bias.
    tied.output_bias_weight.assign(np.linspace(-1, 1, VOCAB).astype(np.float32))
    x = tied.embed(ids)
    for block in tied.blocks:
        x = block(x)
    hidden = np.asarray(tied.final_norm_layer(x))
    expected = hidden @ np.asarray(tied.token_embedding.embeddings).T + np.linspace(-1, 1, VOCAB)
    np.testing.assert_allclose(_logits(tied, ids), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(_logits(tied, ids), logits, atol=1e-4)  # the bias is used
    restored = check_keras_round_trip(tied, ids)
    assert restored.logits_layer is None


def test_tied_embeddings_without_output_bias():
    model = _model(tie_embeddings=True, output_bias=False)
    model(_ids())
    assert model.output_bias_weight is None and not any("bias" == w.name for w in model.weights
                                                         if "output" in w.path)


def test_embedding_dim_differs_from_hidden_dim():
    ids = _ids(seed=7)
    for tie in (False, True):
        model = _model(embedding_dim=6, tie_embeddings=tie)
        logits = _logits(model, ids)
        assert logits.shape == (2, 24, VOCAB)
        assert tuple(model.token_embedding.embeddings.shape) == (VOCAB, 6)
        assert tuple(model.embedding_projection.kernel.shape) == (6, HIDDEN)
        assert tuple(model.output_projection.kernel.shape) == (HIDDEN, 6)
        if not tie:
            assert tuple(model.logits_layer.kernel.shape) == (6, VOCAB)
        check_keras_round_trip(model, ids)
    same = _model()
    same(ids)
    assert same.embedding_projection is None and same.output_projection is None


def test_project_embeddings_at_equal_widths_is_tensor2tensors_emb_dense():
    """`project_embeddings=True` maps embeddings through a dense layer with bias even at equal widths (no map
    back before the head): the block input is embeddings @ kernel + bias, and the model round-trips."""
    ids = _ids(seed=9)
    model = _model(project_embeddings=True)
    model(ids)
    assert tuple(model.embedding_projection.kernel.shape) == (HIDDEN, HIDDEN) and model.output_projection is None
    assert model.count_params() == _built(_model(), ids).count_params() + HIDDEN * HIDDEN + HIDDEN
    embeddings = np.asarray(model.embed(ids))
    expected = embeddings @ np.asarray(model.embedding_projection.kernel) + np.asarray(model.embedding_projection.bias)
    np.testing.assert_allclose(np.asarray(model.block_inputs(model.embed(ids))), expected, rtol=1e-5, atol=1e-6)
    check_keras_round_trip(model, ids)


def _built(model, ids):
    model(ids)
    return model


def test_embedding_dropout_acts_before_the_projection_and_input_dropout_after():
    """With a zero projection kernel, dropout before the projection cannot show: every block input is the bias;
    dropout after it zeroes (or rescales) entries of that bias, at its rate, in training only."""
    ids = _ids(seed=10, batch=8, length=64)
    bias = np.linspace(1.0, 2.0, HIDDEN).astype(np.float32)

    def block_inputs(training, **kwargs):
        model = _built(_model(project_embeddings=True, **kwargs), ids)
        model.embedding_projection.kernel.assign(np.zeros((HIDDEN, HIDDEN), np.float32))
        model.embedding_projection.bias.assign(bias)
        return np.asarray(model.block_inputs(model.embed(ids), training=training))

    np.testing.assert_allclose(block_inputs(True, embedding_dropout=0.5), np.broadcast_to(bias, (8, 64, HIDDEN)))
    dropped = block_inputs(True, input_dropout=0.5)
    zero = dropped == 0
    assert abs(zero.mean() - 0.5) < 0.03, zero.mean()
    np.testing.assert_allclose(dropped[~zero], np.broadcast_to(2 * bias, dropped.shape)[~zero], rtol=1e-6)
    np.testing.assert_allclose(block_inputs(False, input_dropout=0.5), np.broadcast_to(bias, (8, 64, HIDDEN)))
    # Without a projection the embedding dropout does act on the block input.
    model = _built(_model(embedding_dropout=0.5), ids)
    assert (np.asarray(model.block_inputs(model.embed(ids), training=True)) == 0).mean() > 0.4


def test_position_axes():
    ids = _ids(seed=8)
    model = _model(attention=_dense(), position_axes=(4, 8))
    logits = _logits(model, ids)
    tables = model.position_embedding.tables
    assert [tuple(t.shape) for t in tables] == [(4, HIDDEN), (8, HIDDEN)]
    # Positions are used: changing a table changes the logits.
    tables[1].assign(np.random.default_rng(0).standard_normal(tables[1].shape).astype(np.float32))
    assert not np.allclose(_logits(model, ids), logits, atol=1e-4)
    with pytest.raises(ValueError, match="exceeds"):
        model(_ids(length=33))
    assert _model(attention=_dense()).position_embedding is None


def test_dense_model_without_positions_ignores_order_of_the_prefix():
    # One dense layer without positions or relative attention: the last position (input ids[8], shifted)
    # attends to a bag of keys, so permuting ids[:8] leaves its logits unchanged. With positions, it does not.
    ids = _ids(seed=9, batch=1, length=10)
    permuted = ids.copy()
    permuted[0, :8] = ids[0, :8][::-1]
    assert not np.array_equal(permuted, ids)
    bag = _model(attention=_dense(), num_layers=1)
    np.testing.assert_allclose(_logits(bag, permuted)[:, -1], _logits(bag, ids)[:, -1], rtol=1e-4, atol=1e-5)
    positional = _model(attention=_dense(), num_layers=1, position_axes=(10,))
    assert not np.allclose(_logits(positional, permuted)[:, -1], _logits(positional, ids)[:, -1], atol=1e-4)


def test_final_norm_defaults():
    ids = _ids()
    post = _model(norm_placement="post")
    post(ids)
    assert post.final_norm is False and post.final_norm_layer is None
    assert "final_norm" not in [w.path.split("/")[0] for w in post.weights]
    pre = _model(norm_placement="pre")
    pre(ids)
    assert pre.final_norm is True and pre.final_norm_layer is not None
    post_with = _model(norm_placement="post", final_norm=True)
    post_with(ids)
    assert post_with.final_norm_layer is not None and len(post_with.weights) == len(post.weights) + 2
    assert all(b.norm_placement == "post" for b in post.blocks)
    check_keras_round_trip(post, ids)


def test_one_attention_layer_is_copied_per_block():
    model = _model(attention=_local_relative(), num_layers=3)
    model(_ids())
    attentions = [block.attention for block in model.blocks]
    assert len({id(a) for a in attentions}) == 3
    assert [a.name for a in attentions] == ["attention_0", "attention_1", "attention_2"]
    weights = [np.asarray(a.query[0]) for a in attentions]
    assert not np.allclose(weights[0], weights[1])  # independently initialised
    assert model.get_config()["attention"][2]["config"]["kernel"] == "local"


@pytest.mark.parametrize("attention_count", [1, 3])
def test_wrong_number_of_attention_layers_raises(attention_count):
    with pytest.raises(ValueError, match="num_layers=2"):
        _model(attention=[_dense() for _ in range(attention_count)], num_layers=2)


@pytest.mark.parametrize("name", ["vocabulary_size", "num_layers", "hidden_dim", "ffn_dim"])
@pytest.mark.parametrize("value", [0, -2])
def test_non_positive_sizes_raise(name, value):
    kwargs = dict(vocabulary_size=VOCAB, num_layers=1, hidden_dim=HIDDEN, attention=_dense(), ffn_dim=FFN)
    kwargs[name] = value
    with pytest.raises(ValueError, match=name):
        DecoderLM(**kwargs)


def test_token_ids_of_rank_three_raise():
    model = _model()
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model(np.zeros((2, 3, 4), np.int32))
    model(_ids())
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        model(np.zeros((2, 3, 4), np.int32))


@pytest.mark.parametrize("ids", [np.array([[1.5, 2.0, 3.0]], np.float32), np.array([[1, 2, 3]], np.float64)])
def test_token_ids_that_are_not_integers_raise(ids):
    model = _model()
    model(_ids())
    with pytest.raises(TypeError, match="integer token ids; got dtype float"):
        model(ids)  # an embedding lookup would read 1.5 as 1


@pytest.mark.parametrize("attention", [None, "dense", [None, None]])
def test_an_attention_that_is_not_a_layer_raises(attention):
    with pytest.raises(ValueError, match="attention must be an attention layer"):
        DecoderLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=HIDDEN, attention=attention, ffn_dim=FFN)


def test_auxiliary_losses_are_added_to_the_training_loss():
    ids = _ids(seed=10, batch=4, length=12)
    aux = _model(attention=AuxLossAttention(num_heads=2, key_dim=4))
    plain = _model(attention=_dense())
    aux(ids)
    plain(ids)
    plain.set_weights(aux.get_weights())
    np.testing.assert_allclose(_logits(aux, ids), _logits(plain, ids), rtol=1e-6)
    loss = LanguageModelLoss()
    results = {}
    for name, model in (("aux", aux), ("plain", plain)):
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, jit_compile=True)
        y_pred = model(ids, training=True)
        assert len(model.losses) == (2 if name == "aux" else 0)
        computed = float(model.compute_loss(x=ids, y=ids, y_pred=y_pred, training=True))
        fitted = model.fit(ids, ids, batch_size=4, epochs=1, verbose=0).history["loss"][0]
        results[name] = computed, fitted
    base = float(loss(ids, _logits(plain, ids)))
    np.testing.assert_allclose(results["plain"], [base, base], rtol=1e-5)
    np.testing.assert_allclose(results["aux"], [base + 2 * AUX_LOSS] * 2, rtol=1e-5)
    # The auxiliary layer survives a .keras round trip.
    restored = check_keras_round_trip(aux, ids)
    assert type(restored.blocks[0].attention) is AuxLossAttention


# --- target dropout ------------------------------------------------------------------------------------------

def test_target_dropout_replaces_ids_by_zero_at_its_rate_in_training_only():
    model = _model(target_dropout=0.25, seed=3)
    ids = np.random.default_rng(11).integers(1, VOCAB, (64, 512)).astype(np.int32)
    for training in (None, False):
        np.testing.assert_array_equal(np.asarray(model.drop_targets(ids, training)), ids)
    dropped = np.asarray(model.drop_targets(ids, training=True))
    zeroed = dropped == 0
    np.testing.assert_array_equal(dropped[~zeroed], ids[~zeroed])
    assert abs(zeroed.mean() - 0.25) < 0.01, zeroed.mean()  # 32,768 draws: standard deviation 0.0024
    assert not np.array_equal(np.asarray(model.drop_targets(ids, training=True)) == 0, zeroed)  # redrawn
    np.testing.assert_array_equal(np.asarray(_model().drop_targets(ids, training=True)), ids)  # default off


def test_target_dropout_feeds_dropped_ids_and_the_loss_scores_the_original_targets():
    """A training step (apps.train's loss) sees the dropped ids as inputs but scores every original token."""
    model = _model(target_dropout=0.5, seed=4)
    ids = _ids(seed=12, batch=4)
    ids[ids == 0] = 1
    inference = _logits(model, ids)
    np.testing.assert_array_equal(_logits(model, ids), inference)  # nothing dropped outside training
    state = np.array(model.target_dropout_seed.state)
    dropped = np.asarray(model.drop_targets(ids, training=True))
    assert 0 < (dropped == 0).sum() < ids.size
    model.target_dropout_seed.state.assign(state)  # the step below draws the same mask
    batch = {"token_ids": tf.constant(ids), "weights": tf.ones(ids.shape)}
    loss, metrics = steps.loss_and_metrics(model, batch, training=True)
    logits = _logits(model, dropped)
    assert not np.allclose(logits, inference, atol=1e-4)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, ids[..., None], -1).mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(metrics["tokens"]) == ids.size


# --- per-channel image embeddings --------------------------------------------------------------------------

AXES = (2, 4, 3)  # rows, columns, channels: 24 positions


def _image_model(**kwargs):
    return _model(attention=_dense(), position_axes=AXES, channel_embeddings=True, **kwargs)


def test_channel_embeddings_equal_a_hand_computed_lookup():
    """Position t (channel t % 3) gets token t - 1 from channel t % 3's table, times sqrt(embedding_dim), and
    the position rows[t // 12, t % 3] + columns[(t // 3) % 4, t % 3], times sqrt(channels x hidden_dim)."""
    model = _image_model(embedding_dim=6)
    ids = _ids(seed=13)
    model(ids)
    table, start = np.asarray(model.token_embedding.embeddings), np.asarray(model.start)
    assert table.shape == (3 * VOCAB, 6)
    expected = np.sqrt(6) * np.stack([[start] + [table[t % 3 * VOCAB + row[t - 1]] for t in range(1, 24)]
                                      for row in ids])
    embedded = model.embed(ids)
    np.testing.assert_allclose(np.asarray(embedded), expected, rtol=1e-6)
    rows, columns = [np.asarray(t) for t in model.position_embedding.tables]
    assert rows.shape == (2, 3, HIDDEN) and columns.shape == (4, 3, HIDDEN)
    positions = np.sqrt(3 * HIDDEN) * np.stack([rows[t // 12, t % 3] + columns[t // 3 % 4, t % 3] for t in range(24)])
    added = np.asarray(model.block_inputs(embedded)) - np.asarray(model.embedding_projection(embedded))
    np.testing.assert_allclose(added, np.broadcast_to(positions, added.shape), rtol=1e-5, atol=1e-5)


def test_channel_embeddings_decode_as_the_full_pass():
    model = _image_model()
    ids = _ids(seed=14)
    full = _logits(model, ids)
    for prompt in (1, 5):
        incremental = tf.function(sample.incremental_logits)(model, ids, prompt).numpy()
        np.testing.assert_allclose(incremental, full[:, prompt:], rtol=0, atol=1e-4)


def test_target_dropout_and_channel_embeddings_train_with_jit_and_round_trip():
    model = _image_model(target_dropout=0.25, seed=5)
    ids = _ids(seed=15, batch=4)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LanguageModelLoss(), jit_compile=True)
    before = np.array(model(ids, training=False))
    assert np.isfinite(model.fit(ids, ids, batch_size=4, epochs=1, verbose=0).history["loss"][0])
    assert not np.allclose(_logits(model, ids), before)
    config = model.get_config()
    assert config["target_dropout"] == 0.25 and config["channel_embeddings"] is True
    restored = check_keras_round_trip(model, ids)
    assert restored.target_dropout == 0.25 and restored.channel_embeddings and restored.channels == 3


@pytest.mark.parametrize("kwargs", [dict(target_dropout=1.0), dict(target_dropout=-0.1),
                                    dict(channel_embeddings=True), dict(channel_embeddings=True, position_axes=(24,)),
                                    dict(channel_embeddings=True, position_axes=AXES, tie_embeddings=True)])
def test_bad_embedding_options_raise(kwargs):
    with pytest.raises(ValueError, match="target_dropout|channel_embeddings"):
        _model(**kwargs)
