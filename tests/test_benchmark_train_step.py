"""benchmarks.train_step: arms run in fresh processes, alternating; the report and JSON hold each arm's bindings,
its median step time and its per-round ratio to the first arm; a malformed arm is one clear error."""

import json

import pytest

from benchmarks import train_step

pytestmark = pytest.mark.slow


def test_two_arms_are_measured_and_compared(tmp_path, capsys):
    output = str(tmp_path / "steps")
    train_step.main(["--gin_file=quickstart.gin", "--steps=2", "--warmup=1", "--rounds=1", "--arm", "plain=",
                     "--arm", "no jit=Experiment.jit_compile = False; Experiment.batch_size = 2",
                     f"--output={output}"])
    with open(output + ".json") as f:
        results = json.load(f)
    plain, no_jit = results["summary"]
    assert (plain["arm"], plain["bindings"], plain["ratio_to_first"]) == ("plain", [], 1.0)
    assert no_jit["bindings"] == ["Experiment.jit_compile = False", "Experiment.batch_size = 2"]
    assert [r["plain"]["jit_compile"] for r in results["rounds"]] == [True]  # the preset's default
    assert [r["no jit"]["jit_compile"] for r in results["rounds"]] == [False]
    assert no_jit["ratio_to_first"] == pytest.approx(no_jit["wall_ms"] / plain["wall_ms"])
    # Half the batch: the tokens per second follow the bindings, not the preset.
    assert no_jit["tokens_per_second"] == pytest.approx(2 * 256 / no_jit["wall_ms"] * 1000)
    with open(output + ".md") as f:
        assert "| no jit | Experiment.jit_compile = False; Experiment.batch_size = 2 |" in f.read()
    assert "round 1/1: plain" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--arm", "no name here"], "expected 'NAME=BINDING"),
    (["--arm", "a=", "--arm", "a=Experiment.seed = 1"], "its own NAME"),
    (["--rounds=0"], "--rounds must be >= 1"),
])
def test_bad_arguments_are_one_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_step.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
