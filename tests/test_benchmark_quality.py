"""benchmarks.quality: the training run it configures, the causal routing model, and one tiny end-to-end run whose
xz figure and held-out bytes are checked against the validation split read directly."""

import json
import lzma
import math

import gin
import pytest

from benchmarks import quality
from common import data, train
from tests.common.train_helpers import clean_gin, corpus  # noqa: F401  (fixtures)


def test_training_run_is_bounded_by_the_budget_with_a_constant_rate_after_warm_up(clean_gin):
    args = quality.parse_args(["--budget_s=42", "--eval_windows=3", "--jit=off"])
    experiment = train.parse_config([], quality.experiment_params("sparse", False, args))
    assert experiment.train_seconds == 42 and experiment.eval_batches == 3 and not experiment.jit_compile
    assert experiment.sequence_length == 4096 and experiment.batch_size == 1
    assert gin.query_parameter("build_model.config") == "sparse"
    rates = [float(experiment.learning_rate(step)) for step in (25, 50, 10_000, 10_000_000)]
    assert rates[0] == pytest.approx(5e-4) and rates[1:] == pytest.approx([1e-3] * 3)


def test_routing_model_assigns_causally_and_the_vocabulary_is_checked():
    model = quality.build_model(256, config="routing", length=512)
    routing_layers = [layer for layer in model._flatten_layers() if hasattr(layer, "routing_heads")]
    assert routing_layers and all(layer.routing == "causal" for layer in routing_layers)
    with pytest.raises(ValueError, match="byte vocabulary"):
        quality.build_model(300, config="dense", length=512)


def test_unknown_config_is_refused():
    with pytest.raises(SystemExit):
        quality.parse_args(["--configs=dense,flash"])


@pytest.mark.slow
def test_tiny_run_scores_the_validation_bytes_against_xz(corpus, tmp_path):  # noqa: F811
    text_dir, data_dir = corpus
    stem = str(tmp_path / "quality")
    quality.main(["--configs=combiner", "--jit=off", "--budget_s=3", "--eval_windows=4", "--sequence_length=256",
                  f"--data_dir={data_dir}", f"--local_text_dir={text_dir}", f"--output={stem}"])
    with open(stem + ".json") as f:
        results = json.load(f)
    (record,) = results["records"]
    assert record["status"] == "ok", record
    assert record["steps"] >= 1 and record["curve"] and 0 < record["bits_per_byte"] < 16
    # The held-out bytes are the validation files, in order, unpadded; xz -9 is computed on exactly them.
    validation = b"".join(bytes(t) for t in data.raw_split("local_text", "validation", data_dir=data_dir,
                                                            local_text_dir=text_dir).as_numpy_iterator())
    held_out = validation[:4 * 256]
    assert record["held_out_bytes"] == record["held_out_tokens"] == len(held_out)
    assert math.isclose(results["xz_bits_per_byte"], 8 * len(lzma.compress(held_out, preset=9)) / len(held_out))
    with open(stem + ".md") as f:
        assert f"| combiner | off | {record['steps']:,} |" in f.read()
