"""Shared set-up of the trainer / sampler tests: a tiny local corpus, tiny gin bindings, CLI runs, summaries.

Fixtures are defined here and imported by the test modules that use them (`from tests.apps.train_helpers
import ...`), so that no conftest has to change.
"""

import os
import re
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from apps import console, curves, gin_experiment, train
from tests.apps.data import fakes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The smallest Routing Transformer that still has a routing layer (layer 1) next to a local-only layer (0).
TINY_MODEL = {
    "num_layers": 2, "hidden_dim": 32, "ffn_dim": 64, "local_heads": 1, "routing_heads": 1, "num_clusters": 2,
    "window": 16, "block_size": 16, "max_relative_position": 16, "skip_first": 1, "routing": "causal",
}
SEQUENCE_LENGTH, BATCH_SIZE = 32, 2


def tiny_params(corpus, *, model=None, **experiment):
    """Gin bindings of a tiny routing-transformer experiment on the tiny corpus.

    corpus: (text_dir, data_dir) from the `corpus` fixture. model: overrides of `TINY_MODEL`.
    experiment: overrides of `Experiment` fields, Python values (jit_compile defaults to False here: it starts
      faster; one test trains with the trainer's default, True).
    """
    text_dir, data_dir = corpus
    fields = {"model": "@routing_transformer.RoutingTransformerLM", "sequence_length": SEQUENCE_LENGTH,
              "batch_size": BATCH_SIZE, "train_steps": 4, "log_every": 1, "checkpoint_every": 2,
              "jit_compile": False, "data_dir": str(data_dir), "data_options": {"local_text_dir": str(text_dir)}}
    fields.update(experiment)
    params = [f"Experiment.{k} = {_gin_value(v)}" for k, v in fields.items()]
    params += [f"RoutingTransformerLM.{k} = {_gin_value(v)}" for k, v in dict(TINY_MODEL, **(model or {})).items()]
    return params


def _gin_value(value):
    """Python literals as gin text; strings starting with '@' (references) or '%' (macros) as they are."""
    return value if isinstance(value, str) and value[:1] in "@%" else repr(value)


def train_in_process(params, model_dir):
    """What `run(..., mode='train')` does, returning the trained in-memory model."""
    experiment = gin_experiment.parse_config([], params)
    os.makedirs(model_dir, exist_ok=True)
    return train.train(experiment, str(model_dir)), experiment


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(text folder, TFDS data_dir) of the tiny corpus of the data tests (written once per worker)."""
    root = tmp_path_factory.mktemp("train_corpus")
    fakes.write_text_dir(root / "texts")
    return str(root / "texts"), str(root / "tfds")


@pytest.fixture
def clean_gin():
    """Gin is global state: every test starts and ends with an empty, unlocked config."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="session")
def trained(corpus, tmp_path_factory):
    """A model_dir with a 4-step tiny model (checkpoints at 2 and 4), and the in-memory model it ended with."""
    gin.clear_config()
    model_dir = str(tmp_path_factory.mktemp("trained") / "model")
    model, experiment = train_in_process(tiny_params(corpus), model_dir)
    gin.clear_config()
    return model_dir, model, experiment


# --- command line -------------------------------------------------------------------------------------------

def run_module(module, *args, timeout=180):
    """`python -m <module> <args>` from the repository root; returns the CompletedProcess (text)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def stderr_lines(stderr):
    """stderr without TensorFlow's native log lines (apps.console's filter is off here: run_module sets
    TF_CPP_MIN_LOG_LEVEL) and without blank lines."""
    return [line for line in stderr.splitlines() if line.strip() and not console.is_native_log_line(line)]


def assert_one_line_error(result):
    """Non-zero exit, no traceback, and stderr (start-up noise aside) is exactly one line 'error: ...'."""
    assert result.returncode != 0, f"exit code 0; stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (
        "stderr should be one line starting with 'error: '; got:\n" + "\n".join(lines))
    return lines[0]


def gin_param_args(params):
    return [f"--gin_param={p}" for p in params]


# --- files written by the trainer ---------------------------------------------------------------------------

def read_scalars(log_dir):
    """{tag: {step: value}} of every scalar summary under log_dir."""
    return curves.read_scalars(log_dir)


def checkpoint_values(prefix):
    """{name: ndarray} of every numeric tensor of a checkpoint (iterator state and object graph left out)."""
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name, dtype in reader.get_variable_to_dtype_map().items()
            if dtype not in (tf.string, tf.variant)}


def file_digests(folder):
    """{relative path: bytes} of every file under folder."""
    contents = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                contents[os.path.relpath(path, folder)] = f.read()
    return contents


def variables_by_position(model):
    """{"<index> <path>": value} of every model variable (trainable, non-trainable, RNG seed states), keyed by
    position because Keras numbers the names of models and seed generators per process."""
    return {f"{i:03d} {re.sub(r'_[0-9]+(?=/|$)', '', v.path)}": np.asarray(v) for i, v in enumerate(model.variables)}


def assert_same_arrays(first, second, atol=1e-5, what=""):
    assert first.keys() == second.keys(), f"{what}: different entries: {sorted(set(first) ^ set(second))}"
    different = []
    for name in sorted(first):
        a, b = np.asarray(first[name]), np.asarray(second[name])
        if a.shape != b.shape or not np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=0, atol=atol):
            gap = np.max(np.abs(a.astype(np.float64) - b)) if a.shape == b.shape and a.size else "shape"
            different.append(f"{name} (max |diff| {gap})")
    assert not different, f"{what}: {len(different)} of {len(first)} differ: " + "; ".join(different[:8])
