"""benchmarks.device_check under Keras' JAX backend on the CPU, at small lengths and width: every kernel and
family runs without TensorFlow, the report names the device and compares with dense, the budget leaves cases
unrun (reported as such), and the shell entry point fails in one line without its wheels."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = ("dense", "local", "routing_balanced", "routing_causal", "sparse_fixed", "sparse_strided",
           "combiner_axial", "combiner_mixture")


def run_check(tmp_path, *flags):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    stem = str(tmp_path / "device")
    process = subprocess.run([sys.executable, "-m", "benchmarks.device_check", f"--output={stem}", *flags],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return process, stem


@pytest.mark.slow
def test_every_kernel_and_family_runs_under_jax_without_tensorflow(tmp_path):
    process, stem = run_check(tmp_path, "--lengths=64,128", "--width=32", "--repeats=1")
    assert process.returncode == 0, process.stderr[-3000:]
    with open(stem + ".json") as f:
        results = json.load(f)
    records = {(r["case"], r["length"]): r for r in results["records"]}
    assert set(records) == {(case, length) for case in KERNELS + ("routing", "sparse", "combiner")
                            for length in (64, 128)}
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in records.values()), results["records"]
    assert all(0 < r["loss"] < 10 and r["tokens_per_s"] > 0 for r in records.values() if r["kind"] == "family")
    assert results["device"].startswith("CPU")
    with open(stem + ".md") as f:
        report = f.read()
    assert f"- Device: {results['device']};" in report
    rows = {line.split(" | ")[0].strip("| "): line for line in report.splitlines() if line.startswith("| ")}
    assert all("x dense" in rows[name] for name in KERNELS[1:]) and "x dense" not in rows["dense"]
    assert all("tokens/s, loss" in rows[name] for name in ("routing", "sparse", "combiner"))


def test_a_spent_budget_reports_the_cases_left(tmp_path):
    process, stem = run_check(tmp_path, "--lengths=64", "--families=", "--repeats=1", "--budget_s=0")
    assert process.returncode == 0, process.stderr[-3000:]
    with open(stem + ".json") as f:
        records = json.load(f)["records"]
    assert records[0]["status"] == "ok"  # the first case starts before any time is spent
    assert [r["status"] for r in records[1:]] == ["not run (budget spent)"] * (len(KERNELS) - 1)
    with open(stem + ".md") as f:
        assert "| local | not run (budget spent) |" in f.read()


def test_the_tensorflow_backend_is_refused_in_one_line(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    process = subprocess.run([sys.executable, "-m", "benchmarks.device_check", f"--output={tmp_path}/d"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode != 0
    assert process.stderr.strip().splitlines() == ["error: run with KERAS_BACKEND=jax (it is 'tensorflow')"]


def test_the_shell_entry_point_needs_its_wheels(tmp_path):
    """Without its wheels (benchmarks/device_wheels not made), the script stops with one line saying so."""
    (tmp_path / "no_wheels").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path), DEVICE_WHEELS=str(tmp_path / "no_wheels"))
    process = subprocess.run(["sh", os.path.join(ROOT, "benchmarks", "device_check.sh")], env=env,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode != 0
    assert process.stderr.strip().splitlines()[-1].startswith("error: could not install keras and gin-config")
