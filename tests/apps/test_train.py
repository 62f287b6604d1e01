"""apps.train: checkpoints, operative config, summaries, exact resume, eval metrics, one-line errors.

Everything trains a tiny Routing Transformer (2 layers, width 32, one routing layer) on the tiny local corpus
of the data tests, in-process through `apps.train`; only the command-line error tests start
`python -m apps.train` in a subprocess.
"""

import json
import math
import os
import shutil

import gin
import numpy as np
import pytest
import tensorflow as tf

from apps import data, errors, evaluation, gin_experiment, steps, train
from common.schedules import WarmupCosine
from tests.apps.train_helpers import (  # noqa: F401  (fixtures)
    assert_one_line_error, assert_same_arrays, checkpoint_values, clean_gin, corpus, file_digests,
    gin_param_args, read_scalars, run_module, tiny_params, trained, train_in_process, variables_by_position)

pytestmark = pytest.mark.usefixtures("clean_gin")

TRAIN_SCALARS = {"loss", "bits_per_token", "learning_rate", "tokens_per_second"}
ROUTING_SCALARS = {"routing/layer_1/largest_cluster_fraction", "routing/layer_1/smallest_cluster_fraction"}


def _checkpoint_names(model_dir):
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
    assert state is not None, f"no checkpoint index in {model_dir}/checkpoints"
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths]


# --- training -----------------------------------------------------------------------------------------------

def test_training_writes_checkpoints_operative_config_and_summaries(corpus, tmp_path, capsys):
    model_dir = str(tmp_path / "model")
    params = tiny_params(corpus, train_steps=4, checkpoint_every=2, log_every=1,
                         learning_rate="@common.WarmupCosine()")
    params += ["WarmupCosine.peak = 0.001", "WarmupCosine.warmup_steps = 2", "WarmupCosine.total_steps = 4",
               "WarmupCosine.final_fraction = 0.1"]
    assert train.run([], params, model_dir, "train") is None

    out = capsys.readouterr().out
    for step in range(1, 5):
        assert f"step {step}/4" in out
    assert "bits/token" in out and "tokens/s" in out

    # Checkpoints at 2 and 4, each holding its own step and optimizer iteration count.
    assert _checkpoint_names(model_dir) == ["ckpt-2", "ckpt-4"]
    for step in (2, 4):
        values = checkpoint_values(os.path.join(model_dir, "checkpoints", f"ckpt-{step}"))
        assert int(values["step/.ATTRIBUTES/VARIABLE_VALUE"]) == step
        assert int(values["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == step

    with open(os.path.join(model_dir, "operative_config.gin")) as f:
        operative = f.read()
    for binding in ("RoutingTransformerLM.num_layers = 2", "RoutingTransformerLM.hidden_dim = 32",
                    "RoutingTransformerLM.routing = 'causal'", "Experiment.train_steps = 4",
                    "Experiment.sequence_length = 32", "WarmupCosine.warmup_steps = 2"):
        assert binding in operative, binding

    train_dir = os.path.join(model_dir, "train")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(train_dir))
    scalars = read_scalars(train_dir)
    assert TRAIN_SCALARS | ROUTING_SCALARS <= set(scalars), sorted(scalars)
    assert not any(tag.startswith("routing/layer_0/") for tag in scalars)  # layer 0 has local heads only
    schedule = WarmupCosine(peak=1e-3, warmup_steps=2, total_steps=4, final_fraction=0.1)
    for step in range(1, 5):
        bits = scalars["bits_per_token"][step]
        assert abs(bits - 8.0) < 1.0  # an untrained byte model is near log2(256) bits
        assert scalars["loss"][step] >= bits * math.log(2.0) - 1e-4  # cross-entropy plus auxiliary losses
        assert scalars["tokens_per_second"][step] > 0
        assert scalars["learning_rate"][step] == pytest.approx(float(schedule(step)), rel=1e-6)
        largest = scalars["routing/layer_1/largest_cluster_fraction"][step]
        smallest = scalars["routing/layer_1/smallest_cluster_fraction"][step]
        assert 0.0 <= smallest <= 0.5 <= largest <= 1.0  # two clusters


def test_training_with_the_default_jit_compile_matches_eager_steps(corpus, tmp_path):
    """`Experiment.jit_compile = True` (the default) trains the same steps as without XLA. Dropout is off:
    XLA draws other dropout masks than eager TensorFlow from the same seed."""
    losses = {}
    for jit in (True, False):
        model_dir = str(tmp_path / f"jit_{jit}")
        params = tiny_params(corpus, train_steps=2, checkpoint_every=2, model={"dropout": 0.0})
        if jit:  # leave the trainer's default
            params = [p for p in params if not p.startswith("Experiment.jit_compile")]
        train.run([], params, model_dir, "train")
        assert _checkpoint_names(model_dir) == ["ckpt-2"]
        with open(os.path.join(model_dir, "operative_config.gin")) as f:
            assert f"Experiment.jit_compile = {jit}" in f.read()
        losses[jit] = read_scalars(os.path.join(model_dir, "train"))["loss"]
    assert losses[True].keys() == losses[False].keys() == {1, 2}
    for step in (1, 2):
        assert losses[True][step] == pytest.approx(losses[False][step], rel=1e-4)


def test_resume_continues_exactly_like_an_uninterrupted_run(corpus, tmp_path, capsys):
    """Step, optimizer state, data position, non-trainable state (k-means) and dropout RNG are all restored."""
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    model_a, _ = train_in_process(tiny_params(corpus, train_steps=6, checkpoint_every=3), straight)

    gin.clear_config()
    train_in_process(tiny_params(corpus, train_steps=3, checkpoint_every=3), interrupted)
    assert _checkpoint_names(interrupted) == ["ckpt-3"]
    capsys.readouterr()
    gin.clear_config()
    model_b, _ = train_in_process(tiny_params(corpus, train_steps=6, checkpoint_every=3), interrupted)
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 3" in out, out
    assert "step 1/6" not in out and "step 4/6" in out and "step 6/6" in out

    final_a = checkpoint_values(os.path.join(straight, "checkpoints", "ckpt-6"))
    final_b = checkpoint_values(os.path.join(interrupted, "checkpoints", "ckpt-6"))
    for name in ("step/.ATTRIBUTES/VARIABLE_VALUE", "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"):
        assert int(final_a[name]) == int(final_b[name]) == 6, name
    assert any(name.startswith("optimizer/_variables/") for name in final_a)  # Adam's moments are saved
    assert_same_arrays(variables_by_position(model_a), variables_by_position(model_b), atol=1e-5,
                       what="model variables after 6 straight steps vs 3 + resumed 3")
    assert_same_arrays(final_a, final_b, atol=1e-5, what="checkpoint at step 6 (model, optimizer, step)")


# --- evaluation ---------------------------------------------------------------------------------------------

def test_eval_writes_results_and_summaries(trained, corpus):
    model_dir, _, _ = trained
    results = train.run([], tiny_params(corpus), model_dir, "eval")
    with open(os.path.join(model_dir, "eval_results.json")) as f:
        written = json.load(f)
    assert written.keys() == results.keys()
    assert written["step"] == 4 and written["split"] == "validation"
    text_dir, data_dir = corpus
    units = data.evaluation_units("local_text", "validation", data_dir=data_dir, local_text_dir=text_dir)
    assert written["tokens"] == units["tokens"] > 0
    assert 0 < written["bits_per_token"] < 16
    assert written["bits_per_byte"] == pytest.approx(written["bits_per_token"], rel=1e-12)  # 1 byte = 1 token
    assert written["perplexity"] == pytest.approx(2.0 ** written["bits_per_token"], rel=1e-9)
    assert "word_perplexity" not in written  # bytes, not subwords
    for key, value in results.items():
        assert written[key] == pytest.approx(value)

    scalars = read_scalars(os.path.join(model_dir, "eval"))
    for name in ("bits_per_token", "perplexity", "bits_per_byte", "tokens"):
        assert scalars[name] == {4: pytest.approx(written[name], rel=1e-6)}, name


def test_eval_scores_the_trained_weights(trained, corpus):
    """eval's bits per token are those of the model that training ended with, on the same tokens."""
    model_dir, model, experiment = trained
    results = train.run([], tiny_params(corpus), model_dir, "eval")
    total_nats = tokens = 0.0
    for batch in gin_experiment.make_dataset(experiment, "validation", training=False):
        _, metrics = steps.loss_and_metrics(model, batch, training=False)
        total_nats += float(metrics["total_nats"])
        tokens += float(metrics["tokens"])
    assert results["tokens"] == tokens
    assert results["bits_per_token"] == pytest.approx(total_nats / tokens / math.log(2.0), rel=1e-5)


def test_eval_on_a_few_batches_reports_only_per_token_metrics(trained, corpus, capsys):
    model_dir, _, experiment = trained
    results = train.run([], tiny_params(corpus, eval_batches=1), model_dir, "eval")
    assert "eval 1/1 batches" in capsys.readouterr().out  # progress, as training shows it
    first = next(iter(gin_experiment.make_dataset(experiment, "validation", training=False)))
    assert results["tokens"] == float(np.sum(first["weights"]))
    scored = evaluation.evaluated_bytes(gin_experiment.parse_config([], tiny_params(corpus, eval_batches=1)))
    weights = first["weights"].numpy() > 0
    assert len(scored) == results["tokens"] and scored == bytes(first["token_ids"].numpy()[weights].tolist())
    assert "bits_per_byte" not in results  # needs the whole split
    assert results["perplexity"] == pytest.approx(2.0 ** results["bits_per_token"], rel=1e-9)


def test_eval_without_a_checkpoint_is_a_user_error(corpus, tmp_path):
    model_dir = str(tmp_path / "empty")
    with pytest.raises(errors.UserError, match="no checkpoint"):
        train.run([], tiny_params(corpus), model_dir, "eval")
    assert not os.path.exists(os.path.join(model_dir, "eval_results.json"))


# --- bad input on the command line --------------------------------------------------------------------------

def test_a_macro_of_the_wrong_type_is_refused_naming_the_field(tmp_path):
    result = run_module("apps.train", "--gin_file=quickstart.gin", "--gin_param=TRAIN_STEPS = 'abc'",
                        f"--model_dir={tmp_path / 'm'}")
    line = assert_one_line_error(result)
    # The macro binds WarmupCosine.total_steps and Experiment.train_steps: the first one built is named.
    assert "WarmupCosine.total_steps = 'abc': expected an integer" in line, line
    assert not os.path.exists(tmp_path / "m" / "checkpoints")


@pytest.mark.parametrize("gin_file, binding, named", [
    ("combiner/cpu_small.gin", "CombinerLM.variant = 'axail'", "unknown Combiner variant 'axail'"),
    ("sparse_transformer/cpu_small.gin", "SparseTransformerLM.attention_schedule = 'fixd'",
     "unknown attention pattern 'fixd'"),
])
def test_cli_a_bad_model_argument_is_named_not_blamed_on_the_length(gin_file, binding, named, tmp_path):
    result = run_module("apps.train", f"--gin_file={gin_file}", f"--gin_param={binding}",
                        f"--model_dir={tmp_path / 'm'}")
    line = assert_one_line_error(result)
    assert named in line and "sequence_length" not in line, line


def test_cli_missing_gin_file(tmp_path):
    result = run_module("apps.train", "--gin_file=no/such_config.gin", f"--model_dir={tmp_path / 'm'}")
    line = assert_one_line_error(result)
    assert "no/such_config.gin" in line


@pytest.mark.parametrize("binding, named", [("Experiment.no_such_field = 1", "no_such_field"),
                                            ("Nope.x = 1", "Nope")])
def test_cli_unknown_binding_is_named(binding, named, tmp_path):
    result = run_module("apps.train", "--gin_file=quickstart.gin", f"--gin_param={binding}",
                        f"--model_dir={tmp_path / 'm'}")
    line = assert_one_line_error(result)
    assert named in line
    assert not os.path.exists(tmp_path / "m" / "checkpoints")


def test_cli_sequence_length_the_attention_cannot_take(corpus, tmp_path):
    params = tiny_params(corpus, sequence_length=64, model={"routing": "balanced", "window": 16,
                                                            "require_coverage": True})  # 2 clusters x 16 < 64
    result = run_module("apps.train", *gin_param_args(params), f"--model_dir={tmp_path / 'm'}")
    line = assert_one_line_error(result)
    assert "sequence_length=64" in line
    assert "window" in line, f"the error should name the constraint (clusters x window vs length): {line}"
    assert not os.path.exists(tmp_path / "m" / "checkpoints")


def test_cli_checkpoint_of_another_model_shape_is_refused_and_kept(trained, corpus, tmp_path):
    model_dir = str(tmp_path / "m")
    shutil.copytree(trained[0], model_dir)  # hidden_dim 32, checkpoints at steps 2 and 4
    before = file_digests(os.path.join(model_dir, "checkpoints"))
    with open(os.path.join(model_dir, "operative_config.gin"), "rb") as f:
        config_before = f.read()
    assert "ckpt-4.index" in before

    params = tiny_params(corpus, train_steps=6, checkpoint_every=1, model={"hidden_dim": 48})
    result = run_module("apps.train", *gin_param_args(params), f"--model_dir={model_dir}")
    line = assert_one_line_error(result)
    assert "ckpt-4" in line and ("different" in line or "shape" in line)
    assert file_digests(os.path.join(model_dir, "checkpoints")) == before  # nothing overwritten or added
    with open(os.path.join(model_dir, "operative_config.gin"), "rb") as f:
        assert f.read() == config_before


def test_cli_unprepared_dataset_says_what_to_do(tmp_path):
    empty = tmp_path / "empty_data_dir"
    empty.mkdir()
    result = run_module("apps.train", "--gin_file=quickstart.gin", "--gin_param=Experiment.dataset = 'enwik8'",
                        f"--gin_param=Experiment.data_dir = {str(empty)!r}", f"--model_dir={tmp_path / 'm'}")
    line = assert_one_line_error(result)
    assert "enwik8" in line
    assert "download" in line and "enwik8.zip" in line and str(empty) in line
    assert not os.path.exists(tmp_path / "m" / "checkpoints")


def test_cli_data_option_of_another_dataset_is_a_one_line_error(corpus, tmp_path):
    """A data option that does not fit the dataset (local_text_dir left in place when switching to enwik8) is
    bad input too: one line, no traceback."""
    params = tiny_params(corpus, dataset="enwik8", data_dir=str(tmp_path / "empty_data_dir"))
    result = run_module("apps.train", *gin_param_args(params), f"--model_dir={tmp_path / 'm'}")
    line = assert_one_line_error(result)
    assert "local_text_dir" in line


def test_eval_every_evaluates_during_training(corpus, clean_gin, tmp_path):
    params = tiny_params(corpus, train_steps=4, checkpoint_every=4, eval_every=2, eval_batches=1)
    train_in_process(params, str(tmp_path))
    scalars = read_scalars(str(tmp_path / "eval"))
    assert sorted(scalars["bits_per_token"]) == [2]  # every 2 steps, the last step left to --mode=eval
    assert 0.0 < scalars["bits_per_token"][2] < 16.0


def test_in_loop_evaluations_share_one_compiled_step_that_reads_the_current_weights(corpus, clean_gin, tmp_path,
                                                                                      monkeypatch):
    made, make = [], steps.make_eval_step

    def counted(*args):
        made.append(make(*args))
        return made[-1]

    monkeypatch.setattr(steps, "make_eval_step", counted)
    params = tiny_params(corpus, train_steps=4, checkpoint_every=4, eval_every=1, eval_batches=1)
    train_in_process(params, str(tmp_path))
    bits = read_scalars(str(tmp_path / "eval"))["bits_per_token"]
    assert sorted(bits) == [1, 2, 3] and len(made) == 1  # three evaluations, one step traced
    assert len(set(bits.values())) == 3  # each scored the weights of its step


def test_train_seconds_stops_with_a_checkpoint_and_resume_gets_a_new_budget(corpus, tmp_path, capsys):
    # A budget smaller than one step: each run trains exactly one step, checkpoints it and says why it stopped.
    params = tiny_params(corpus, train_steps=100, checkpoint_every=50, train_seconds=1e-6)
    train_in_process(params, str(tmp_path))
    assert _checkpoint_names(str(tmp_path)) == ["ckpt-1"]
    assert "stopped at step 1: train_seconds = 1e-06 spent" in capsys.readouterr().out
    train_in_process(params, str(tmp_path))
    assert _checkpoint_names(str(tmp_path)) == ["ckpt-1", "ckpt-2"]
    assert "resumed from" in capsys.readouterr().out
