"""What every benchmark shares: fresh worker processes run under time and memory guards, CPU and memory
readings, whether other processes disturbed a timing, the machine's description, and atomic result files.

A benchmark runs each measurement in a fresh process (`run_guarded`): the worker prints one line starting with
`RESULT_TAG` followed by its numbers as JSON; the driver kills it past a timeout or an RSS limit and records
why. Times measured while other processes used more than `BUSY_SHARE` of the machine's CPU are marked as
disturbed (`others_cpu_share`, `disturbed`).
"""

import importlib.metadata
import json
import math
import os
import platform
import resource
import subprocess
import tempfile
import time

import psutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
RESULT_TAG = "BENCHMARK_RESULT "  # starts the worker's one result line on stdout
MIB, GIB = 2**20, 2**30
BUSY_SHARE = 0.10  # times measured while other processes used more of the machine's CPU are "disturbed"


def process_cpu_s():
    """CPU seconds this process (all its threads) has used so far."""
    own = os.times()
    return own.user + own.system


def cpu_seconds():
    """(machine busy CPU-seconds, this process's CPU-seconds, machine total CPU-seconds) so far (Linux)."""
    with open("/proc/stat") as f:
        jiffies = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(jiffies) - jiffies[3] - jiffies[4]) / tick, process_cpu_s(), sum(jiffies) / tick


def others_cpu_share(before, after):
    """Share of the machine's CPU that other processes used between two `cpu_seconds()` readings."""
    busy, own, total = (b - a for a, b in zip(before, after))
    return max(0.0, busy - own) / total if total > 0 else 0.0


def timed_call(fn, *args):
    """(wall seconds, CPU seconds of this process) of fn(*args); eager TF returns once outputs are computed."""
    start, start_cpu = time.perf_counter(), process_cpu_s()
    fn(*args)
    return time.perf_counter() - start, process_cpu_s() - start_cpu


def rss_bytes():
    """Current resident set size of this process."""
    return psutil.Process().memory_info().rss


def reset_peak_rss():
    """Resets this process's peak-RSS mark (Linux >= 4.0), so that the peak counts from now; False if not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    """Peak resident set size of this process since the last `reset_peak_rss`: /proc's VmHWM.

    ru_maxrss is only the fallback: it also keeps the peak of the image before exec (a worker started from a
    large process begins with that process's peak), which no reset clears."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def start_peak_rss():
    """Resets the peak-RSS mark; returns (the bytes a step's peak is measured from, whether it was reset).

    After a reset the mark starts at the RSS of that moment, so peak minus this baseline is never negative.
    The RSS read a moment before the reset can be higher (another thread freed memory in between, as the
    previous model of a process that measures several is collected), which made memory come out negative."""
    was_reset = reset_peak_rss()
    return (peak_rss_bytes() if was_reset else rss_bytes()), was_reset


def wait_guarded(proc, timeout_s, memory_limit):
    """Waits for `proc`; kills it past `timeout_s` or `memory_limit` bytes of RSS. Returns why, or None."""
    start = time.monotonic()
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        reason = None
        if time.monotonic() - start > timeout_s:
            reason = "timeout"
        else:
            try:
                if watched.memory_info().rss > memory_limit:
                    reason = f"killed (RSS > {memory_limit / GIB:.1f} GiB)"
            except psutil.NoSuchProcess:
                pass
        if reason:
            proc.kill()
            proc.wait()
            return reason
        time.sleep(0.1)
    return None


def last_line(text, prefix=""):
    """The last non-empty line of `text` that starts with `prefix`, or ""."""
    lines = [line for line in text.splitlines() if line.strip() and line.startswith(prefix)]
    return lines[-1] if lines else ""


def run_guarded(cmd, timeout_s, memory_limit):
    """Runs a worker command in a fresh process under `wait_guarded`; returns the numbers of its tagged result
    line, or a status saying why there are none (killed, out of memory, error)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=REPO_ROOT)
        killed = wait_guarded(proc, timeout_s, memory_limit)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if killed:
        return {"status": killed}
    if proc.returncode < 0:
        return {"status": f"killed by signal {-proc.returncode} (out of memory)"}
    result = last_line(stdout, RESULT_TAG)
    if proc.returncode != 0 or not result:
        why = last_line(stderr) or f"exit code {proc.returncode}"
        return {"status": "error", "error": why[-300:]}
    return {"status": "ok", **json.loads(result[len(RESULT_TAG):])}


def wait_for_idle(max_s):
    """Waits up to `max_s` seconds for a second in which other processes use < BUSY_SHARE of the CPU."""
    deadline = time.monotonic() + max_s
    while True:
        before = cpu_seconds()
        time.sleep(1)
        if others_cpu_share(before, cpu_seconds()) < BUSY_SHARE or time.monotonic() >= deadline:
            return


def disturbed(record):
    """True when other processes used more than BUSY_SHARE of the CPU during the record's timed calls (False
    for a record that did not measure it)."""
    return record.get("others_cpu_share", 0.0) > BUSY_SHARE and record["status"] == "ok"


def ratio(baseline, record, key):
    """baseline[key] / record[key] when both were measured, else None."""
    if baseline is None or baseline["status"] != "ok" or record["status"] != "ok" or record[key] <= 0:
        return None
    return baseline[key] / record[key]


def growth_exponent(records, key):
    """Least-squares slope of log(value) against log(length) over the measured records; None if < 2."""
    points = [(math.log(r["length"]), math.log(r[key])) for r in records if r["status"] == "ok" and r[key] > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else None


def _cpuinfo(field):
    """The first value of `field` in /proc/cpuinfo, or None where there is none (or no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(field)), None)
    except OSError:
        return None


def cpu_model():
    """CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"


def vector_extension():
    """The widest of AVX-512 / AVX2 the CPU has (from /proc/cpuinfo): hosts that differ in it differ in speed by
    up to 2x, and TensorFlow's default for its oneDNN kernels follows it."""
    flags = _cpuinfo("flags")
    if flags is None:
        return "unknown vector extension"
    flags = flags.split()
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"


def machine():
    """The machine and software versions, as one line."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {p: importlib.metadata.version(p) for p in ("tensorflow", "keras")}
    onednn = {"1": "on", "0": "off"}.get(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "TensorFlow's default")
    return (f"{cpu_model()} ({vector_extension()}), {cpus} cores, {psutil.virtual_memory().total / GIB:.1f} GiB RAM, "
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
            f"TensorFlow {versions['tensorflow']} (oneDNN kernels {onednn}), Keras {versions['keras']}")


def load_average():
    """1-minute load average: above ~0.5 before a run, other processes share the CPU and inflate times."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def write_atomically(path, text):
    """Writes `text` to `path` through a .tmp file, so a crash never leaves half a file."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def comma_list(cast):
    return lambda text: [cast(item) for item in text.split(",") if item.strip()]
