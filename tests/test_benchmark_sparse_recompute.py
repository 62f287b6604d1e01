"""benchmarks.sparse_recompute: the recompute configurations train the same model as the stored one (equal
loss), and the report's PASS/FAIL target follows from the million-token records."""

import pytest

from benchmarks import sparse_recompute

LENGTH, CHUNK = 1024, 256


@pytest.fixture(scope="module")
def measured():
    return {config: sparse_recompute.measure(config, LENGTH, CHUNK) for config in sparse_recompute.CONFIGS}


def test_recompute_is_the_stored_model_in_chunks(measured):
    stored, recompute, bf16 = (measured[c] for c in sparse_recompute.CONFIGS)
    assert stored["parameters"] == recompute["parameters"] == bf16["parameters"]
    assert stored["stride"] == sparse_recompute.stride_for(LENGTH) == 32
    assert recompute["loss"] == pytest.approx(stored["loss"], rel=1e-5)
    assert bf16["loss"] == pytest.approx(stored["loss"], rel=2e-2)  # bfloat16 activations
    assert all(m["time_s"] > 0 and m["memory_mib"] >= 0 for m in measured.values())


def test_report_passes_only_the_configurations_that_finished_a_million_tokens():
    args = sparse_recompute.parse_args(["--lengths=1048576", "--memory_limit_gib=20"])
    records = {"stored:1048576": {"status": "skipped (needs ~60 GiB)"},
               "recompute:1048576": {"status": "error", "error": "out of memory"},
               "recompute_bf16:1048576": {"status": "ok", "time_s": 120.0, "memory_mib": 9216.0}}
    text = sparse_recompute.report(records, args, wall_s=1.0)
    assert "- recompute: **FAIL** (error)" in text
    assert "- recompute_bf16: **PASS** (120 s, 9.0 GiB)" in text
    assert "| 1,048,576 | 1024 | skipped (needs ~60 GiB) | skipped (needs ~60 GiB) | error | error |" in text


def test_unknown_configuration_is_refused():
    with pytest.raises(SystemExit):
        sparse_recompute.parse_args(["--configs=stored,chunked"])
