"""The trainer's optimizer options of the released Sparse Transformer code: weight decay on matrices only, and
evaluation with a moving (Polyak) average of the weights."""

import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from apps import errors, gin_experiment, train
from tests.apps.train_helpers import (  # noqa: F401  (fixtures)
    assert_same_arrays, checkpoint_values, clean_gin, corpus, tiny_params, train_in_process)

pytestmark = pytest.mark.usefixtures("clean_gin")


def averaging(momentum):
    """Adam (through gin, so that its bindings apply) keeping a moving average of the weights."""
    return ["Experiment.optimizer = @keras.optimizers.Adam", "Adam.use_ema = True",
            f"Adam.ema_momentum = {momentum}"]


@pytest.mark.parametrize("matrices_only", [False, True])
def test_weight_decay_on_matrices_only_leaves_vectors_alone(corpus, matrices_only):
    params = tiny_params(corpus, optimizer="@keras.optimizers.AdamW", learning_rate=1.0,
                         decay_matrices_only=matrices_only) + ["AdamW.weight_decay = 0.5"]
    experiment = gin_experiment.parse_config([], params)
    model, _ = gin_experiment.build_model(experiment)
    optimizer = gin_experiment.make_optimizer(experiment, model)
    before = [v.numpy() for v in model.trainable_variables]
    # Zero gradients: Adam's step is zero, so what changes is the decoupled decay, w <- w * (1 - lr * 0.5).
    optimizer.apply([tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables)
    for old, variable in zip(before, model.trainable_variables):
        decayed = len(variable.shape) >= 2 or not matrices_only
        np.testing.assert_allclose(variable.numpy(), old * 0.5 if decayed else old, rtol=1e-6,
                                   err_msg=variable.path)
    assert any(len(v.shape) < 2 for v in model.trainable_variables)  # the test has vectors to leave alone


def test_eval_ema_needs_an_optimizer_that_keeps_the_average(corpus, trained_dir):
    with pytest.raises(errors.UserError, match="use_ema = True"):
        train.run([], tiny_params(corpus, eval_ema=True), trained_dir, "eval")


@pytest.fixture
def trained_dir(corpus, tmp_path):
    """4 steps of Adam keeping a moving average of the weights (momentum 0.9), checkpoints at 2 and 4."""
    model_dir = str(tmp_path / "averaged")
    train_in_process(tiny_params(corpus) + averaging(0.9), model_dir)
    gin.clear_config()
    return model_dir


def test_eval_ema_scores_the_moving_average_and_leaves_the_checkpoint(corpus, trained_dir):
    plain = train.run([], tiny_params(corpus) + averaging(0.9), trained_dir, "eval")
    averaged = train.run([], tiny_params(corpus, eval_ema=True) + averaging(0.9), trained_dir, "eval")
    assert averaged["step"] == plain["step"] == 4
    assert abs(averaged["bits_per_token"] - plain["bits_per_token"]) > 1e-4  # other weights were scored


def test_at_momentum_zero_the_average_is_the_trained_weights(corpus, tmp_path):
    """Keras' average is w_avg <- m * w_avg + (1 - m) * w after each step: at m = 0 it is the weights, so an
    EMA evaluation must score exactly what the plain one does (it reads the average the checkpoint holds)."""
    model_dir = str(tmp_path / "momentum_zero")
    train_in_process(tiny_params(corpus) + averaging(0.0), model_dir)
    gin.clear_config()
    plain = train.run([], tiny_params(corpus) + averaging(0.0), model_dir, "eval")
    averaged = train.run([], tiny_params(corpus, eval_ema=True) + averaging(0.0), model_dir, "eval")
    assert averaged["bits_per_token"] == pytest.approx(plain["bits_per_token"], rel=1e-6)


def test_evaluating_the_average_during_training_does_not_change_the_training(corpus, tmp_path):
    runs = {}
    for name, extra in (("without", {}), ("with", dict(eval_every=1, eval_batches=1, eval_ema=True))):
        model_dir = str(tmp_path / name)
        train_in_process(tiny_params(corpus, model={"dropout": 0.0}, **extra) + averaging(0.9), model_dir)
        gin.clear_config()
        runs[name] = checkpoint_values(os.path.join(model_dir, "checkpoints", "ckpt-4"))
    assert_same_arrays(runs["without"], runs["with"], atol=0, what="step-4 checkpoint with and without EMA evals")
