"""Sparse Transformer with recompute: one forward + backward pass of a small model at up to a million tokens.

    python -m benchmarks.sparse_recompute                       # lengths 65,536 .. 1,048,576
    python -m benchmarks.sparse_recompute --lengths=1048576 --configs=recompute

Model: `SparseTransformerLM`, 2 layers, d=128, 2 heads of 64, byte vocabulary, the released code's interleaved
schedule "b,bT" (local, then strided) with stride sqrt(length) rounded to a power of two, batch 1, float32.
Configurations:
  - stored: activations stored for the backward pass (remat off, attention in one piece);
  - recompute: `remat=True` (each block's attention and feed-forward recomputed in the backward pass), and
    `query_chunk_size` and `ffn_chunk_size` (attention and feed-forward computed in chunks of positions, each
    recomputed): the paper's recompute, made to fit a million tokens;
  - recompute_bf16: the same with `mixed_precision=True` (bfloat16 activations, float32 variables, softmax and
    logits), the paper's other memory saving.
Each (configuration, length) runs in a fresh process: memory is its peak RSS during the step minus its RSS
before it (model built, inputs created), time the wall time of one step after one warm-up (eager gradient
tape, so the backward pass frees each chunk before the next). A configuration estimated not to fit is skipped.
Output: benchmarks/results/sparse_recompute.md and .json.
"""

import argparse
import datetime
import json
import math
import os
import sys
import time

import psutil

from benchmarks.harness import (GIB, MIB, RESULT_TAG, RESULTS_DIR, machine, peak_rss_bytes, run_guarded,
                                  start_peak_rss, write_atomically)

LAYERS, HIDDEN, HEADS, VOCABULARY = 2, 128, 2, 256
CONFIGS = ("stored", "recompute", "recompute_bf16")
DEFAULT_LENGTHS = (16384, 65536, 262144, 1048576)


def stride_for(length):
    """sqrt(length) rounded up to a power of two: the paper's choice of l ~ sqrt(n)."""
    return 2 ** math.ceil(math.log2(math.sqrt(length)))


def memory_estimate(config, length, chunk):
    """Bytes the step needs, roughly: float32 logits, softmax and their gradients of the attention computed at
    once (local window 2 stride, strided length / stride keys), plus 16 [length, d] activations per layer kept
    when stored."""
    stride = stride_for(length)
    queries = length if config == "stored" else min(chunk, length)
    attention = 4 * 4 * HEADS * queries * max(2 * stride, length // stride)
    activations = 4 * length * HIDDEN * (16 * LAYERS if config == "stored" else 8)
    logits = 4 * 4 * length * VOCABULARY
    return attention + activations + logits


def build(config, length, chunk):
    import keras
    from sparse_transformer import SparseTransformerLM

    keras.utils.set_random_seed(0)
    recompute = config.startswith("recompute")
    model = SparseTransformerLM(vocabulary_size=VOCABULARY, num_layers=LAYERS, hidden_dim=HIDDEN, num_heads=HEADS,
                                attention_schedule="b,bT", stride=stride_for(length), max_length=length,
                                remat=recompute, query_chunk_size=min(chunk, length) if recompute else None,
                                ffn_chunk_size=min(chunk, length) if recompute else None,
                                mixed_precision=config == "recompute_bf16")
    model.build((1, length))
    return model


def measure(config, length, chunk):
    import tensorflow as tf

    model = build(config, length, chunk)
    ids = tf.random.stateless_uniform((1, length), seed=(0, 0), maxval=VOCABULARY, dtype=tf.int32)

    def step():
        with tf.GradientTape() as tape:
            logits = model(ids, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(ids, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        return float(loss), grads

    baseline, _ = start_peak_rss()
    times = []
    for _ in range(2):  # the first call is a warm-up
        start = time.perf_counter()
        loss, grads = step()
        times.append(time.perf_counter() - start)
        del grads
    return {"time_s": times[-1], "warmup_s": times[0], "memory_mib": (peak_rss_bytes() - baseline) / MIB,
            "loss": loss, "stride": stride_for(length), "parameters": model.count_params()}


def run_one(config, length, args):
    """One measurement in a fresh process, or why there is none."""
    estimate = memory_estimate(config, length, args.query_chunk_size)
    if estimate > args.memory_limit_gib * GIB:
        return {"status": f"skipped (needs ~{estimate / GIB:.0f} GiB)"}
    cmd = [sys.executable, "-m", "benchmarks.sparse_recompute", f"--worker={config}", f"--lengths={length}",
           f"--query_chunk_size={args.query_chunk_size}"]
    return run_guarded(cmd, args.timeout, args.memory_limit_gib * GIB)


def cell(record, key, fmt):
    return fmt.format(record[key]) if record["status"] == "ok" else record["status"]


def report(records, args, wall_s):
    lines = [
        "# Sparse Transformer: forward + backward with recompute",
        "",
        f"- Machine: {machine()}",
        f"- Model: SparseTransformerLM, {LAYERS} layers, d={HIDDEN}, {HEADS} heads, schedule \"b,bT\" (local, "
        f"strided), stride = sqrt(length) rounded up to a power of two, byte vocabulary, batch 1, float32 "
        f"unless bf16; recompute = remat=True and query_chunk_size = ffn_chunk_size = {args.query_chunk_size}.",
        f"- Run: `{' '.join(['python -m benchmarks.sparse_recompute'] + sys.argv[1:])}`, "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}, wall time {wall_s:.0f} s; one step after one "
        f"warm-up, each in a fresh process; memory = peak RSS during the steps minus RSS before them.",
        "",
        "| length | stride | " + " | ".join(f"{c} time (s) | {c} memory (MiB)" for c in CONFIGS) +
        " | stored / recompute memory | stored / recompute_bf16 memory |",
        "| ---: | ---: | " + " | ".join("---: | ---:" for _ in CONFIGS) + " | ---: | ---: |",
    ]
    for length in args.lengths:
        row = [records[f"{c}:{length}"] for c in CONFIGS]
        cells = [f"{cell(r, 'time_s', '{:.1f}')} | {cell(r, 'memory_mib', '{:,.0f}')}" for r in row]
        savings = [f"{row[0]['memory_mib'] / r['memory_mib']:.1f}x"
                   if row[0]["status"] == "ok" and r["status"] == "ok" else "n/a" for r in row[1:]]
        lines.append(f"| {length:,} | {stride_for(length)} | " + " | ".join(cells + savings) + " |")
    lines += ["", "Target: a forward + backward pass at 1,048,576 tokens with recompute completes on this machine:"]
    for config in CONFIGS[1:]:
        record = records.get(f"{config}:1048576", {"status": "not run"})
        done = record["status"] == "ok"
        lines.append(f"- {config}: **{'PASS' if done else 'FAIL'}**" + (
            f" ({record['time_s']:.0f} s, {record['memory_mib'] / 1024:.1f} GiB)" if done
            else f" ({record['status']})"))
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=list(DEFAULT_LENGTHS))
    parser.add_argument("--configs", type=lambda s: s.split(","), default=list(CONFIGS))
    parser.add_argument("--query_chunk_size", type=int, default=16384,
                        help="query_chunk_size and ffn_chunk_size of the recompute configuration")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per measurement")
    parser.add_argument("--memory_limit_gib", type=float,
                        default=round(0.85 * psutil.virtual_memory().available / GIB, 1))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose from {CONFIGS}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(RESULT_TAG + json.dumps(measure(args.worker, args.lengths[0], args.query_chunk_size)), flush=True)
        return
    start = time.monotonic()
    records = {}
    for length in args.lengths:
        for config in CONFIGS:
            records[f"{config}:{length}"] = (run_one(config, length, args) if config in args.configs
                                             else {"status": "not run"})
            print(config, length, records[f"{config}:{length}"], flush=True)
    text = report(records, args, time.monotonic() - start)
    print(text)
    stem = os.path.join(RESULTS_DIR, "sparse_recompute")
    write_atomically(stem + ".md", text)
    write_atomically(stem + ".json", json.dumps({"machine": machine(), "records": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
