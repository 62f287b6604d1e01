"""Mixed precision in every family with one binding (`<Family>LM.mixed_precision = True`): bfloat16 compute,
float32 variables (k-means state included) and logits; a fit step (also jit-compiled, in slow tests) gives a
finite loss, and weights, close to float32's from the same start; the trainer trains with the binding."""

import math
import os

import keras
import numpy as np
import pytest

from combiner import CombinerLM
from common.metrics import LanguageModelLoss
from routing_transformer import RoutingTransformerLM
from sparse_transformer import SparseTransformerLM
from tests.apps.train_helpers import (  # noqa: F401  (fixtures)
    checkpoint_values, clean_gin, corpus, read_scalars, tiny_params, train_in_process)

VOCAB, LENGTH = 32, 32

FAMILIES = {
    "routing": lambda **kw: RoutingTransformerLM(
        vocabulary_size=VOCAB, num_layers=1, hidden_dim=32, ffn_dim=64, local_heads=1, routing_heads=1,
        num_clusters=2, window=16, block_size=16, max_relative_position=16, routing="causal", dropout=0.0, **kw),
    "sparse": lambda **kw: SparseTransformerLM(
        vocabulary_size=VOCAB, num_layers=1, hidden_dim=32, num_heads=2, attention_schedule="fixed", stride=8,
        summary=2, max_length=LENGTH, **kw),
    "combiner": lambda **kw: CombinerLM(
        vocabulary_size=VOCAB, num_layers=1, hidden_dim=32, num_heads=2, max_length=LENGTH, variant="axial",
        segment_length=8, **kw),
}


SEED = 1


def _pair(family):
    """(float32 model, bfloat16 model) with the same weights, both built."""
    ids = np.zeros((1, LENGTH), np.int32)
    # A seed whose routing centroids put no token on a near-tie: there bfloat16 rounding can flip a cluster,
    # and the comparison would measure the flip, not the rounding.
    keras.utils.set_random_seed(SEED)
    reference = FAMILIES[family]()
    reference(ids)
    model = FAMILIES[family](mixed_precision=True)
    model(ids)
    for source, target in zip(reference.weights, model.weights):
        target.assign(source)
    return reference, model


def _fit(model, ids, jit):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LanguageModelLoss(), jit_compile=jit)
    return model.fit(ids, ids, epochs=2, batch_size=len(ids), shuffle=False, verbose=0).history["loss"]


# XLA takes 25-55 s per family to compile these on 2 CPU cores: jit runs are slow tests (the Sparse
# Transformer's is in tests/sparse_transformer/test_model.py).
@pytest.mark.parametrize("family, jit", [(family, False) for family in sorted(FAMILIES)] + [
    pytest.param(family, True, marks=pytest.mark.slow) for family in ("combiner", "routing")])
def test_fit_step_in_bfloat16_is_close_to_float32(family, jit):
    reference, model = _pair(family)
    assert model.compute_dtype == "bfloat16" and reference.compute_dtype == "float32"
    for block in model.blocks:
        assert block.attention.compute_dtype == "bfloat16" and block.feed_forward.compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in model.weights)
    assert model.get_config()["mixed_precision"] is True

    ids = np.random.default_rng(1).integers(0, VOCAB, (4, LENGTH)).astype(np.int32)
    assert model(ids).dtype == "float32"
    initial = [np.asarray(w, np.float64) for w in reference.weights]
    want, got = _fit(reference, ids, jit), _fit(model, ids, jit)
    assert np.all(np.isfinite(got)), got
    assert abs(got[0] - math.log(VOCAB)) < 0.5  # a fresh model is near uniform
    np.testing.assert_allclose(got, want, rtol=2e-2)  # before and after one step
    # The two steps' updates, not the weights (which two small steps barely move): every weight that float32
    # moved, k-means state included, moved the same way in bfloat16.
    moved = 0
    for start, source, target in zip(initial, reference.weights, model.weights):
        assert target.dtype == "float32"
        want_update, got_update = np.asarray(source) - start, np.asarray(target) - start
        if np.abs(want_update).max() < 1e-6:  # no gradient (e.g. a key bias, which softmax cancels): bfloat16's
            assert np.abs(got_update).max() < 1e-4, target.path  # rounding noise moves it far less than lr 1e-3
            continue
        moved += 1
        cosine = np.sum(want_update * got_update) / (np.linalg.norm(want_update) * np.linalg.norm(got_update))
        assert cosine > 0.9, (target.path, cosine)
        np.testing.assert_allclose(np.linalg.norm(got_update), np.linalg.norm(want_update), rtol=0.1,
                                   err_msg=target.path)
    assert moved >= len(reference.trainable_weights) - 2, moved  # (an unused relative table may not move)


@pytest.mark.usefixtures("clean_gin")
def test_trainer_trains_with_the_mixed_precision_binding(corpus, tmp_path):
    params = tiny_params(corpus, train_steps=2, checkpoint_every=2, model={"mixed_precision": True, "dropout": 0.0})
    model, _ = train_in_process(params, tmp_path / "model")
    assert model.compute_dtype == "bfloat16"
    with open(os.path.join(tmp_path, "model", "operative_config.gin")) as f:
        assert "RoutingTransformerLM.mixed_precision = True" in f.read()
    losses = read_scalars(os.path.join(tmp_path, "model", "train"))["loss"]
    assert all(np.isfinite(value) and abs(value - math.log(256)) < 1.0 for value in losses.values()), losses
    values = checkpoint_values(os.path.join(tmp_path, "model", "checkpoints", "ckpt-2"))
    assert values and not any(str(value.dtype) == "bfloat16" for value in values.values())  # float32 variables
