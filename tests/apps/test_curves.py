"""Learning curves: every training run logs its training clock and draws curves.png (train and eval bits per
token against step and training seconds); a resumed run's clock goes on from where it stopped."""

import os

import pytest

from apps import curves, train
from tests.apps.train_helpers import clean_gin, corpus, read_scalars, tiny_params  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("clean_gin")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_SIGNATURE


def test_training_and_evaluation_draw_curves_against_step_and_time(corpus, tmp_path):
    model_dir = str(tmp_path / "model")
    params = tiny_params(corpus, train_steps=4, log_every=1, eval_every=2, eval_batches=1)
    train.run([], params, model_dir, "train")
    assert _png(os.path.join(model_dir, curves.CURVES_FILE))
    clock = read_scalars(os.path.join(model_dir, "train"))["train_seconds"]
    assert sorted(clock) == [1, 2, 3, 4]
    assert all(clock[s] < clock[s + 1] for s in (1, 2, 3)) and clock[1] > 0
    # The in-loop evaluation at step 2 carries the clock of step 2; evaluating the final checkpoint, step 4's.
    os.remove(os.path.join(model_dir, curves.CURVES_FILE))
    train.run([], params, model_dir, "eval")
    assert _png(os.path.join(model_dir, curves.CURVES_FILE))
    evals = curves.curve(curves.read_scalars(os.path.join(model_dir, "eval")))
    assert [(step, seconds) for step, seconds, _ in evals] == [(2, pytest.approx(clock[2])),
                                                                (4, pytest.approx(clock[4]))]
    assert all(bits > 0 for _, _, bits in evals)


def test_a_resumed_run_continues_the_training_clock(corpus, tmp_path):
    model_dir = str(tmp_path / "model")
    train.run([], tiny_params(corpus, train_steps=2, log_every=1), model_dir, "train")
    first = read_scalars(os.path.join(model_dir, "train"))["train_seconds"]
    train.run([], tiny_params(corpus, train_steps=4, log_every=1), model_dir, "train")
    clock = read_scalars(os.path.join(model_dir, "train"))["train_seconds"]
    assert clock[1] == first[1] and clock[2] == first[2]
    assert clock[2] < clock[3] < clock[4]
    assert curves.train_seconds_at(model_dir, 3) == clock[3] and curves.train_seconds_at(model_dir, 0) == 0.0


def test_no_curves_before_anything_is_logged(tmp_path):
    assert curves.write_curves_png(str(tmp_path)) is None
    assert not os.path.exists(tmp_path / curves.CURVES_FILE)
