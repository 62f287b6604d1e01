"""A whole training step of each family against dense attention and the PyTorch `routing-transformer` package.

    make bench-families
    python -m benchmarks.families [--lengths=1024,4096,8192,16384] [--jit=both|on|off]

Configuration: 2 layers, d=512, 8 heads of 64, feed-forward 2048, byte vocabulary, causal, batch 1.
- routing: `RoutingTransformerLM` as benchmarks/routing.py builds it (4 local + 4 routing heads, window and
  local block 256, clusters = length / 256).
- sparse: `SparseTransformerLM`, fixed pattern, stride 128, summary 32.
- combiner: `CombinerLM`, fixed variant, segment 128.
- dense: a pre-LN `DecoderLM` whose attention is Keras `MultiHeadAttention` with a causal mask.
- pytorch: lucidrains' `routing-transformer` on the routing configuration (benchmarks/peers/), 2 threads.
The step is the loss and its gradients with respect to every weight (no optimizer update, as the peer).

FLOPs per step, counted analytically: 3 x the forward matmuls (forward + backward), per token
  layers x (8 d^2 [q, k, v, o] + 4 d ffn [feed-forward] + heads x 4 dh x keys) + 2 d vocab [logits],
where keys is the number of keys each query's head computes against (`keys_per_query`): dense L (the full
matrix, masked); routing 2 x 256 for a local head (its block and the previous one) and 256 + clusters / 2 for a
routing head (its cluster, plus the centroid distances at half a logit's cost); sparse 128 + 32 L / 128 (its
block and every block's summary); combiner 128 + L / 128 + 1 (its segment, the segments' summaries, and the
summaries' own local expectation). Relative-position logits, norms and softmaxes are not counted. The FLOP
fraction divides the achieved rate by the machine's best rate on a 2048 x 2048 float32 matmul measured in the
same run. Each (config, length, jit) runs in a fresh process (see benchmarks.harness).
"""

import argparse
import datetime
import json
import os
import sys
import time

from benchmarks import attention as kernel_benchmark
from benchmarks import harness
from benchmarks import routing

CONFIGS = ("dense", "routing", "sparse", "combiner", "pytorch")
TF_CONFIGS = CONFIGS[:-1]
DEFAULT_LENGTHS = (1024, 4096, 8192, 16384)
HIDDEN, HEADS, HEAD_DIM, LAYERS, FFN, VOCAB = 512, 8, 64, 2, 2048, 256
WINDOW, STRIDE, SUMMARY, SEGMENT = 256, 128, 32, 128
PEAK_SIZE = 2048


def keys_per_query(config, length, heads=HEADS):
    """Keys each query computes against, summed over the heads (see the module docstring)."""
    if config == "dense":
        return heads * length
    if config in ("routing", "pytorch"):
        clusters = length // WINDOW
        return heads // 2 * 2 * WINDOW + heads // 2 * (WINDOW + clusters / 2)
    if config == "sparse":
        return heads * (STRIDE + SUMMARY * length // STRIDE)
    if config == "combiner":
        return heads * (SEGMENT + length // SEGMENT + 1)
    raise ValueError(f"unknown config {config!r}")


def step_flops(config, length, hidden=HIDDEN, heads=HEADS, layers=LAYERS, ffn=FFN, vocab=VOCAB):
    """Matmul FLOPs of one forward + backward step at batch 1 (3 x the forward's)."""
    head_dim = hidden // heads
    attention = 4 * head_dim * keys_per_query(config, length, heads)
    per_token = layers * (8 * hidden * hidden + 4 * hidden * ffn + attention) + 2 * hidden * vocab
    return 3 * length * per_token


def causal_mha_class():
    """The dense baseline's attention: Keras `MultiHeadAttention` on x with a causal mask."""
    import keras

    @keras.saving.register_keras_serializable(package="benchmarks")
    class CausalMultiHeadAttention(keras.layers.Layer):
        def __init__(self, num_heads, key_dim, **kwargs):
            super().__init__(**kwargs)
            self.num_heads, self.key_dim = num_heads, key_dim
            self.attention = keras.layers.MultiHeadAttention(num_heads, key_dim, name="mha")

        def build(self, input_shape):
            self.attention.build(input_shape, input_shape)

        def call(self, x, training=None):
            return self.attention(x, x, use_causal_mask=True, training=training)

        def get_config(self):
            return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim}

    return CausalMultiHeadAttention


def build(config, length):
    """(model, token ids, loss of the logits) for one TF configuration."""
    import tensorflow as tf

    from combiner import CombinerLM
    from common.metrics import LanguageModelLoss
    from common.models import DecoderLM
    from sparse_transformer import SparseTransformerLM

    if config == "routing":
        return routing.build("routing_model", length, WINDOW)
    if config == "dense":
        attention = [causal_mha_class()(HEADS, HEAD_DIM) for _ in range(LAYERS)]
        model = DecoderLM(vocabulary_size=VOCAB, num_layers=LAYERS, hidden_dim=HIDDEN, ffn_dim=FFN,
                          attention=attention)
    elif config == "sparse":
        model = SparseTransformerLM(vocabulary_size=VOCAB, num_layers=LAYERS, hidden_dim=HIDDEN, num_heads=HEADS,
                                    attention_schedule="fixed", stride=STRIDE, summary=SUMMARY, max_length=length)
    elif config == "combiner":
        model = CombinerLM(vocabulary_size=VOCAB, num_layers=LAYERS, hidden_dim=HIDDEN, num_heads=HEADS, ffn_dim=FFN,
                           max_length=length, variant="fixed", segment_length=SEGMENT)
    else:
        raise ValueError(f"unknown config {config!r}")
    ids = tf.random.stateless_uniform([1, length], seed=(0, 0), maxval=VOCAB, dtype=tf.int32)
    loss = LanguageModelLoss()
    return model, ids, lambda out: loss(ids, out)


def measure(config, length, repeats, jit):
    """Times one configuration's step in this process (median after a warm-up) and its peak memory."""
    return routing.measure_step(*build(config, length), repeats, jit)


def measure_peak(repeats):
    """The machine's best float32 matmul rate (FLOP/s) on PEAK_SIZE x PEAK_SIZE matrices in a tf.function."""
    import tensorflow as tf

    a, b = (tf.random.stateless_normal([PEAK_SIZE, PEAK_SIZE], seed=(i, 0)) for i in range(2))
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    matmul(a, b).numpy()
    best = min(harness.timed_call(lambda: matmul(a, b).numpy())[0] for _ in range(repeats))
    return {"flops_per_s": 2 * PEAK_SIZE**3 / best, "time_ms": 1000 * best}


def run_one(config, length, jit, args):
    """Measures one (config, length, jit) in a fresh process; the numbers or a status saying why not."""
    if config == "pytorch":
        return routing.run_one("pytorch_model", length, argparse.Namespace(
            window=WINDOW, repeats=args.repeats, timeout=args.timeout, memory_limit_gib=args.memory_limit_gib))
    estimate = LAYERS * kernel_benchmark.dense_memory_bytes(length, HEADS) if config == "dense" else 0
    if estimate > args.memory_limit_gib * harness.GIB:
        return {"status": f"skipped (needs ~{estimate / harness.GIB:.0f} GiB)"}
    cmd = [sys.executable, "-m", "benchmarks.families", f"--worker={config}", f"--lengths={length}",
           f"--repeats={args.repeats}", f"--jit={'on' if jit else 'off'}"]
    return harness.run_guarded(cmd, args.timeout, args.memory_limit_gib * harness.GIB)


def fmt_ratio(value):
    return "n/a" if value is None else f"{value:.2f}x"


def report(records, peak, args, wall_s):
    """The Markdown report: per jit setting, tokens/s, memory, FLOP fraction and ratios; then jit off/on."""
    lengths = sorted({r["length"] for r in records})
    at = {(r["config"], r["length"], r["jit"]): r for r in records}
    lines = ["# Training step of each family against dense attention and PyTorch", "",
             f"- Machine: {harness.machine()}",
             f"- Config: d={HIDDEN}, {HEADS} heads of {HEAD_DIM}, {LAYERS} layers, FFN {FFN}, vocabulary {VOCAB}, "
             f"batch 1; routing window {WINDOW}, sparse fixed stride {STRIDE} summary {SUMMARY}, combiner fixed "
             f"segment {SEGMENT}.",
             f"- Run: `python -m benchmarks.families {' '.join(sys.argv[1:])}` (lengths run: "
             f"{', '.join(map(str, lengths))}), {datetime.datetime.now().isoformat(timespec='seconds')}, "
             f"wall time {wall_s:.0f} s, median of {args.repeats} steps after one warm-up, each in a fresh process.",
             f"- Matmul ceiling ({PEAK_SIZE}x{PEAK_SIZE} float32, best of {args.repeats * 3}, same run): " +
             (f"{peak['flops_per_s'] / 1e9:.1f} GFLOP/s" if peak["status"] == "ok" else peak["status"]),
             "- FLOP fraction: analytic matmul FLOPs of the step (module docstring) / time / matmul ceiling. "
             "The PyTorch peer has no jit setting: the same measurement appears in both tables.", ""]
    for jit in sorted({r["jit"] for r in records if r["config"] != "pytorch"}, reverse=True):
        lines += [f"## jit_compile {'on' if jit else 'off'}", "",
                  "| length | config | tokens/s | MiB | FLOP fraction | speed vs dense | memory dense/this | "
                  "speed vs PyTorch | memory PyTorch/this |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for length in lengths:
            dense, peer = at[("dense", length, jit)], at[("pytorch", length, None)]
            for config in CONFIGS:
                r = at[(config, length, None if config == "pytorch" else jit)]
                if r["status"] != "ok":
                    lines.append(f"| {length} | {config} | {r['status']} | | | | | | |")
                    continue
                fraction = (r["flops_per_s"] / peak["flops_per_s"]) if peak["status"] == "ok" else None
                lines.append(f"| {length} | {config} | {r['tokens_per_s']:,.0f} | {r['memory_mib']:,.0f} | "
                             f"{'n/a' if fraction is None else f'{fraction:.3f}'} | "
                             f"{fmt_ratio(harness.ratio(dense, r, 'time_ms'))} | "
                             f"{fmt_ratio(harness.ratio(dense, r, 'memory_mib'))} | "
                             f"{fmt_ratio(harness.ratio(peer, r, 'time_ms'))} | "
                             f"{fmt_ratio(harness.ratio(peer, r, 'memory_mib'))} |")
        lines.append("")
    if {True, False} <= {r["jit"] for r in records}:
        lines += ["## jit_compile on vs off (time off / time on; memory off / on)", "",
                  "| length | " + " | ".join(f"{c} speed | {c} memory" for c in TF_CONFIGS) + " |",
                  "| ---: |" + " ---: | ---: |" * len(TF_CONFIGS)]
        for length in lengths:
            cells = []
            for config in TF_CONFIGS:
                off, on = at[(config, length, False)], at[(config, length, True)]
                cells += [fmt_ratio(harness.ratio(off, on, key)) for key in ("time_ms", "memory_mib")]
            lines.append(f"| {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=harness.comma_list(int), default=list(DEFAULT_LENGTHS))
    parser.add_argument("--jit", choices=("both", "on", "off"), default="both")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--memory_limit_gib", type=float, default=20)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        result = (measure_peak(args.repeats * 3) if args.worker == "peak"
                  else measure(args.worker, args.lengths[0], args.repeats, args.jit == "on"))
        print(harness.RESULT_TAG + json.dumps(result), flush=True)
        return
    start = time.time()
    peak = harness.run_guarded([sys.executable, "-m", "benchmarks.families", "--worker=peak",
                                f"--repeats={args.repeats}"], args.timeout, args.memory_limit_gib * harness.GIB)
    jits = {"both": (True, False), "on": (True,), "off": (False,)}[args.jit]
    records = []
    for length in args.lengths:
        runs = [(c, j) for c in TF_CONFIGS for j in jits] + [("pytorch", None)]
        for config, jit in runs:
            record = {"config": config, "length": length, "jit": jit, **run_one(config, length, jit, args)}
            if record["status"] == "ok":
                record["tokens_per_s"] = length / (record["time_ms"] / 1000)
                record["step_flops"] = step_flops(config, length)
                record["flops_per_s"] = record["step_flops"] / (record["time_ms"] / 1000)
            records.append(record)
            print(f"{config} {length} jit={jit}: {record.get('time_ms', record['status'])}", file=sys.stderr,
                  flush=True)
    wall_s = time.time() - start
    text = report(records, peak, args, wall_s)
    print(text)
    stem = os.path.join(harness.RESULTS_DIR, "families")
    os.makedirs(harness.RESULTS_DIR, exist_ok=True)
    raw = {"machine": harness.machine(), "command": "python -m benchmarks.families " + " ".join(sys.argv[1:]),
           "date": datetime.datetime.now().isoformat(timespec="seconds"), "wall_s": wall_s,
           "settings": {"hidden": HIDDEN, "heads": HEADS, "layers": LAYERS, "ffn": FFN, "vocabulary": VOCAB,
                        "batch": 1, "repeats": args.repeats},
           "peak": peak, "records": records}
    harness.write_atomically(stem + ".json", json.dumps(raw, indent=2) + "\n")
    harness.write_atomically(stem + ".md", text)


if __name__ == "__main__":
    main()
