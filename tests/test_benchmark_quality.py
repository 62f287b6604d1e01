"""benchmarks.quality: the runs it configures from the cpu_small presets, the held-out bytes they share, the
target line of its report, and one tiny end-to-end run whose xz figure and held-out bytes are checked against
the test split read directly."""

import dataclasses
import json
import lzma
import math

import gin
import pytest

from benchmarks import quality
from apps import data, gin_experiment
from tests.apps.train_helpers import clean_gin, corpus  # noqa: F401  (fixtures)


def preset_experiment(config, args):
    return gin_experiment.parse_config([quality.PRESETS[config]], quality.experiment_params(config, None, args))


def test_run_is_the_preset_bounded_by_the_budget_and_scored_on_the_test_split(clean_gin):
    args = quality.parse_args(["--budget_s=42", "--held_out_bytes=3000", "--jit=off"])
    experiment = gin_experiment.parse_config([quality.PRESETS["sparse"]],
                                             quality.experiment_params("sparse", False, args))
    assert experiment.train_seconds == 42 and not experiment.jit_compile
    assert experiment.eval_split == "test"
    assert experiment.train_steps == experiment.learning_rate.total_steps > 100
    # The learning rate warms up, peaks, and decays over the preset's steps.
    peak = gin.query_parameter("WarmupCosine.peak")
    warmup = gin.query_parameter("WarmupCosine.warmup_steps")
    rates = [float(experiment.learning_rate(step)) for step in (warmup // 2, warmup, experiment.train_steps)]
    assert rates[0] == pytest.approx(peak / 2) and rates[1] == pytest.approx(peak) and rates[2] < peak / 5


def test_held_out_bytes_are_whole_batches_of_any_preset_s_windows(clean_gin):
    args = quality.parse_args([])
    experiment = preset_experiment("sparse", args)
    length = experiment.sequence_length
    assert quality.eval_stride(experiment, args) == length // 2
    for batch in (8, 4):
        scored = quality.scoring_held_out_bytes(dataclasses.replace(experiment, batch_size=batch), 262144)
        assert scored.eval_batches * batch * length == 262144 and scored.eval_stride is None
        # Windows every half window: the first scores all its bytes, each later one half; whole batches of them
        # cover the bytes, and one batch fewer would not.
        strided = quality.scoring_held_out_bytes(dataclasses.replace(experiment, batch_size=batch), 262144,
                                                 length // 2)
        assert strided.eval_stride == length // 2
        covered = lambda batches: length + (batches * batch - 1) * length // 2  # noqa: E731
        assert covered(strided.eval_batches) >= 262144 > covered(strided.eval_batches - 1)
    assert quality.scoring_held_out_bytes(experiment, 1).eval_batches == 1  # at least one whole batch
    assert quality.scoring_held_out_bytes(experiment, 1, 64).eval_batches == 1


@pytest.mark.parametrize("config", sorted(quality.PRESETS))
def test_every_preset_trains_on_the_same_windows_and_batches(clean_gin, config):
    """The held-out bytes are batches of the preset's windows: equal shapes make every run score the same bytes."""
    args = quality.parse_args([])
    experiment = preset_experiment(config, args)
    reference = preset_experiment("routing", args)
    assert (experiment.sequence_length, experiment.batch_size) == (reference.sequence_length, reference.batch_size)
    assert experiment.jit_compile and experiment.dataset == "local_text"


def test_routing_preset_assigns_causally_and_dense_attends_everywhere(clean_gin):
    args = quality.parse_args([])
    model = preset_experiment("routing", args).model(vocabulary_size=256)
    routing_layers = [layer for layer in model._flatten_layers() if getattr(layer, "routing_heads", 0)]
    assert routing_layers and all(layer.routing == "causal" for layer in routing_layers)
    dense = preset_experiment("dense", args).model(vocabulary_size=256)
    assert set(dense.preset["attention_schedule"].split(",")) == {"a"}
    assert preset_experiment("sparse", args).model(vocabulary_size=256).preset["attention_schedule"] == "fixed"


def test_target_line_names_the_best_family_and_the_gap():
    records = [{"config": c, "status": "ok", "bits_per_byte": b} for c, b in
               (("routing", 1.75), ("sparse", 1.90), ("combiner", 1.80), ("dense", 3.0))]
    (line,) = quality.target_lines(records, xz=1.70)
    assert "**met** (routing, 1.750)" in line and "**yes** (worst sparse, +8.6%)" in line
    assert line.endswith("below xz -9: **no**.")
    records[0]["bits_per_byte"] = 1.60
    (line,) = quality.target_lines(records, xz=1.70)
    assert "10% of the best: **no**" in line and line.endswith("below xz -9: **yes**.")


@pytest.mark.parametrize("argv, message", [(["--configs=dense,flash"], "unknown config"),
                                           (["--budget_s=0"], "--budget_s must be > 0"),
                                           (["--eval_stride=0"], "--eval_stride must be >= 1")])
def test_bad_arguments_are_refused_in_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        quality.parse_args(argv)
    assert exit_info.value.code != 0 and message in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_scores_the_test_bytes_against_xz(corpus, tmp_path):  # noqa: F811
    text_dir, data_dir = corpus
    stem = str(tmp_path / "quality")
    quality.main(["--configs=combiner", "--jit=off", "--budget_s=3", "--held_out_bytes=1024", "--idle_wait=0",
                  "--gin_param=Experiment.batch_size = 2", "--gin_param=Experiment.log_every = 1",
                  f"--data_dir={data_dir}", f"--local_text_dir={text_dir}", f"--output={stem}"])
    with open(stem + ".json") as f:
        results = json.load(f)
    (record,) = results["records"]
    assert record["status"] == "ok", record
    assert record["steps"] >= 1 and record["curve"] and 0 < record["bits_per_byte"] < 16
    assert record["preset"] == "combiner/cpu_small.gin" and record["jit"] is False and record["parameters"] > 0
    assert results["matmul_flops_per_s"] > 0 and results["settings"]["eval_split"] == "test"
    # The held-out bytes are the test files, in order, unpadded; xz -9 is computed on exactly them.
    test_split = b"".join(bytes(t) for t in data.raw_split("local_text", "test", data_dir=data_dir,
                                                           local_text_dir=text_dir).as_numpy_iterator())
    # Windows every half window (128 bytes): 1,024 bytes need 1 + 6 windows, so 4 batches of 2: 256 + 7 x 128
    # (or the whole split, if shorter).
    assert record["eval_stride"] == record["sequence_length"] // 2 == 128
    held_out = test_split[:256 + 7 * 128]
    assert record["held_out_bytes"] == record["held_out_tokens"] == len(held_out)
    assert math.isclose(results["xz_bits_per_byte"], 8 * len(lzma.compress(held_out, preset=9)) / len(held_out))
    # From scratch: the same model on 2 batches of 2 consecutive windows.
    assert record["from_scratch_held_out_bytes"] == len(test_split[:1024])
    assert 0 < record["from_scratch_bits_per_byte"] < 16
    with open(stem + ".md") as f:
        report = f.read()
    assert 0.0 <= record["others_cpu_share"] <= 1.0
    mark = "*" if record["others_cpu_share"] > 0.10 else ""  # shared the CPU with other processes (pytest -n 2)
    assert (f"| combiner{mark} | off | {record['parameters']:,} | {record['steps']:,} |" in report
            and f" | {record['others_cpu_share']:.0%} | {record['bits_per_byte']:.3f} |" in report
            and report.rstrip().endswith(f"| {record['from_scratch_bits_per_byte']:.3f} |"))
    assert "- Target: the best family at most 1.80 bits/byte" in report
