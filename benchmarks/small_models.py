"""Small batched models, the size people train on 2 CPU cores: a whole forward + backward step of each family and
of the PyTorch `routing-transformer` package, in the same run.

    python -m benchmarks.small_models [--shapes=1024x8,4096x2] [--configs=routing,pytorch,sparse,combiner]
        [--jit=both|on|off] [--repeats=10]

Configuration (the performance issue's): 4 layers, d=256, 4 heads of 64, feed-forward 1024 (4d) with GELU and
biases (the PyTorch package's), byte vocabulary, causal, each shape LENGTHxBATCH.
- routing: `RoutingTransformerLM` with 2 local + 2 routing heads in every layer, window = local block = 128,
  clusters = length / 128, the original's balanced routing, relative positions (max distance 128), attention
  weights kept for the backward pass (`keep_attention_weights`, as the cpu_small preset).
- pytorch: lucidrains' `routing-transformer` with the same sizes (benchmarks/peers/), 2 threads.
- sparse: `SparseTransformerLM`, fixed pattern, stride 128, summary 16.
- combiner: `CombinerLM`, axial variant, segments of 128.
The step is the loss and its gradients with respect to every weight (no optimizer update, as the peer); time is
the median of --repeats steps after a warm-up, in a fresh process per (config, shape, jit). Results:
benchmarks/results/small_models.md / .json.
"""

import argparse
import datetime
import json
import os
import sys
import time

from benchmarks import harness
from benchmarks import routing

CONFIGS = ("routing", "pytorch", "sparse", "combiner")
DEFAULT_SHAPES = ((1024, 8), (4096, 2))
HIDDEN, HEADS, LAYERS, FFN, VOCAB, WINDOW = 256, 4, 4, 1024, 256, 128
TARGET = 1.5  # routing's tokens/s over the peer's (best of jit on/off)


def build(config, length, batch):
    """(model, token ids, loss of the logits) for one TF configuration."""
    import tensorflow as tf

    from combiner import CombinerLM
    from common.metrics import LanguageModelLoss
    from routing_transformer import RoutingTransformerLM
    from sparse_transformer import SparseTransformerLM

    common = dict(vocabulary_size=VOCAB, num_layers=LAYERS, hidden_dim=HIDDEN)
    if config == "routing":
        model = RoutingTransformerLM(**common, ffn_dim=FFN, ffn_activation="gelu", local_heads=HEADS // 2,
                                     routing_heads=HEADS // 2, num_clusters=length // WINDOW, window=WINDOW,
                                     block_size=WINDOW, max_relative_position=WINDOW, dropout=0.0,
                                     keep_attention_weights=True)
    elif config == "sparse":
        model = SparseTransformerLM(**common, num_heads=HEADS, attention_schedule="fixed", stride=WINDOW, summary=16,
                                    max_length=length, dropout=0.0)
    elif config == "combiner":
        model = CombinerLM(**common, num_heads=HEADS, ffn_dim=FFN, max_length=length, variant="axial",
                           segment_length=WINDOW)
    else:
        raise ValueError(f"unknown config {config!r}")
    ids = tf.random.stateless_uniform([batch, length], seed=(0, 0), maxval=VOCAB, dtype=tf.int32)
    loss = LanguageModelLoss()
    return model, ids, lambda out: loss(ids, out)


def run_one(config, length, batch, jit, args):
    """Measures one (config, shape, jit) in a fresh process (the peer's own environment for PyTorch)."""
    if config == "pytorch":
        if not os.path.exists(routing.TORCH_PYTHON):
            return {"status": "error", "error": "no .venv-torch: run `make bench-setup`"}
        cmd = [routing.TORCH_PYTHON, routing.PEER_SCRIPT, f"--length={length}", f"--window={WINDOW}",
               f"--repeats={args.repeats}", f"--depth={LAYERS}", f"--dim={HIDDEN}", f"--heads={HEADS}",
               f"--local_heads={HEADS // 2}", f"--batch={batch}"]
    else:
        cmd = [sys.executable, "-m", "benchmarks.small_models", f"--worker={config}", f"--shapes={length}x{batch}",
               f"--repeats={args.repeats}", f"--jit={'on' if jit else 'off'}"]
    record = harness.run_guarded(cmd, args.timeout, args.memory_limit_gib * harness.GIB)
    if record["status"] == "ok":
        record["tokens_per_second"] = length * batch / (record["time_ms"] / 1000)
    return record


def jit_settings(config, args):
    """The jit settings measured for a config: the peer has none."""
    if config == "pytorch":
        return [None]
    return {"both": [True, False], "on": [True], "off": [False]}[args.jit]


def best(records, config, length, batch):
    """The fastest ok record of a config at a shape (best of its jit settings), or None."""
    ok = [r for r in records if (r["config"], r["length"], r["batch"]) == (config, length, batch)
          and r["status"] == "ok"]
    return max(ok, key=lambda r: r["tokens_per_second"]) if ok else None


def report(records, args, wall_s):
    lines = ["# Small batched models: a training step on 2 CPU cores", "",
             f"- Machine: {harness.machine()}; {datetime.date.today()}; whole run {wall_s / 60:.1f} min.",
             f"- {LAYERS} layers, d={HIDDEN}, {HEADS} heads of 64, GELU feed-forward {FFN}, window / block / stride / "
             f"segment {WINDOW}; the step is loss + gradients of every weight; median of {args.repeats} steps.",
             "- vs pytorch: tokens/s over the PyTorch package's at the same shape.", "",
             "| length x batch | config | jit | step ms | tokens/s | memory MiB | vs pytorch |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for length, batch in args.shapes:
        peer = best(records, "pytorch", length, batch)
        for r in records:
            if (r["length"], r["batch"]) != (length, batch):
                continue
            jit = {None: "-", True: "on", False: "off"}[r["jit"]]
            if r["status"] != "ok":
                lines.append(f"| {length} x {batch} | {r['config']} | {jit} | {r['status']} | | | |")
                continue
            versus = f"{r['tokens_per_second'] / peer['tokens_per_second']:.2f}x" if peer else "-"
            lines.append(f"| {length} x {batch} | {r['config']} | {jit} | {r['time_ms']:.0f} | "
                         f"{r['tokens_per_second']:,.0f} | {r['memory_mib']:,.0f} | {versus} |")
    lines.append("")
    for length, batch in args.shapes:
        ours, peer = best(records, "routing", length, batch), best(records, "pytorch", length, batch)
        if ours and peer:
            speed = ours["tokens_per_second"] / peer["tokens_per_second"]
            lines.append(f"- Routing Transformer at {length} x {batch}: {speed:.2f}x the PyTorch package's tokens/s "
                         f"(best of jit on/off; target >= {TARGET}x): **{'PASS' if speed >= TARGET else 'FAIL'}**")
    return "\n".join(lines) + "\n"


def parse_shapes(text):
    """'1024x8,4096x2' -> [(1024, 8), (4096, 2)]."""
    shapes = []
    for item in text.split(","):
        length, _, batch = item.partition("x")
        shapes.append((int(length), int(batch)))
    return shapes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=parse_shapes, default=list(DEFAULT_SHAPES), help="LENGTHxBATCH,...")
    parser.add_argument("--configs", type=lambda s: s.split(","), default=list(CONFIGS))
    parser.add_argument("--jit", choices=("both", "on", "off"), default="both")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--memory_limit_gib", type=float, default=20)
    parser.add_argument("--output", default=os.path.join(harness.RESULTS_DIR, "small_models"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown --configs {unknown}; choose from {list(CONFIGS)}")
    if args.repeats < 1 or any(length % WINDOW or length < WINDOW or batch < 1 for length, batch in args.shapes):
        parser.error(f"--repeats must be >= 1 and every shape a multiple of {WINDOW} tokens x >= 1 sequences")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        length, batch = args.shapes[0]
        result = routing.measure_step(*build(args.worker, length, batch), args.repeats, args.jit == "on")
        print(harness.RESULT_TAG + json.dumps(result), flush=True)
        return
    start, records = time.time(), []
    for length, batch in args.shapes:
        for config in args.configs:
            for jit in jit_settings(config, args):
                record = run_one(config, length, batch, jit, args)
                records.append({"config": config, "length": length, "batch": batch, "jit": jit, **record})
                print(f"{config} {length}x{batch} jit={jit}: {record.get('time_ms', record['status'])}",
                      file=sys.stderr, flush=True)
    text = report(records, args, time.time() - start)
    print(text)
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    harness.write_atomically(args.output + ".md", text)
    harness.write_atomically(args.output + ".json", json.dumps(
        {"command": "python -m benchmarks.small_models " + " ".join(argv if argv is not None else sys.argv[1:]),
         "machine": harness.machine(), "records": records}, indent=2) + "\n")


if __name__ == "__main__":
    main()
