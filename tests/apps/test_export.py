"""apps.export: the SavedModel's signatures (logits, score, generate) served at any shape, also in a process
that cannot import this project; `saved_model_cli`; the command line with its `.keras` file."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from apps import sample
from apps.export import export_saved_model
from common.layers import SelfAttention
from common.models import DecoderLM
from tests.apps.train_helpers import (  # noqa: F401  (fixtures)
    assert_one_line_error, clean_gin, corpus, run_module, trained)

VOCAB, MAX_LENGTH = 13, 64
GENERATE_ARGUMENTS = dict(max_new_tokens=6, temperature=0.9, top_k=5, top_p=0.95, seed=4, stop_id=-1)


def _model():
    keras.utils.set_random_seed(0)
    attention = SelfAttention(num_heads=2, key_dim=4, kernel="local", kernel_options={"block_size": 4},
                              max_relative_position=3)
    return DecoderLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=8, attention=attention, ffn_dim=16,
                     position_axes=(MAX_LENGTH,))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, export_dir) of a tiny local-attention LM; export builds the model itself."""
    model = _model()
    assert not model.built
    export_dir = str(tmp_path_factory.mktemp("export") / "saved_model")
    export_saved_model(model, export_dir)
    return model, export_dir


def _generate_in_process(model, prompt, **arguments):
    arguments = dict(GENERATE_ARGUMENTS, **arguments)
    return tf.function(sample.generate)(
        model, tf.constant(prompt, tf.int32), *(tf.constant(arguments[name]) for name in (
            "max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop_id"))).numpy()


def _signature_arguments(prompt, **arguments):
    values = dict(GENERATE_ARGUMENTS, **arguments)
    return dict(prompt_ids=tf.constant(prompt, tf.int32), max_new_tokens=tf.constant(values["max_new_tokens"]),
                temperature=tf.constant(values["temperature"], tf.float32), top_k=tf.constant(values["top_k"]),
                top_p=tf.constant(values["top_p"], tf.float32), seed=tf.constant(values["seed"]),
                stop_id=tf.constant(values["stop_id"]))


def test_signatures_have_named_inputs_and_outputs(exported):
    loaded = tf.saved_model.load(exported[1])
    assert set(loaded.signatures) == {"serving_default", "score", "generate"}
    expected = {
        "serving_default": ({"token_ids": ([None, None], tf.int32)}, {"logits"}),
        "score": ({"token_ids": ([None, None], tf.int32)}, {"log_probabilities", "bits_per_token"}),
        "generate": ({"prompt_ids": ([None, None], tf.int32), "max_new_tokens": ([], tf.int32),
                      "temperature": ([], tf.float32), "top_k": ([], tf.int32), "top_p": ([], tf.float32),
                      "seed": ([], tf.int32), "stop_id": ([], tf.int32)}, {"generated_ids"}),
    }
    for name, (inputs, outputs) in expected.items():
        args, kwargs = loaded.signatures[name].structured_input_signature
        assert args == ()
        assert {key: (spec.shape.as_list(), spec.dtype) for key, spec in kwargs.items()} == inputs
        assert set(loaded.signatures[name].structured_outputs) == outputs


def test_logits_and_scores_at_any_shape(exported):
    model, export_dir = exported
    loaded = tf.saved_model.load(export_dir)
    rng = np.random.default_rng(1)
    for batch, length in [(1, 5), (3, 37), (2, 8)]:  # lengths inside, across and exactly at block boundaries
        ids = rng.integers(0, VOCAB, size=(batch, length)).astype(np.int32)
        expected = np.asarray(model(ids, training=False))
        logits = loaded.signatures["serving_default"](token_ids=tf.constant(ids))["logits"].numpy()
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
        scores = loaded.signatures["score"](token_ids=tf.constant(ids))
        log_probabilities = expected - np.log(np.exp(expected).sum(-1, keepdims=True))
        per_token = np.take_along_axis(log_probabilities, ids[..., None], axis=-1)[..., 0]
        np.testing.assert_allclose(scores["log_probabilities"].numpy(), per_token, atol=1e-5)
        np.testing.assert_allclose(scores["bits_per_token"].numpy(), -per_token.mean(1) / np.log(2), atol=1e-5)


def test_generate_signature_is_the_in_process_sampler(exported):
    model, export_dir = exported
    generate = tf.saved_model.load(export_dir).signatures["generate"]
    for prompt in ([[1, 2, 3]], [[4, 5, 6, 7, 8, 9, 10, 11, 12], [0, 1, 2, 3, 4, 5, 6, 7, 8]]):
        got = generate(**_signature_arguments(prompt))["generated_ids"].numpy()
        np.testing.assert_array_equal(got, _generate_in_process(model, prompt))
        again = generate(**_signature_arguments(prompt))["generated_ids"].numpy()
        np.testing.assert_array_equal(again, got)
        assert got.shape == (len(prompt), GENERATE_ARGUMENTS["max_new_tokens"])


@pytest.mark.parametrize("arguments,message", [
    (dict(prompt=np.zeros((1, 0), np.int32)), "empty"),
    (dict(max_new_tokens=MAX_LENGTH), "maximum length"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(max_new_tokens=-2), "max_new_tokens"),
    (dict(prompt=[[1, VOCAB]]), "outside the vocabulary"),
])
def test_generate_signature_names_bad_requests(exported, arguments, message):
    generate = tf.saved_model.load(exported[1]).signatures["generate"]
    prompt = arguments.pop("prompt", [[1, 2]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        generate(**_signature_arguments(prompt, **arguments))


@pytest.mark.parametrize("ids,message", [([[1, 2, VOCAB]], "outside the vocabulary"),
                                         ([[-1]], "outside the vocabulary"),
                                         (np.zeros((1, MAX_LENGTH + 1), np.int32), "maximum length")])
def test_logit_and_score_signatures_name_bad_ids(exported, ids, message):
    loaded = tf.saved_model.load(exported[1])
    for name in ("serving_default", "score"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.signatures[name](token_ids=tf.constant(ids, tf.int32))


def test_a_request_that_is_not_batch_by_length_is_refused_naming_the_input(exported):
    loaded = tf.saved_model.load(exported[1])
    for name in ("serving_default", "score"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"token_ids \[3\] is not compatible with "
                                                                 r"expected shape \[\?,\?\]"):
            loaded.signatures[name](token_ids=tf.constant([1, 2, 3], tf.int32))
    arguments = _signature_arguments([[1, 2]])
    arguments["prompt_ids"] = tf.constant([1, 2], tf.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"prompt_ids \[2\] is not compatible"):
        loaded.signatures["generate"](**arguments)


def test_export_of_a_trained_model_keeps_its_weights(tmp_path):
    model = _model()
    ids = np.random.default_rng(2).integers(0, VOCAB, size=(2, 6)).astype(np.int32)
    model(ids)
    before = np.asarray(model(ids))
    for weight in model.trainable_weights:  # new weights after building, as after training
        weight.assign(weight + 0.1 * np.random.default_rng(3).standard_normal(weight.shape).astype(np.float32))
    after = np.asarray(model(ids))
    assert not np.allclose(before, after, atol=1e-4)
    export_dir = str(tmp_path / "exported")
    export_saved_model(model, export_dir)
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    np.testing.assert_allclose(serve(token_ids=tf.constant(ids))["logits"].numpy(), after, rtol=1e-5, atol=1e-5)


def _family_model(name):
    if name.startswith("combiner"):
        from combiner.model import CombinerLM

        return CombinerLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, num_heads=2, max_length=MAX_LENGTH,
                          variant=name.split("_")[1], segment_length=4)
    from sparse_transformer.model import SparseTransformerLM

    return SparseTransformerLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, num_heads=2,
                               attention_schedule="local|strided", stride=4, summary=1, max_length=MAX_LENGTH)


@pytest.mark.parametrize("name", ["combiner_fixed", "combiner_logsparse", "combiner_axial", "combiner_mixture",
                                  "sparse_strided"])
def test_every_family_serves_logits_and_generation_at_any_batch_size(name, tmp_path):
    """The caches of each family's decoder are built for a batch size known only when serving."""
    keras.utils.set_random_seed(1)
    model = _family_model(name)
    model(np.zeros((1, 8), np.int32))
    for weight in model.trainable_weights:  # away from the presets' zero-initialised output layers
        weight.assign(np.random.default_rng(2).normal(0.0, 0.3, weight.shape).astype(np.float32))
    export_saved_model(model, str(tmp_path / name))
    loaded = tf.saved_model.load(str(tmp_path / name))
    ids = np.random.default_rng(3).integers(0, VOCAB, (3, 11)).astype(np.int32)
    np.testing.assert_allclose(loaded.signatures["serving_default"](token_ids=tf.constant(ids))["logits"].numpy(),
                               np.asarray(model(ids)), atol=1e-4)
    for prompt in (ids[:1, :1], ids[:, :6]):
        got = loaded.signatures["generate"](**_signature_arguments(prompt, temperature=0.0))["generated_ids"]
        np.testing.assert_array_equal(got.numpy(), _generate_in_process(model, prompt, temperature=0.0))


# --- serving without this project ---------------------------------------------------------------------------

# Run by a fresh interpreter: it refuses to import this project's packages, loads the SavedModel with
# TensorFlow alone, calls every signature at the shapes given, and prints the results as JSON.
SERVE_WITHOUT_THE_PROJECT = textwrap.dedent('''
    import importlib.abc, json, sys

    class RefuseProject(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("common", "routing_transformer", "sparse_transformer", "combiner"):
                raise ImportError(f"{name} must not be needed to serve")

    sys.meta_path.insert(0, RefuseProject())
    try:
        import common  # noqa: F401
        sys.exit("the project is importable; the check would prove nothing")
    except ImportError:
        pass
    import tensorflow as tf

    request = json.load(open(sys.argv[2]))
    loaded = tf.saved_model.load(sys.argv[1])
    centroids = lambda: [v.numpy().tolist() for v in loaded.variables if "centroids" in v.name]
    before = centroids()
    results = {"logits": [], "scores": [], "generated": []}
    for ids in request["token_ids"]:
        ids = tf.constant(ids, tf.int32)
        results["logits"].append(loaded.signatures["serving_default"](token_ids=ids)["logits"].numpy().tolist())
        results["scores"].append(loaded.signatures["score"](token_ids=ids)["bits_per_token"].numpy().tolist())
    for prompt in request["prompts"]:
        arguments = {key: tf.constant(value, tf.float32 if key in ("temperature", "top_p") else tf.int32)
                     for key, value in request["generate"].items()}
        out = loaded.signatures["generate"](prompt_ids=tf.constant(prompt, tf.int32), **arguments)
        results["generated"].append(out["generated_ids"].numpy().tolist())
    results["centroids_before"], results["centroids_after"] = before, centroids()
    print(json.dumps(results))
''')


def serve_in_a_fresh_process(export_dir, request, tmp_path):
    """Runs SERVE_WITHOUT_THE_PROJECT outside the repository; returns its results."""
    script, request_file = tmp_path / "serve.py", tmp_path / "request.json"
    script.write_text(SERVE_WITHOUT_THE_PROJECT)
    request_file.write_text(json.dumps(request))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(script), export_dir, str(request_file)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_served_by_tensorflow_alone_at_any_shape(exported, tmp_path):
    model, export_dir = exported
    rng = np.random.default_rng(5)
    token_ids = [rng.integers(0, VOCAB, size=shape).tolist() for shape in [(1, 3), (4, 21), (2, 9)]]
    prompts = [[[3, 1, 4]], [[1, 5, 9, 2, 6], [5, 3, 5, 8, 9]]]
    results = serve_in_a_fresh_process(export_dir, dict(token_ids=token_ids, prompts=prompts,
                                                        generate=GENERATE_ARGUMENTS), tmp_path)
    for ids, logits in zip(token_ids, results["logits"]):
        np.testing.assert_allclose(np.array(logits), np.asarray(model(np.array(ids, np.int32))), atol=1e-5)
    for prompt, generated in zip(prompts, results["generated"]):
        np.testing.assert_array_equal(np.array(generated), _generate_in_process(model, prompt))


def test_saved_model_cli_lists_and_runs_the_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", exported[1], "--all"], capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    for name in ("serving_default", "score", "generate", "prompt_ids", "top_p", "generated_ids",
                 "bits_per_token"):
        assert name in shown.stdout
    inputs = "prompt_ids=[[1,2,3]];max_new_tokens=4;temperature=0.0;top_k=0;top_p=1.0;seed=0;stop_id=-1"
    run = subprocess.run([cli, "run", "--dir", exported[1], "--tag_set", "serve", "--signature_def", "generate",
                          "--input_exprs", inputs], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    greedy = _generate_in_process(exported[0], [[1, 2, 3]], max_new_tokens=4, temperature=0.0)
    assert "generated_ids" in run.stdout
    assert " ".join(str(t) for t in greedy[0]) in " ".join(run.stdout.replace("[", " ").replace("]", " ").split())


GOOD_GENERATE_INPUTS = "prompt_ids=[[1,2,3]];max_new_tokens=4;temperature=0.0;top_k=0;seed=0;stop_id=-1"


@pytest.mark.parametrize("signature, inputs, named", [
    ("serving_default", "token_ids=[[1,2,99]]", "token_ids_has_ids_outside_the_vocabulary_0_13"),
    ("score", f"token_ids=[[{','.join(['1'] * (MAX_LENGTH + 1))}]]", "token_ids_is_longer_than_the_model_s_maximum_length_64"),
    ("serving_default", "token_ids=[1,2,3]", "Cannot feed value of shape (3,) for Tensor serving_default_token_ids"),
    ("generate", GOOD_GENERATE_INPUTS + ";top_p=1.5", "top_p_must_be_in_0_1"),
    ("generate", GOOD_GENERATE_INPUTS.replace("[[1,2,3]]", "[[1,-2,3]]") + ";top_p=1.0",
     "prompt_ids_has_ids_outside_the_vocabulary"),
])
def test_saved_model_cli_ends_a_bad_request_with_a_line_naming_the_problem(exported, signature, inputs, named):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    run = subprocess.run([cli, "run", "--dir", exported[1], "--tag_set", "serve", "--signature_def", signature,
                          "--input_exprs", inputs], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    last_line = run.stderr.strip().splitlines()[-1]
    assert named in last_line, run.stderr[-2000:]


# --- the command line, on a trained Routing Transformer -----------------------------------------------------

def test_cli_exports_a_trained_model_that_serves_and_reloads(trained, tmp_path):
    import routing_transformer  # noqa: F401  (registers the classes that model.keras names)

    model_dir, model, experiment = trained
    out = tmp_path / "out"
    result = run_module("apps.export", f"--model_dir={model_dir}", f"--export_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "saved_model" / "saved_model.pb").exists() and (out / "model.keras").exists()

    ids = np.random.default_rng(6).integers(0, 256, size=(2, experiment.sequence_length)).astype(np.int32)
    reloaded = keras.models.load_model(str(out / "model.keras"))
    np.testing.assert_allclose(np.asarray(reloaded(ids)), np.asarray(model(ids)), atol=1e-5)
    pairs = [(w, r) for w, r in zip(model.weights, reloaded.weights) if "centroids" in w.path]
    assert pairs and len(model.weights) == len(reloaded.weights)
    for weight, restored in pairs:  # by position: paths carry per-process model name suffixes
        np.testing.assert_array_equal(np.asarray(restored), np.asarray(weight))

    results = serve_in_a_fresh_process(str(out / "saved_model"), dict(
        token_ids=[ids.tolist()], prompts=[[[100, 101, 102]]],
        generate=dict(GENERATE_ARGUMENTS, max_new_tokens=5)), tmp_path)
    np.testing.assert_allclose(np.array(results["logits"][0]), np.asarray(model(ids)), atol=1e-5)
    np.testing.assert_array_equal(np.array(results["generated"][0]),
                                  _generate_in_process(model, [[100, 101, 102]], max_new_tokens=5))
    assert results["centroids_before"] and results["centroids_after"] == results["centroids_before"]


def test_cli_without_a_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "untrained").mkdir()
    line = assert_one_line_error(run_module("apps.export", f"--model_dir={tmp_path / 'untrained'}",
                                            f"--export_dir={tmp_path / 'out'}"))
    assert "untrained" in line
