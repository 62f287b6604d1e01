"""Routing Transformer speed and memory: one routing layer and a 2-layer model, forward + backward, against
dense attention and against the PyTorch `routing-transformer` package (lucidrains, 1.6.1 on torch 2.13 CPU),
all measured in the same run on this machine.

    make bench-routing                       # sets up the PyTorch peer in .venv-torch, then runs this
    python -m benchmarks.routing --lengths=1024,8192 --window=256 [--jit]

Configuration (the issue's): d=512, 8 heads of 64 (4 local + 4 routing), window = local block = --window,
clusters = length / window, byte vocabulary, causal, batch 1. The models have 2 layers and a GELU
feed-forward of 2048 with biases, as the PyTorch package's default (ff_mult=4). The zoo's layer and model
use the original's balanced routing and relative positions (max distance = window). The step is the
gradient of the loss (cross-entropy for the models, sum of outputs for the layers) with respect to every
trainable weight; the PyTorch side runs the same step with 2 threads (torch.set_num_threads(2)).

Each (config, length) runs in a fresh process: memory is the peak RSS of the step minus the RSS before it,
time the median of --repeats calls after a warm-up. Results: benchmarks/results/routing[_jit].md / .json.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time

from benchmarks import attention as kernel_benchmark
from benchmarks import harness

CONFIGS = ("dense_layer", "routing_layer", "dense_model", "routing_model", "pytorch_model")
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
HIDDEN, HEADS, HEAD_DIM, LAYERS, FFN, VOCAB = 512, 8, 64, 2, 2048, 256
TORCH_PYTHON = os.path.join(harness.REPO_ROOT, ".venv-torch", "bin", "python")
PEER_SCRIPT = os.path.join(harness.REPO_ROOT, "benchmarks", "peers", "routing_transformer_torch.py")


def memory_estimate(config, length):
    """Dense attention's [heads, L, L] logits and probabilities forward + backward, per layer; else 0."""
    layers = LAYERS if config == "dense_model" else 1
    return layers * kernel_benchmark.dense_memory_bytes(length, HEADS) if config.startswith("dense") else 0


def build(config, length, window, assignment="balanced"):
    """(a Keras layer or model, its input, the loss of its output) for one configuration; `assignment` is the
    routing layers' rule ("balanced", the original's, or "causal")."""
    import keras
    import tensorflow as tf

    from common.layers import SelfAttention
    from common.metrics import LanguageModelLoss
    from common.models import DecoderLM
    from routing_transformer import RoutingAttention, RoutingTransformerLM

    routing = dict(num_clusters=length // window, window=window, block_size=window, max_relative_position=window,
                   routing=assignment)
    if config == "dense_layer":
        layer = SelfAttention(num_heads=HEADS, key_dim=HEAD_DIM, kernel="dense")
    elif config == "routing_layer":
        layer = RoutingAttention(local_heads=HEADS // 2, routing_heads=HEADS // 2, key_dim=HEAD_DIM, **routing)
    if config.endswith("layer"):
        x = tf.random.stateless_normal([1, length, HIDDEN], seed=(0, 0))
        return layer, x, lambda out: tf.reduce_sum(out)
    if config == "dense_model":
        model = DecoderLM(vocabulary_size=VOCAB, num_layers=LAYERS, hidden_dim=HIDDEN, ffn_dim=FFN,
                          attention=SelfAttention(num_heads=HEADS, key_dim=HEAD_DIM, kernel="dense"))
    else:
        model = RoutingTransformerLM(vocabulary_size=VOCAB, num_layers=LAYERS, hidden_dim=HIDDEN, ffn_dim=FFN,
                                     ffn_activation="gelu", local_heads=HEADS // 2, routing_heads=HEADS // 2,
                                     dropout=0.0, **routing)
    ids = tf.random.stateless_uniform([1, length], seed=(0, 0), maxval=VOCAB, dtype=tf.int32)
    loss = LanguageModelLoss()
    del keras
    return model, ids, lambda out: loss(ids, out)


def measure_step(layer, inputs, loss_of, repeats, jit):
    """Times the gradient step of `loss_of(layer(inputs))` (plus the layer's own losses) with respect to every
    trainable weight in this process: median of `repeats` calls after a tracing call, and its peak memory."""
    import tensorflow as tf

    layer.build(tuple(inputs.shape))  # build only: an eager call would fill the allocator before the baseline

    def step(x):
        with tf.GradientTape() as tape:
            loss = loss_of(layer(x, training=True))
            loss += tf.add_n(layer.losses) if layer.losses else 0.0
        return tape.gradient(loss, layer.trainable_variables)

    step = tf.function(step, jit_compile=jit)
    baseline, _ = harness.start_peak_rss()
    harness.timed_call(step, inputs)  # traces / compiles
    times = [harness.timed_call(step, inputs)[0] for _ in range(repeats)]
    return {"time_ms": 1000 * statistics.median(times), "times_ms": [1000 * t for t in times],
            "memory_mib": (harness.peak_rss_bytes() - baseline) / harness.MIB}


def measure(config, length, window, repeats, jit):
    """Times the forward + backward step of one TF configuration in this process."""
    return measure_step(*build(config, length, window), repeats, jit)


def run_one(config, length, args):
    """Measures one (config, length) in a fresh process (the peer's own environment for PyTorch)."""
    if config == "pytorch_model":
        if not os.path.exists(TORCH_PYTHON):
            return {"status": "error", "error": "no .venv-torch: run `make bench-setup`"}
        cmd = [TORCH_PYTHON, PEER_SCRIPT, f"--length={length}", f"--window={args.window}",
               f"--repeats={args.repeats}"]
    else:
        cmd = [sys.executable, "-m", "benchmarks.routing", f"--worker={config}", f"--lengths={length}",
               f"--window={args.window}", f"--repeats={args.repeats}"] + (["--jit"] if args.jit else [])
    estimate = memory_estimate(config, length)
    if estimate > args.memory_limit_gib * harness.GIB:
        return {"status": f"skipped (needs ~{estimate / harness.GIB:.0f} GiB)"}
    return harness.run_guarded(cmd, args.timeout, args.memory_limit_gib * harness.GIB)


def cell(record, key, fmt):
    return fmt.format(record[key]) if record["status"] == "ok" else record["status"]


def report(records, args, wall_s):
    """The Markdown report: tokens/s and memory per config and length, the ratios and the acceptance lines."""
    lengths = sorted({r["length"] for r in records})
    at = {(r["config"], r["length"]): r for r in records}
    lines = [f"# Routing Transformer: forward + backward{' (XLA)' if args.jit else ''}", "",
             f"- Machine: {harness.machine()}",
             f"- Config: d={HIDDEN}, {HEADS} heads of {HEAD_DIM} (4 local + 4 routing), window {args.window}, "
             f"clusters = length / window, models {LAYERS} layers, FFN {FFN} GELU, vocabulary {VOCAB}, batch 1.",
             f"- Run: `python -m benchmarks.routing {' '.join(sys.argv[1:])}`, "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}, wall time {wall_s:.0f} s, "
             f"median of {args.repeats} steps after one warm-up, each in a fresh process.", "",
             "| length | " + " | ".join(f"{c} tokens/s | {c} MiB" for c in CONFIGS) + " |",
             "| ---: |" + " ---: | ---: |" * len(CONFIGS)]
    for length in lengths:
        row = []
        for config in CONFIGS:
            r = at[(config, length)]
            if r["status"] == "ok":
                r["tokens_per_s"] = length / (r["time_ms"] / 1000)
            row += [cell(r, "tokens_per_s", "{:,.0f}"), cell(r, "memory_mib", "{:,.0f}")]
        lines.append(f"| {length} | " + " | ".join(row) + " |")
    lines += ["", "| length | routing model / PyTorch speed | PyTorch / routing model memory | "
                  "routing / dense layer speed | dense / routing layer memory |", "| ---: | ---: | ---: | ---: | ---: |"]
    for length in lengths:
        ratios = [harness.ratio(at[("pytorch_model", length)], at[("routing_model", length)], "time_ms"),
                  harness.ratio(at[("pytorch_model", length)], at[("routing_model", length)], "memory_mib"),
                  harness.ratio(at[("dense_layer", length)], at[("routing_layer", length)], "time_ms"),
                  harness.ratio(at[("dense_layer", length)], at[("routing_layer", length)], "memory_mib")]
        lines.append(f"| {length} | " + " | ".join("n/a" if x is None else f"{x:.2f}x" for x in ratios) + " |")
    lines += ["", "Growth exponents (log-log slope over the measured lengths):", ""]
    for config in CONFIGS:
        recs = [r for r in records if r["config"] == config]
        t, m = harness.growth_exponent(recs, "time_ms"), harness.growth_exponent(recs, "memory_mib")
        lines.append(f"- {config}: time {'n/a' if t is None else f'{t:.2f}'}, memory "
                     f"{'n/a' if m is None else f'{m:.2f}'}")
    lines += ["", "Targets:", ""] + [f"- {line}" for line in acceptance(at, records)]
    return "\n".join(lines) + "\n"


def acceptance(at, records):
    """The issue's three targets, each PASS/FAIL with its number."""
    results = []
    ours, peer = at.get(("routing_model", 8192)), at.get(("pytorch_model", 8192))
    speed = harness.ratio(peer, ours, "time_ms") if ours and peer else None
    memory = harness.ratio(peer, ours, "memory_mib") if ours and peer else None
    results.append("tokens/s at 8192 at least 1.2x the PyTorch package: " +
                   ("not measured" if speed is None else f"{'PASS' if speed >= 1.2 else 'FAIL'} ({speed:.2f}x)"))
    results.append("peak memory at 8192 no higher than the PyTorch package: " +
                   ("not measured" if memory is None else f"{'PASS' if memory >= 1.0 else 'FAIL'} "
                                                          f"(PyTorch/zoo {memory:.2f}x)"))
    exponent = harness.growth_exponent([r for r in records if r["config"] == "routing_model"], "time_ms")
    results.append("routing model time grows no faster than length x window (exponent <= 1.15 at fixed "
                   "window): " + ("not measured" if exponent is None else
                                  f"{'PASS' if exponent <= 1.15 else 'FAIL'} ({exponent:.2f})"))
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=list(DEFAULT_LENGTHS))
    parser.add_argument("--configs", type=lambda s: s.split(","), default=list(CONFIGS))
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--memory_limit_gib", type=float, default=20)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        result = measure(args.worker, args.lengths[0], args.window, args.repeats, args.jit)
        print(harness.RESULT_TAG + json.dumps(result), flush=True)
        return
    start, records = time.time(), []
    for length in args.lengths:
        for config in CONFIGS:
            record = run_one(config, length, args) if config in args.configs else {"status": "not run"}
            records.append({"config": config, "length": length, **record})
            print(f"{config} {length}: {record.get('time_ms', record['status'])}", file=sys.stderr, flush=True)
    text = report(records, args, time.time() - start)
    print(text)
    stem = os.path.join(harness.RESULTS_DIR, "routing_jit" if args.jit else "routing")
    os.makedirs(harness.RESULTS_DIR, exist_ok=True)
    harness.write_atomically(stem + ".md", text)
    harness.write_atomically(stem + ".json", json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
