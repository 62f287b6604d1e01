"""benchmarks.small_models: every family's step at a tiny shape in fresh processes, the tokens/s it reports,
the comparison with the peer and its verdict, and one clear error for bad arguments."""

import argparse
import json

import pytest

from benchmarks import small_models


@pytest.mark.slow
def test_every_family_is_measured_at_a_tiny_shape(tmp_path):
    output = str(tmp_path / "small")
    small_models.main(["--shapes=128x2", "--configs=routing,sparse,combiner", "--jit=off", "--repeats=1",
                       f"--output={output}"])
    with open(output + ".json") as f:
        records = json.load(f)["records"]
    assert [(r["config"], r["status"], r["jit"]) for r in records] == [
        ("routing", "ok", False), ("sparse", "ok", False), ("combiner", "ok", False)]
    for r in records:
        assert r["tokens_per_second"] == pytest.approx(128 * 2 / r["time_ms"] * 1000)
    with open(output + ".md") as f:
        assert "| 128 x 2 | routing | off |" in f.read()


def _record(config, tokens_per_second, jit=None):
    return {"config": config, "length": 1024, "batch": 8, "jit": jit, "status": "ok", "time_ms": 1.0,
            "memory_mib": 1.0, "tokens_per_second": tokens_per_second}


@pytest.mark.parametrize("ours, verdict", [(15000, "1.50x the PyTorch package's tokens/s (best of jit on/off; "
                                                   "target >= 1.5x): **PASS**"),
                                           (14000, "1.40x the PyTorch package's tokens/s (best of jit on/off; "
                                                   "target >= 1.5x): **FAIL**")])
def test_the_verdict_takes_routing_s_best_jit_setting_against_the_peer(ours, verdict):
    records = [_record("routing", ours, True), _record("routing", 5000, False), _record("pytorch", 10000)]
    text = small_models.report(records, argparse.Namespace(shapes=[(1024, 8)], repeats=3), 60.0)
    assert verdict in text
    assert "| 1024 x 8 | routing | off | 1 | 5,000 | 1 | 0.50x |" in text


@pytest.mark.parametrize("argv, message", [(["--configs=routing,nope"], "unknown --configs ['nope']"),
                                           (["--shapes=100x2"], "multiple of 128"),
                                           (["--repeats=0"], "--repeats must be >= 1")])
def test_bad_arguments_are_one_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        small_models.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
