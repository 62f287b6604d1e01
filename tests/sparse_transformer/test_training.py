"""The Sparse Transformer in the trainer: the shipped gin file parses and builds the paper's text model, and a
tiny fixed-pattern model trains from gin on the local corpus, then evaluates."""

import json
import os

import numpy as np
import pytest

from apps import gin_experiment, train
from sparse_transformer import SparseAttention, SparseTransformerLM
from tests.apps.train_helpers import clean_gin, corpus, train_in_process  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("clean_gin")


def test_shipped_gin_config_parses():
    experiment = gin_experiment.parse_config(["sparse_transformer/local_text.gin"], ["Experiment.train_steps = 7"])
    assert experiment.dataset == "local_text" and experiment.train_steps == 7
    model = experiment.model(vocabulary_size=256)
    assert isinstance(model, SparseTransformerLM) and model.num_layers == 4
    assert model.preset["stride"] ** 2 == experiment.sequence_length
    attention = model.blocks[0].attention
    assert isinstance(attention, SparseAttention) and attention.pattern == "fixed"
    assert model.position_axes == (32, 32)


@pytest.mark.slow
def test_trains_and_evaluates_from_gin(corpus, tmp_path):
    text_dir, data_dir = corpus
    params = [
        "Experiment.model = @sparse_transformer.SparseTransformerLM", "Experiment.sequence_length = 32",
        "Experiment.batch_size = 2", "Experiment.train_steps = 3", "Experiment.log_every = 1",
        "Experiment.checkpoint_every = 3", "Experiment.jit_compile = False", f"Experiment.data_dir = {data_dir!r}",
        f"Experiment.data_options = {{'local_text_dir': {text_dir!r}}}",
        "SparseTransformerLM.num_layers = 2", "SparseTransformerLM.hidden_dim = 16",
        "SparseTransformerLM.num_heads = 2", "SparseTransformerLM.attention_schedule = 'fixed,b'",
        "SparseTransformerLM.stride = 8", "SparseTransformerLM.summary = 2", "SparseTransformerLM.max_length = 32",
        "SparseTransformerLM.remat = True",
    ]
    model, _ = train_in_process(params, tmp_path / "model")
    assert [block.attention.pattern for block in model.blocks] == ["fixed", "local"]
    train.run([], params, str(tmp_path / "model"), "eval")
    with open(os.path.join(tmp_path, "model", "eval_results.json")) as f:
        results = json.load(f)
    # The zero-initialised output head starts at exactly 8 bits/byte (uniform over 256 bytes); three steps on
    # byte statistics bring it below (7.93 measured): the model trained, not merely ran.
    assert np.isfinite(results["bits_per_byte"]) and results["bits_per_byte"] < 7.98, results
