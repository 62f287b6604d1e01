"""Speed and memory of each attention kernel against dense attention: forward + backward, on CPU.

Run from the repository root:

    python -m benchmarks.attention                          # every kernel of KERNELS, lengths 1k..64k
    python -m benchmarks.attention --lengths=1024,2048 --kernels=local --repeats=3 --jit

The step is the gradient of sum(out) with respect to q, k and v, inside a tf.function (XLA with --jit), at
batch 1, 8 heads, head dim 64, float32, causal. Dense attention is always measured too: it is the baseline.

Each (kernel, length) runs in a fresh subprocess, because TensorFlow keeps no memory statistics on CPU:
memory is the process's peak RSS during the step minus its RSS right before the first call (after the
TensorFlow import and the input creation), so it includes tracing / compilation. Time is the median of
--repeats calls after --warmup (default 1) warm-up calls. A kernel that declares a memory estimate is skipped
when it cannot fit, and every subprocess is killed past --timeout seconds or --memory_limit_gib of RSS.

On a shared machine other processes inflate the times: each measurement waits (up to --idle_wait seconds) for
an idle CPU, is repeated (up to --retries times) when other processes used more than 10% of the CPU during its
timed calls, and is marked with "*" in the table if it stays disturbed.

Output: a Markdown report on stdout and in benchmarks/results/attention.md (attention_jit.md with --jit), the
raw numbers in the .json next to it.

To add a kernel: register it with `common.attention.register_kernel` (families do it when their attention
module is imported) and add one line to KERNELS.
"""

import argparse
import datetime
import importlib
import json
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple, Optional, Union

import psutil

from benchmarks.harness import (BUSY_SHARE, GIB, MIB, RESULT_TAG, RESULTS_DIR, comma_list, cpu_seconds, disturbed,
                                growth_exponent, load_average, machine, others_cpu_share, peak_rss_bytes, ratio,
                                run_guarded, start_peak_rss, timed_call, wait_for_idle,
                                write_atomically)

BATCH, HEADS, HEAD_DIM = 1, 8, 64  # HEADS is the default of --heads
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
BASELINE = "dense"


class Kernel(NamedTuple):
    """One benchmarked kernel.

    kernel: a name registered in `common.attention`, "module:name" for a name that `module` registers when
      imported (a family's attention module), or the kernel callable itself.
    options: keyword arguments of every call, besides `causal=True`.
    memory_bytes: optional `(length, heads) -> bytes` estimate of the step's need; the run skips what cannot
      fit.
    """
    kernel: Union[str, Callable]
    options: dict
    memory_bytes: Optional[Callable[[int, int], float]] = None


def dense_memory_bytes(length, heads):
    """Dense attention's logits and softmax tensors, forward + backward: ~4 float32 [batch, heads, L, L]."""
    return 4 * BATCH * heads * length * length * 4


def routing_with_random_centroids(q, k, v, *, causal, window, routing):
    """Routing attention with shared queries/keys and length / window unit-norm random centroids (as a freshly
    initialised routing layer has): the kernel alone, without a layer to own centroids."""
    import tensorflow as tf

    from routing_transformer.attention import routing_attention

    del k  # the original's shared queries and keys
    heads, length, dim = q.shape[1], q.shape[2], q.shape[3]
    centroids = tf.math.l2_normalize(tf.random.stateless_normal([heads, max(1, length // window), dim], seed=(7, 0)),
                                     axis=-1)
    return routing_attention(q, None, v, centroids=centroids, window=window, causal=causal, routing=routing)[0]


KERNELS = {
    "dense": Kernel("dense", {}, dense_memory_bytes),
    "local": Kernel("local", {"block_size": 256, "look_back": 1}),  # the Routing Transformer's local heads
    # Every head routed, window 256 (clusters = length / 256): the original's balanced top-k clusters and the
    # strictly causal assignment.
    "routing_balanced": Kernel(routing_with_random_centroids, {"window": 256, "routing": "balanced"}),
    "routing_causal": Kernel(routing_with_random_centroids, {"window": 256, "routing": "causal"}),
    "combiner_fixed": Kernel("combiner.attention:combiner", {"variant": "fixed", "segment_length": 128}),
    "combiner_logsparse": Kernel("combiner.attention:combiner", {"variant": "logsparse"}),
    "combiner_axial": Kernel("combiner.attention:combiner", {"variant": "axial", "segment_length": 128}),
    "combiner_mixture": Kernel("combiner.attention:combiner", {"variant": "mixture", "segment_length": 128}),
    # The Sparse Transformer's patterns at the paper's stride 128: the merged strided head (images) and the
    # fixed pattern with the enwik8 summary of 32 and the smallest of the paper, 8.
    "sparse_strided": Kernel("sparse_transformer.attention:sparse", {"pattern": "local+strided", "stride": 128}),
    "sparse_fixed": Kernel("sparse_transformer.attention:sparse",
                           {"pattern": "fixed", "stride": 128, "summary": 32, "num_summary_patterns": 2}),
    "sparse_fixed_c8": Kernel("sparse_transformer.attention:sparse",
                              {"pattern": "fixed", "stride": 128, "summary": 8, "num_summary_patterns": 2}),
}


# ----------------------------------------------------------------------------------------------------------
# Worker: one kernel at one length, in its own process.


def kernel_entry(name):
    """The KERNELS entry for `name`; a registered kernel that is not in the table runs with no options."""
    return KERNELS.get(name, Kernel(name, {}))


def resolve_kernel(kernel):
    """The callable of a `Kernel.kernel` field (a callable, a registered name or "module:name")."""
    if callable(kernel):
        return kernel
    module, _, name = kernel.rpartition(":")
    if module:
        importlib.import_module(module)
    from common.attention import get_kernel
    return get_kernel(name)


def make_step(kernel, options, jit):
    """A tf.function returning the gradients of sum(kernel(q, k, v)) with respect to q, k and v."""
    import tensorflow as tf

    def step(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = kernel(q, k, v, causal=True, **options)
            if isinstance(out, (tuple, list)):  # stateful kernels return (out, auxiliary outputs...)
                out = out[0]
            loss = tf.reduce_sum(out)
        return tape.gradient(loss, [q, k, v])

    return tf.function(step, jit_compile=True) if jit else tf.function(step)


def measure(name, length, repeats, warmup, jit, heads=HEADS):
    """Times one kernel at one length and measures the memory its step needs; returns the numbers."""
    import tensorflow as tf

    entry = kernel_entry(name)
    step = make_step(resolve_kernel(entry.kernel), entry.options, jit)
    shape = (BATCH, heads, length, HEAD_DIM)
    q, k, v = (tf.random.stateless_normal(shape, seed=(i, 0)) for i in range(3))
    baseline, peak_was_reset = start_peak_rss()
    warmups = [timed_call(step, q, k, v) for _ in range(warmup)]  # the first call traces / compiles
    cpu_before = cpu_seconds()
    timed = [timed_call(step, q, k, v) for _ in range(repeats)]
    cpu_after = cpu_seconds()
    peak = peak_rss_bytes()
    return {
        "time_ms": 1000 * statistics.median(wall for wall, _ in timed),
        "times_ms": [1000 * wall for wall, _ in timed],
        "cpu_times_ms": [1000 * cpu for _, cpu in timed],  # CPU time of all threads: robust to other load
        "warmup_ms": [1000 * wall for wall, _ in warmups],
        "memory_mib": (peak - baseline) / MIB,
        "baseline_rss_mib": baseline / MIB,
        "peak_rss_mib": peak / MIB,
        "peak_was_reset": peak_was_reset,
        "others_cpu_share": others_cpu_share(cpu_before, cpu_after),  # during the timed calls
        "tensorflow": tf.__version__,
    }


def worker_main(args):
    """Entry point of the hidden --worker mode: prints one tagged JSON line."""
    result = measure(args.worker, args.lengths[0], args.repeats, args.warmup, args.jit, args.heads)
    print(RESULT_TAG + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------------
# Driver: one subprocess per (kernel, length), then the report.


def run_worker(name, length, args):
    """Measures one (kernel, length) in a fresh process; returns its numbers or a status saying why not."""
    cmd = [sys.executable, "-m", "benchmarks.attention", f"--worker={name}", f"--lengths={length}",
           f"--repeats={args.repeats}", f"--warmup={args.warmup}", f"--heads={args.heads}"] + (
               ["--jit"] if args.jit else [])
    return run_guarded(cmd, args.timeout, args.memory_limit_gib * GIB)


def measure_least_disturbed(name, length, args):
    """Runs the worker when the CPU is idle, again up to --retries times while other processes disturbed its
    timing (a shared machine); keeps the attempt during which they used the least CPU."""
    wait_for_idle(args.idle_wait)
    best, attempts = run_worker(name, length, args), 1
    while disturbed(best) and attempts <= args.retries:
        print(f"{name:>10} L={length:<6} other processes used {100 * best['others_cpu_share']:.0f}% CPU; "
              "retrying", file=sys.stderr, flush=True)
        wait_for_idle(args.idle_wait)
        again, attempts = run_worker(name, length, args), attempts + 1
        if again["status"] == "ok" and again["others_cpu_share"] < best["others_cpu_share"]:
            best = again
    best["attempts"] = attempts
    return best


def benchmark(name, length, args):
    """One record: skipped when the kernel's estimate does not fit, measured otherwise."""
    record = {"kernel": name, "length": length}
    estimate = kernel_entry(name).memory_bytes
    need = estimate(length, args.heads) if estimate else None
    if need is not None:
        record["estimate_gib"] = need / GIB
    start = time.monotonic()
    if need is not None and need > args.memory_limit_gib * GIB:
        record["status"] = f"skipped (needs ~{need / GIB:.1f} GiB)"
    else:
        record.update(measure_least_disturbed(name, length, args))
    record["wall_s"] = time.monotonic() - start
    return record


def describe(record):
    """Short text of one record for the progress lines."""
    if record["status"] != "ok":
        return record["status"] + (f": {record['error']}" if "error" in record else "")
    return (f"{record['time_ms']:.1f} ms, {record['memory_mib']:.0f} MiB, other processes "
            f"{100 * record['others_cpu_share']:.0f}% CPU")


# ----------------------------------------------------------------------------------------------------------
# Analysis and report.


def find(records, name, length):
    return next((r for r in records if r["kernel"] == name and r["length"] == length), None)


def check_ratio(records, name, length, minimum, key, label):
    """Acceptance: dense's `key` over `name`'s at `length` tokens is at least `minimum`; the status line."""
    record, baseline = find(records, name, length), find(records, BASELINE, length)
    value = ratio(baseline, record, key) if record else None
    if value is None:
        missing = [r["kernel"] + " " + r["status"] for r in (baseline, record) if r and r["status"] != "ok"]
        return label, f"NOT MEASURED ({', '.join(missing) or 'not in this run'})"
    caveat = ""
    if key == "time_ms" and (disturbed(record) or disturbed(baseline)):
        caveat = ", times disturbed by other processes"
    return label, f"{'PASS' if value >= minimum else 'FAIL'} ({value:.1f}x{caveat})"


def check_speedup(records, name="local", length=8192, minimum=4.0):
    """Acceptance: `name` at `length` tokens at least `minimum` times faster than dense."""
    return check_ratio(records, name, length, minimum, "time_ms",
                       f"{name} attention at {length} tokens at least {minimum:g}x faster than dense")


def check_memory_saving(records, name, length, minimum):
    """Acceptance: `name` at `length` tokens needs at least `minimum` times less memory than dense."""
    return check_ratio(records, name, length, minimum, "memory_mib",
                       f"{name} attention at {length} tokens needs at least {minimum:g}x less memory than dense")


def check_linear_memory(records, name="local", maximum=1.2):
    """Acceptance: the memory of `name` grows linearly with length (fitted exponent <= `maximum`)."""
    label = f"{name} memory grows linearly (exponent <= {maximum:g})"
    value = growth_exponent([r for r in records if r["kernel"] == name], "memory_mib")
    if value is None:
        return label, "NOT MEASURED (fewer than 2 lengths measured)"
    return label, f"{'PASS' if value <= maximum else 'FAIL'} (exponent {value:.2f})"


# The issues' targets, per kernel: local (foundation) and the Sparse Transformer's strided and fixed patterns.
ACCEPTANCE = {
    "local": (check_speedup, check_linear_memory),
    **{name: (lambda records, name=name: check_speedup(records, name, 16384, 8.0),
              lambda records, name=name: check_memory_saving(records, name, 16384, 10.0))
       for name in ("sparse_strided", "sparse_fixed", "sparse_fixed_c8")},
}


def cell(record, key, fmt):
    """A table cell: the formatted number, or the record's status when it was not measured."""
    if record is None:
        return ""
    if record["status"] != "ok":
        return record["status"]
    return fmt.format(record[key]) + ("*" if key == "time_ms" and disturbed(record) else "")


def results_table(records, names, lengths):
    """Markdown table: per length, each kernel's time and memory, then dense/kernel ratios."""
    others = [n for n in names if n != BASELINE]
    header = ["length"]
    for name in names:
        header += [f"{name} time (ms)", f"{name} memory (MiB)"]
    for name in others:
        header += [f"dense/{name} time", f"dense/{name} memory"]
    rows = [header, ["---:"] * len(header)]
    for length in lengths:
        row = [str(length)]
        for name in names:
            record = find(records, name, length)
            row += [cell(record, "time_ms", "{:.1f}"), cell(record, "memory_mib", "{:.0f}")]
        baseline = find(records, BASELINE, length)
        for name in others:
            for key in ("time_ms", "memory_mib"):
                value = ratio(baseline, find(records, name, length), key)
                row.append("n/a" if value is None else f"{value:.1f}x")
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def exponent_table(records, names):
    """Markdown table of each kernel's fitted growth exponents of time and memory vs length."""
    rows = [["kernel", "time exponent", "memory exponent", "lengths fitted"], ["---", "---:", "---:", "---"]]
    for name in names:
        own = [r for r in records if r["kernel"] == name]
        fitted = ",".join(str(r["length"]) for r in own if r["status"] == "ok")
        exps = [growth_exponent(own, key) for key in ("time_ms", "memory_mib")]
        rows.append([name] + ["n/a" if e is None else f"{e:.2f}" for e in exps] + [fitted or "none"])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def report(records, names, args, wall_s, loads):
    """The whole Markdown report."""
    kernels = "; ".join(f"{n} {kernel_entry(n).options or '{}'}" for n in names)
    step = "tf.function(jit_compile=True)" if args.jit else "tf.function"
    checks = [check(records) for name in names for check in ACCEPTANCE.get(name, ())]
    lines = [
        f"# Attention kernels: forward + backward{' (XLA)' if args.jit else ''}",
        "",
        f"- Machine: {machine()}",
        f"- Step: gradient of sum(out) w.r.t. q, k, v in {step}; batch {BATCH}, {args.heads} heads, head dim "
        f"{HEAD_DIM}, float32, causal.",
        f"- Kernels: {kernels}",
        f"- Time: median of {args.repeats} calls after {args.warmup} warm-up call(s). Memory: peak RSS of a "
        "fresh process during the step minus its RSS right before the first call (includes tracing and "
        "compilation).",
        f"- Run: `python -m benchmarks.attention {' '.join(sys.argv[1:])}`, "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}, wall time {wall_s:.0f} s, 1-minute load "
        f"average {loads[0]:.2f} before and {loads[1]:.2f} after.",
        "",
        results_table(records, names, args.lengths),
        "",
    ]
    busy = [f"{r['kernel']} {r['length']}: {100 * r['others_cpu_share']:.0f}%" for r in records if disturbed(r)]
    if busy:
        lines += [f"\\* Other processes used more than {100 * BUSY_SHARE:.0f}% of the machine's CPU during "
                  f"these timed calls, so their times are inflated ({', '.join(busy)}).", ""]
    lines += [
        "Growth with length (least-squares slope in log-log space):",
        "",
        exponent_table(records, names),
        "",
        "Acceptance:",
        "",
    ]
    lines += [f"- {label}: **{status}**" for label, status in checks]
    return "\n".join(lines) + "\n"


def save(text, records, names, args, wall_s, loads):
    """Writes the report (.md) and the raw numbers (.json) under benchmarks/results/."""
    stem = args.output or os.path.join(RESULTS_DIR, "attention_jit" if args.jit else "attention")
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    raw = {
        "machine": machine(),
        "settings": {"batch": BATCH, "heads": args.heads, "head_dim": HEAD_DIM, "causal": True, "jit": args.jit,
                     "repeats": args.repeats, "warmup": args.warmup, "lengths": args.lengths,
                     "retries": args.retries, "idle_wait_s": args.idle_wait, "timeout_s": args.timeout,
                     "memory_limit_gib": args.memory_limit_gib},
        "kernels": {n: kernel_entry(n).options for n in names},
        "wall_s": wall_s,
        "load_average_before_after": loads,
        "records": records,
    }
    write_atomically(stem + ".md", text)
    write_atomically(stem + ".json", json.dumps(raw, indent=1) + "\n")
    return stem


# ----------------------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv=None):
    default_kernels = ",".join(n for n in KERNELS if n != BASELINE)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=comma_list(int), default=list(DEFAULT_LENGTHS),
                        help="comma-separated sequence lengths (default: %(default)s)")
    parser.add_argument("--kernels", type=comma_list(str), default=comma_list(str)(default_kernels),
                        help="comma-separated kernels compared to dense: names of KERNELS or registered "
                             f"kernel names (default: {default_kernels})")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first; the first traces/compiles")
    parser.add_argument("--jit", action="store_true", help="run the step under tf.function(jit_compile=True)")
    parser.add_argument("--heads", type=int, default=HEADS, help="attention heads (default: %(default)s)")
    parser.add_argument("--retries", type=int, default=1,
                        help="re-measure a (kernel, length) up to this many times while other processes used "
                             "more than 10%% of the CPU during its timed calls; the least disturbed is kept")
    parser.add_argument("--idle_wait", type=float, default=15,
                        help="seconds to wait, before each measurement, for other processes to leave the CPU "
                             "idle")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per (kernel, length)")
    parser.add_argument("--memory_limit_gib", type=float,
                        default=round(0.85 * psutil.virtual_memory().available / GIB, 1),
                        help="skip kernels estimated to need more, kill subprocesses whose RSS exceeds it "
                             "(default: 85%% of the memory available now, %(default)s)")
    parser.add_argument("--output", default=None,
                        help="path stem of the .md/.json results (default: benchmarks/results/attention, "
                             "attention_jit with --jit)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1 or args.retries < 0:
        parser.error("--repeats and --warmup must be >= 1, --retries >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    names = [BASELINE] + [n for n in dict.fromkeys(args.kernels) if n != BASELINE]
    loads = [load_average()]
    start = time.monotonic()
    records = []
    for length in args.lengths:
        for name in names:
            records.append(benchmark(name, length, args))
            print(f"{name:>10} L={length:<6} {describe(records[-1])}  [{records[-1]['wall_s']:.0f} s]",
                  file=sys.stderr, flush=True)
    wall_s = time.monotonic() - start
    loads.append(load_average())
    text = report(records, names, args, wall_s, loads)
    print(text)
    stem = save(text, records, names, args, wall_s, loads)
    print(f"Wrote {stem}.md and {stem}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
