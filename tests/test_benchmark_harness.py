"""benchmarks.harness (guarded worker processes, CPU shares, record analysis) and the kernel benchmark's
acceptance checks, on synthetic workers and records."""

import subprocess
import sys

import pytest

from benchmarks import attention as kernel_benchmark
from benchmarks import harness


def python(code):
    return [sys.executable, "-c", code]


def test_a_worker_s_tagged_line_is_its_result():
    code = f"print('noise'); print({harness.RESULT_TAG!r} + '{{\"time_ms\": 1.5}}'); print('after')"
    assert harness.run_guarded(python(code), 60, 4 * harness.GIB) == {"status": "ok", "time_ms": 1.5}


def test_a_failing_worker_reports_its_last_error_line():
    result = harness.run_guarded(python("import sys; sys.exit('bad length 7')"), 60, 4 * harness.GIB)
    assert result == {"status": "error", "error": "bad length 7"}
    silent = harness.run_guarded(python("print('no result')"), 60, 4 * harness.GIB)
    assert silent == {"status": "error", "error": "exit code 0"}


def test_a_worker_past_its_time_or_memory_is_killed():
    assert harness.run_guarded(python("import time; time.sleep(30)"), 0.5, 4 * harness.GIB) == {"status": "timeout"}
    hog = "import time; x = bytearray(400 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(30)"
    assert harness.run_guarded(python(hog), 25, 100 * harness.MIB) == {"status": "killed (RSS > 0.1 GiB)"}


def test_a_step_s_peak_memory_counts_from_the_reset_not_from_earlier_memory():
    # A worker started from this (pytest) process, so its pre-exec peak is pytest's; a 300 MiB peak freed
    # before the measurement; then 200 MiB freed (by "another thread") just before the reset. A step that
    # touches 64 MiB measures 64 MiB: not less (a baseline from an earlier peak) nor negative.
    code = """
from benchmarks import harness
def touch(n):
    x = bytearray(n)
    x[::4096] = b'1' * len(x[::4096])
    return x
earlier = touch(300 * harness.MIB)
del earlier
held = [touch(200 * harness.MIB)]
reset = harness.reset_peak_rss
def reset_after_a_free():
    held.clear()
    return reset()
harness.reset_peak_rss = reset_after_a_free
baseline, was_reset = harness.start_peak_rss()
step = touch(64 * harness.MIB)
print(was_reset, (harness.peak_rss_bytes() - baseline) / harness.MIB)
"""
    out = subprocess.run(python(code), capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True"
    assert 60 <= float(out[1]) <= 100


def test_others_cpu_share_is_what_other_processes_used():
    # (machine busy, this process, machine total) CPU-seconds
    assert harness.others_cpu_share((10.0, 2.0, 100.0), (16.0, 5.0, 120.0)) == pytest.approx(3.0 / 20.0)
    assert harness.others_cpu_share((10.0, 2.0, 100.0), (12.0, 5.0, 120.0)) == 0.0  # own time only
    assert harness.others_cpu_share((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == 0.0


def record(kernel, length, time_ms=1.0, memory_mib=1.0, status="ok", others=0.0):
    return dict(kernel=kernel, length=length, time_ms=time_ms, memory_mib=memory_mib, status=status,
                others_cpu_share=others)


def test_ratios_exponents_and_disturbance_of_records():
    assert harness.ratio(record("dense", 8, time_ms=12.0), record("local", 8, time_ms=3.0), "time_ms") == 4.0
    assert harness.ratio(record("dense", 8, status="timeout"), record("local", 8), "time_ms") is None
    quadratic = [record("dense", n, memory_mib=n * n / 7) for n in (1024, 2048, 4096)]
    assert harness.growth_exponent(quadratic, "memory_mib") == pytest.approx(2.0)
    assert harness.growth_exponent(quadratic[:1], "memory_mib") is None
    assert harness.disturbed(record("local", 8, others=harness.BUSY_SHARE + 0.01))
    assert not harness.disturbed(record("local", 8, others=harness.BUSY_SHARE))


def test_acceptance_checks_pass_fail_and_say_what_was_not_measured():
    records = [record("dense", 8192, time_ms=50.0), record("local", 8192, time_ms=10.0, others=0.5)]
    label, verdict = kernel_benchmark.check_speedup(records, "local", 8192, 4.0)
    assert label == "local attention at 8192 tokens at least 4x faster than dense"
    assert verdict == "PASS (5.0x, times disturbed by other processes)"
    assert kernel_benchmark.check_speedup(records, "local", 8192, 6.0)[1].startswith("FAIL (5.0x")
    records[0]["status"] = "timeout"
    assert kernel_benchmark.check_speedup(records, "local", 8192)[1] == "NOT MEASURED (dense timeout)"
    assert kernel_benchmark.check_speedup(records, "local", 4096)[1] == "NOT MEASURED (not in this run)"
    linear = [record("local", n, memory_mib=n / 3) for n in (1024, 4096)]
    assert kernel_benchmark.check_linear_memory(linear)[1] == "PASS (exponent 1.00)"
    quadratic = [record("local", n, memory_mib=n * n) for n in (1024, 4096)]
    assert kernel_benchmark.check_linear_memory(quadratic)[1] == "FAIL (exponent 2.00)"
