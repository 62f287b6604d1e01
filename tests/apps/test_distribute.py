"""Distributed training: MirroredStrategy on two logical CPU devices matches one device at the same global batch
(weights, centroids, optimizer state, losses), keeps every replica's copy identical and writes checkpoints that
resume on one device; two MultiWorkerMirroredStrategy workers on localhost train, only the chief writes, and
their checkpoint restores on one device; the trainer's model call collects each replica's own losses; bad
strategy input is a one-line error.

TensorFlow's devices are fixed when it starts, so the two-device runs happen in fresh processes
(`tests.apps.distribute_runs`, and `python -m apps.train` for the workers).
"""

import glob
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from apps import distribute, errors, steps, train
from routing_transformer import RoutingTransformerLM
from tests.apps.distribute_runs import RESULT_TAG
from tests.apps.train_helpers import (  # noqa: F401  (fixtures)
    REPO, assert_one_line_error, assert_same_arrays, checkpoint_values, clean_gin, corpus, gin_param_args,
    read_scalars, run_module, tiny_params, train_in_process)

pytestmark = pytest.mark.usefixtures("clean_gin")

# No dropout (replicas draw their own masks), a commitment loss large enough to show in the weights, and
# clipping by the global norm (which needs the summed gradient).
MODEL = {"dropout": 0.0, "beta": 0.1}
TINY_LM = dict(vocabulary_size=16, num_layers=2, hidden_dim=16, ffn_dim=32, local_heads=1, routing_heads=1,
               num_clusters=2, window=8, block_size=8, max_relative_position=8, skip_first=1, routing="causal")


def _params(corpus, **experiment):
    return tiny_params(corpus, model=MODEL, **{"batch_size": 4, "clip_norm": 0.5, **experiment})


def _checkpoint(model_dir, step):
    return checkpoint_values(os.path.join(model_dir, "checkpoints", f"ckpt-{step}"))


def _without_kmeans(values):
    return {name: value for name, value in values.items() if "kmeans" not in name}


def _kmeans(values):
    return {name: value for name, value in values.items() if "kmeans" in name}


# --- MirroredStrategy ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mirrored(corpus, tmp_path_factory):
    """The run of `distribute_runs.mirrored` (3 steps on one device; 2 mirrored steps + 1 resumed on one device)."""
    root = tmp_path_factory.mktemp("mirrored")
    spec = {"params": _params(corpus, checkpoint_every=1, keep_checkpoints=3),
            "single_dir": str(root / "single"), "mirrored_dir": str(root / "mirrored"), "odd_dir": str(root / "odd")}
    result = subprocess.run([sys.executable, "-m", "tests.apps.distribute_runs", "mirrored", json.dumps(spec)],
                            cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_TAG)]
    assert lines, result.stdout[-3000:]
    return spec, json.loads(lines[-1][len(RESULT_TAG):])


def test_mirrored_steps_match_one_device_at_the_same_global_batch(mirrored):
    spec, result = mirrored
    assert result["replicas"] == 2
    for step in (1, 2):  # model (centroids included), optimizer moments and iterations, step
        single, both = _checkpoint(spec["single_dir"], step), _checkpoint(spec["mirrored_dir"], step)
        assert _kmeans(single) and any(abs(value).max() > 0 for value in _kmeans(single).values())
        assert_same_arrays(_without_kmeans(single), _without_kmeans(both), atol=1e-5,
                           what=f"mirrored vs one device after {step} steps")
        assert_same_arrays(_kmeans(single), _kmeans(both), atol=1e-5, what=f"centroids after {step} steps")
    single = read_scalars(os.path.join(spec["single_dir"], "train"))
    both = read_scalars(os.path.join(spec["mirrored_dir"], "train"))
    for name in ("loss", "bits_per_token", "routing/layer_1/largest_cluster_fraction"):
        for step in (1, 2):
            assert both[name][step] == pytest.approx(single[name][step], rel=1e-5), (name, step)


def test_mirrored_replicas_hold_identical_copies(mirrored):
    _, result = mirrored
    gaps = result["replica_gaps"]
    assert any("kmeans/centroids" in name for name in gaps) and any("kmeans/ema_count" in name for name in gaps)
    assert all(gap == 0.0 for gap in gaps.values()), {name: gap for name, gap in gaps.items() if gap}


def test_kmeans_update_on_replicas_is_the_update_of_the_concatenated_batch_also_under_remat(mirrored):
    _, result = mirrored
    kmeans = result["kmeans"]
    assert kmeans["ema_count_max"] > 0  # the update happened
    assert kmeans["gap_to_single"] < 1e-5
    assert kmeans["recomputed_gap_to_single"] < 1e-5  # one update, not a second one in the recompute
    assert set(kmeans["replica_gaps"].values()) == {0.0}


def test_mirrored_checkpoint_resumes_on_one_device(mirrored):
    """Step 3 on one device from the mirrored step-2 checkpoint (model, optimizer, data position) is step 3
    of the single-device run."""
    spec, _ = mirrored
    assert_same_arrays(_checkpoint(spec["single_dir"], 3), _checkpoint(spec["mirrored_dir"], 3), atol=1e-5,
                       what="mirrored 2 steps + 1 on one device vs 3 on one device")


def test_mirrored_evaluation_matches_one_device(mirrored):
    _, result = mirrored
    single, both = result["eval_default"], result["eval_mirrored"]
    assert single["tokens"] == both["tokens"] > 0
    assert both["bits_per_token"] == pytest.approx(single["bits_per_token"], rel=1e-6)


def test_a_batch_that_does_not_split_over_the_replicas_is_a_user_error(mirrored):
    spec, result = mirrored
    assert "batch_size = 3 is not a multiple of the 2 replicas" in result["odd_batch_error"]
    assert not os.path.exists(os.path.join(spec["odd_dir"], "checkpoints"))


# --- MultiWorkerMirroredStrategy ----------------------------------------------------------------------------

def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_two_workers_train_checkpoint_and_restore_on_one_device(corpus, tmp_path):
    params = _params(corpus, train_steps=2, checkpoint_every=1)
    single_dir, workers_dir, worker_tmp = str(tmp_path / "single"), str(tmp_path / "workers"), tmp_path / "tmp"
    train_in_process(params, single_dir)  # also prepares the dataset, which the workers then share
    worker_tmp.mkdir()
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    workers = []
    try:
        for index in range(2):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TMPDIR=str(worker_tmp),
                       TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "apps.train", "--strategy=multi_worker", f"--model_dir={workers_dir}",
                 *gin_param_args(params)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True))
        outputs = [worker.communicate(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        assert "step 2/2" in out, out

    # Only the chief wrote: its checkpoints and one summary file; the other worker deleted its own.
    state = tf.train.get_checkpoint_state(os.path.join(workers_dir, "checkpoints"))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-1", "ckpt-2"]
    assert len(glob.glob(os.path.join(workers_dir, "train", "events.out.tfevents.*"))) == 1
    assert os.path.exists(os.path.join(workers_dir, "operative_config.gin"))
    assert not glob.glob(str(worker_tmp / "worker_checkpoint_*"))

    # Each worker's replica took half of each global batch: the result is that of one device.
    assert_same_arrays(_checkpoint(single_dir, 2), _checkpoint(workers_dir, 2), atol=1e-5,
                       what="two workers vs one device after 2 steps")
    # The checkpoint restores on one device.
    restored = train.run([], params, workers_dir, "eval")
    reference = train.run([], params, single_dir, "eval")
    assert restored["step"] == 2
    assert restored["bits_per_token"] == pytest.approx(reference["bits_per_token"], rel=1e-5)


# --- the trainer's model call -------------------------------------------------------------------------------

def test_model_call_collects_its_losses_and_writes_its_state_updates():
    model = RoutingTransformerLM(**TINY_LM)
    ids = np.random.default_rng(0).integers(0, 16, (2, 16)).astype(np.int32)
    model(ids)
    centroids = np.array(model.blocks[1].attention.kmeans.centroids)
    _, losses = steps.call_model(model, ids, training=True)
    assert len(losses) == 1  # the routing layer's commitment loss
    assert not np.allclose(np.asarray(model.blocks[1].attention.kmeans.centroids), centroids)


class _Counter(keras.Model):
    """Counts its calls in a trainable variable (an update the trainer cannot write back)."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros")

    def call(self, x, training=None):
        self.calls.assign_add(1.0)
        return x


def test_model_call_refuses_updates_it_would_lose():
    model = _Counter()
    model(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="assigned variables outside its non_trainable_variables"):
        steps.call_model(model, np.zeros((1, 2), np.float32), training=True)


# --- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{cluster", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG has no 'cluster'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "must name this process's type"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "index 2 is not one of"),
])
def test_bad_tf_config_says_how_to_set_it(text, message):
    with pytest.raises(ValueError, match=message) as error:
        distribute.check_tf_config(text)
    if text is None:
        assert '"cluster": {"worker": [' in str(error.value)  # an example to copy


def test_good_tf_config_passes():
    distribute.check_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')


def test_unknown_strategy_is_a_user_error(corpus, tmp_path):
    with pytest.raises(errors.UserError, match=r"unknown strategy 'nccl'; choose one of"):
        train.run([], tiny_params(corpus), str(tmp_path / "m"), "train", strategy="nccl")


def test_cli_multi_worker_without_tf_config(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = run_module("apps.train", "--gin_file=quickstart.gin", "--strategy=multi_worker",
                        f"--model_dir={tmp_path / 'm'}")
    line = assert_one_line_error(result)
    assert "TF_CONFIG" in line and '"task": {"type": "worker", "index": 0}' in line
    assert not os.path.exists(tmp_path / "m")


def test_cli_tpu_strategy_without_a_tpu(tmp_path):
    result = run_module("apps.train", "--gin_file=quickstart.gin", "--strategy=tpu",
                        f"--model_dir={tmp_path / 'm'}")
    line = assert_one_line_error(result)
    assert "--strategy=tpu found no TPU" in line and "--tpu=local" in line
