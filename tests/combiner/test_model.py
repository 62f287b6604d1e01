"""CombinerLM: strict causality for every variant, a jit_compile fit step and `.keras` round trip, the preset
(pre-LN, tanh-GELU, learned positions, tied output), half-size queries and keys (`qk_ratio`), the config, the
gin file and argument checks."""

import numpy as np
import pytest

import keras

from combiner import CombinerAttention, CombinerLM
from apps import gin_experiment
from common.metrics import LanguageModelLoss
from tests.layer_checks import check_keras_round_trip

VOCAB, LENGTH = 32, 24
SMALL = dict(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, num_heads=2, ffn_dim=32, max_length=32,
             segment_length=4, seed=1)
VARIANTS = ["fixed", "logsparse", "axial", "mixture"]


def _model(**overrides):
    keras.utils.set_random_seed(0)
    return CombinerLM(**dict(SMALL, **overrides))


def _ids(seed, batch=2, length=LENGTH):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_model_is_strictly_causal(variant):
    """Logits at position p predict id p from ids < p: redrawing the ids after t changes no logit at
    positions <= t + 1, and does change later ones. Length 22 is padded inside the kernels."""
    model = _model(variant=variant, row_summary="proj")
    ids = _ids(0, length=22)
    base = np.asarray(model(ids, training=False))
    rng = np.random.default_rng(1)
    for t in range(0, 20, 3):
        changed = ids.copy()
        changed[:, t + 1:] = (ids[:, t + 1:] + rng.integers(1, VOCAB, ids[:, t + 1:].shape)) % VOCAB
        out = np.asarray(model(changed, training=False))
        np.testing.assert_allclose(out[:, :t + 2], base[:, :t + 2], rtol=0, atol=1e-5, err_msg=f"t={t}")
        assert np.abs(out[:, t + 2:] - base[:, t + 2:]).max() > 1e-4


@pytest.mark.parametrize("variant,options", [("fixed", dict(local_summary="deepset-max")),
                                             ("axial", dict(row_summary="proj", dropout=0.1)),
                                             ("mixture", dict(attention_dropout=0.1, tie_embeddings=False))])
def test_jit_fit_step_and_keras_round_trip(variant, options):
    model = _model(variant=variant, num_layers=1, **options)  # one layer: XLA compiles it faster
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
    assert isinstance(restored, CombinerLM) and restored.get_config() == model.get_config()


def test_preset_follows_the_released_tf_model():
    model = _model(variant="axial")
    model(_ids(3))
    assert model.norm_placement == "pre" and model.final_norm and model.norm_epsilon == 1e-5
    assert model.ffn_activation == "gelu_tanh" and model.ffn_use_bias and model.ffn_dim == 32
    assert model.position_axes == (32,) and model.position_embedding.tables[0].shape == (32, 16)
    assert model.tie_embeddings and model.logits_layer is None and model.output_bias_weight is not None
    attention = [block.attention for block in model.blocks]
    assert all(isinstance(a, CombinerAttention) and a.causal and a.use_bias and a.variant == "axial"
               for a in attention)
    assert attention[0].row_summary == "proj" and attention[0].row_key_kernel.shape == (16, 2, 8)
    assert CombinerLM().ffn_dim == 4 * 768  # the released defaults: 12 x 768, 12 heads, 4x feed-forward
    # N(0, 0.02) initialisation (the release's WEIGHT_INITIALIZER).
    embeddings = np.asarray(model.token_embedding.embeddings)
    assert 0.01 < embeddings.std() < 0.03


def test_preset_config_round_trips():
    model = _model(variant="mixture", dropout=0.2, tie_embeddings=False)
    config = model.get_config()
    clone = CombinerLM.from_config(config)
    assert clone.get_config() == config
    for key, value in dict(SMALL, variant="mixture", dropout=0.2, tie_embeddings=False).items():
        assert config[key] == value, key
    assert all(block.attention.variant == "mixture" for block in clone.blocks)


def test_qk_ratio_halves_the_query_and_key_width():
    """qk_ratio 0.5: queries, keys and the axial row projection's region keys are 4 wide per head, values 8;
    the saving is 3 kernels [16, 2, 4] and 3 biases [2, 4] per layer (query, key, row key)."""
    full, half = _model(variant="axial"), _model(variant="axial", qk_ratio=0.5)
    ids = _ids(4)
    full(ids)
    half(ids)
    attention = half.blocks[0].attention
    assert (attention.key_dim, attention.value_dim) == (4, 8)
    assert tuple(attention.query[0].shape) == tuple(attention.key[0].shape) == (16, 2, 4)
    assert tuple(attention.value[0].shape) == (16, 2, 8) and tuple(attention.row_key_kernel.shape) == (16, 2, 4)
    assert full.count_params() - half.count_params() == 2 * 3 * (16 * 2 * 4 + 2 * 4)


@pytest.mark.parametrize("variant", ["fixed", "axial"])
def test_qk_ratio_model_is_causal_and_round_trips(variant):
    model = _model(variant=variant, qk_ratio=0.5)
    ids = _ids(5, length=22)
    base = np.asarray(model(ids, training=False))
    changed = ids.copy()
    changed[:, 11:] = (ids[:, 11:] + 1) % VOCAB
    np.testing.assert_allclose(np.asarray(model(changed, training=False))[:, :12], base[:, :12], rtol=0,
                               atol=1e-5)
    config = model.get_config()
    assert config["qk_ratio"] == 0.5 and CombinerLM.from_config(config).get_config() == config
    restored = check_keras_round_trip(model, ids)
    assert restored.blocks[0].attention.key_dim == 4


def test_shipped_gin_config_parses():
    experiment = gin_experiment.parse_config(["combiner/local_text.gin"], ["Experiment.train_steps = 7"])
    assert experiment.dataset == "local_text" and experiment.train_steps == 7
    model = experiment.model(vocabulary_size=256)
    assert isinstance(model, CombinerLM) and model.num_layers == 4
    assert model.preset["variant"] == "fixed" and model.preset["segment_length"] ** 2 == experiment.sequence_length


@pytest.mark.parametrize("kwargs, named", [
    (dict(hidden_dim=17), "hidden_dim 17"), (dict(num_heads=0), "num_heads"), (dict(variant="dense"), "'dense'"),
    (dict(segment_length=0), "segment_length"), (dict(max_length=0), "max_length"),
    (dict(local_summary="max"), "local_summary 'max'"), (dict(qk_ratio=0.0), "qk_ratio"),
    (dict(qk_ratio=0.05), "qk_ratio")])
def test_invalid_arguments_raise_naming_the_argument(kwargs, named):
    with pytest.raises(ValueError, match=named):
        _model(**kwargs)
