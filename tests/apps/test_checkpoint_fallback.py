"""Damaged checkpoints: train, eval and sample fall back to the newest readable one with one line naming both,
never delete the damaged files, clear what a killed save left, and say so in one line when none is readable.
A training process killed with SIGKILL during a save resumes to the same steps and losses as an uninterrupted
run."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
import tensorflow as tf

from apps import checkpoints, train
from tests.apps.train_helpers import (  # noqa: F401  (fixtures)
    REPO, assert_one_line_error, assert_same_arrays, checkpoint_values, clean_gin, corpus, file_digests,
    gin_param_args, read_scalars, run_module, tiny_params, train_in_process, trained)

pytestmark = pytest.mark.usefixtures("clean_gin")


def copy_of(trained, tmp_path):
    """A copy of the `trained` model directory (checkpoints at steps 2 and 4)."""
    model_dir = str(tmp_path / "model")
    shutil.copytree(trained[0], model_dir)
    return model_dir, os.path.join(model_dir, "checkpoints")


def data_file(directory, step):
    (path,) = glob.glob(os.path.join(directory, f"ckpt-{step}.data-*"))
    return path


def truncate(path):
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[:len(raw) // 2])


def flip_bytes(path):
    """Flips one byte in every 64 (the checksums are per tensor: every tensor must be hit)."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    for index in range(0, len(raw), 64):
        raw[index] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(raw))


def remove_index(directory, step):
    os.remove(os.path.join(directory, f"ckpt-{step}.index"))


DAMAGES = {"truncated data": lambda d: truncate(data_file(d, 4)),
           "flipped bytes": lambda d: flip_bytes(data_file(d, 4)),
           "lost index": lambda d: remove_index(d, 4)}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_eval_falls_back_to_the_newest_readable_checkpoint_and_leaves_the_damage(damage, trained, corpus, tmp_path,
                                                                                 capsys):
    model_dir, directory = copy_of(trained, tmp_path)
    DAMAGES[damage](directory)
    before = file_digests(directory)
    results = train.run([], tiny_params(corpus, eval_batches=1), model_dir, "eval")
    assert results["step"] == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if "unreadable" in line]
    assert len(lines) == 1 and "ckpt-4" in lines[0] and lines[0].endswith(os.path.join(directory, "ckpt-2")), lines
    assert file_digests(directory) == before  # evaluation moves and deletes nothing


def test_sample_falls_back_to_the_newest_readable_checkpoint(trained, tmp_path, capsys):
    model_dir, directory = copy_of(trained, tmp_path)
    values = {step: checkpoint_values(os.path.join(directory, f"ckpt-{step}")) for step in (2, 4)}
    flip_bytes(data_file(directory, 4))
    model, _ = checkpoints.load_trained_model(model_dir)
    assert "ckpt-4" in capsys.readouterr().out
    moved = [name for name in values[2] if name.startswith("model/")
             and not np.array_equal(values[2][name], values[4][name])]
    assert moved  # two more steps changed the weights: which checkpoint was restored shows
    weights = [np.asarray(v) for v in model.variables]
    for name in moved:
        assert any(w.shape == values[2][name].shape and np.array_equal(w, values[2][name]) for w in weights), name


def test_training_resumes_from_the_newest_readable_checkpoint_and_moves_the_damaged_one_aside(trained, corpus,
                                                                                            tmp_path, capsys):
    model_dir, directory = copy_of(trained, tmp_path)
    truncate(data_file(directory, 4))
    damaged = {name: data for name, data in file_digests(directory).items() if name.startswith("ckpt-4.")}
    train_in_process(tiny_params(corpus, train_steps=6), model_dir)
    out = capsys.readouterr().out
    assert "ckpt-4" in out and "unreadable" in out
    assert f"resumed from {os.path.join(directory, 'ckpt-2')} at step 2" in out
    assert "step 3/6" in out and "step 6/6" in out
    moved = file_digests(os.path.join(directory, checkpoints.UNREADABLE))
    assert moved == damaged  # the damaged files, byte for byte, out of the way of the new ckpt-4
    state = tf.train.get_checkpoint_state(directory)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-2", "ckpt-4", "ckpt-6"]
    assert int(checkpoint_values(os.path.join(directory, "ckpt-6"))["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 6


def test_no_readable_checkpoint_is_a_one_line_error_naming_each(trained, corpus, tmp_path):
    model_dir, directory = copy_of(trained, tmp_path)
    truncate(data_file(directory, 4))
    flip_bytes(data_file(directory, 2))
    before = file_digests(directory)
    for mode in ("eval", "train"):
        result = run_module("apps.train", *gin_param_args(tiny_params(corpus, train_steps=6)),
                            f"--model_dir={model_dir}", f"--mode={mode}")
        line = assert_one_line_error(result)
        assert "no readable checkpoint" in line and "ckpt-4" in line and "ckpt-2" in line, line
        assert file_digests(directory) == before


def test_a_partial_save_left_by_a_kill_is_removed_on_the_next_start(trained, corpus, tmp_path, capsys):
    model_dir, directory = copy_of(trained, tmp_path)
    partial = os.path.join(directory, "ckpt-5_temp")
    os.makedirs(partial)
    with open(os.path.join(partial, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
        f.write(b"\0" * 100)
    train_in_process(tiny_params(corpus, train_steps=5), model_dir)
    assert not os.path.exists(partial)
    assert "ckpt-5_temp" in capsys.readouterr().out
    assert os.path.exists(os.path.join(directory, "ckpt-5.index"))


def start_training(params, model_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "apps.train", *gin_param_args(params), f"--model_dir={model_dir}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_during_a_save(process, directory, timeout=120):
    """SIGKILLs `process` as soon as a save's `_temp` directory appears; True if one was still there after
    the kill (the kill landed inside the save), False if the save had finished first or training ended."""
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        if glob.glob(os.path.join(directory, "*_temp")):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return bool(glob.glob(os.path.join(directory, "*_temp")))
    process.kill()
    process.wait()
    return False


@pytest.mark.slow
def test_sigkill_during_a_save_resumes_to_the_same_steps_and_losses(corpus, tmp_path):
    steps = 30
    params = tiny_params(corpus, train_steps=steps, checkpoint_every=1, keep_checkpoints=2)
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    train_in_process(params, straight)
    gin.clear_config()

    directory = os.path.join(killed, "checkpoints")
    landed = 0
    for _ in range(12):  # the kill lands inside a save about every other try; resume after each
        landed += kill_during_a_save(start_training(params, killed), directory)
        if landed >= 2:
            break
    assert landed >= 1, "no SIGKILL landed inside a save in 12 tries"
    finish = run_module("apps.train", *gin_param_args(params), f"--model_dir={killed}", timeout=300)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert not glob.glob(os.path.join(directory, "*_temp"))

    final = {name: checkpoint_values(os.path.join(run, "checkpoints", f"ckpt-{steps}")) for name, run in
             (("straight", straight), ("killed", killed))}
    assert int(final["killed"]["step/.ATTRIBUTES/VARIABLE_VALUE"]) == steps
    assert_same_arrays(final["straight"], final["killed"], atol=1e-5, what="checkpoint after kills and resumes")
    losses = {name: read_scalars(os.path.join(run, "train"))["loss"] for name, run in
              (("straight", straight), ("killed", killed))}
    assert sorted(losses["killed"]) == sorted(losses["straight"]) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert losses["killed"][step] == pytest.approx(losses["straight"][step], rel=1e-5), step
