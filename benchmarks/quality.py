"""Quality per CPU-minute: each family's `cpu_small.gin` preset trained for the same wall-clock budget on the
local corpus, held-out bits per byte on the test split next to `xz -9` on the same bytes.

    make bench-quality
    python -m benchmarks.quality [--budget_s=600] [--configs=routing,sparse,combiner,dense] [--jit=preset|on|off|both]
                                 [--eval_stride=N]
    python -m benchmarks.quality --local_text_dir=/my/texts   # your own text

Models: `gin_configs/<family>/cpu_small.gin` as they are (4 layers of d=128, context 256, batches of 4 windows,
Adam with warm-up and cosine decay over the preset's TRAIN_STEPS; routing assigns tokens with the strictly causal
rule, whose held-out bits are not helped by later tokens). `dense` is the Sparse Transformer preset with dense
attention in every layer, a reference. The presets were tuned on the validation split; the held-out bytes here
are the test split's (files never trained on or tuned on): the first whole batches of the preset's windows that
hold --held_out_bytes (the same bytes whatever the preset's batch, for windows that divide them); bytes are
tokens, so bits per token are bits per byte, and xz -9 compresses exactly those bytes. Each byte is predicted
with context, as xz compresses it: windows start every --eval_stride bytes (default half the window) and score
their last --eval_stride bytes (`Experiment.eval_stride`), so every byte after the first window has at least
window - stride bytes before it. The same model scored on consecutive windows, whose first bytes are predicted
from nothing, is reported beside it ("from scratch").
Training: `apps.train`, stopped by the preset's steps or by `Experiment.train_seconds = --budget_s`, whichever
comes first; tracing and XLA compilation count against the budget, as they do for a user. CPU time is the worker
process's user + system time while training. Each run starts once the CPU is idle and records the share other
processes took while it trained: a run that shared the 2 cores gets a fraction of the steps (a table measured so
once showed a third of this machine's tokens/s), and the report marks it. The machine's float32 matmul rate is
measured and reported: the budget buys very different step counts on different CPUs.
Each (config, jit) runs in a fresh process. Output: benchmarks/results/quality.md and quality.json.
"""

import argparse
import dataclasses
import datetime
import json
import lzma
import math
import os
import sys
import tempfile
import time

from benchmarks import harness
from benchmarks import families

PRESETS = {"routing": "routing_transformer/cpu_small.gin", "sparse": "sparse_transformer/cpu_small.gin",
           "combiner": "combiner/cpu_small.gin", "dense": "sparse_transformer/cpu_small.gin"}
CONFIG_BINDINGS = {"dense": ["SparseTransformerLM.attention_schedule = 'a'"]}
DEFAULT_CONFIGS = ("routing", "sparse", "combiner")
CURVE_TAG = "bits_per_token"
TARGET_BITS_PER_BYTE, WITHIN_BEST = 1.80, 0.10  # the 10-minute target: best family, others within 10%


def experiment_params(config, jit, args):
    """Gin bindings of the training run of `config` on top of its preset; `jit` None keeps the preset's."""
    params = CONFIG_BINDINGS.get(config, []) + [
        f"Experiment.train_seconds = {args.budget_s!r}", f"Experiment.eval_split = {args.eval_split!r}",
        "Experiment.checkpoint_every = 1000000000", "Experiment.log_every = 20"]
    if jit is not None:
        params.append(f"Experiment.jit_compile = {jit}")
    if args.data_dir:
        params.append(f"Experiment.data_dir = {args.data_dir!r}")
    if args.local_text_dir:
        params.append(f"Experiment.data_options = {{'local_text_dir': {args.local_text_dir!r}}}")
    return params + list(args.gin_param)


def scoring_held_out_bytes(experiment, held_out_bytes, stride=None):
    """`experiment` evaluating windows every `stride` bytes (None: consecutive windows), as many whole batches
    as score at least `held_out_bytes` bytes: the first window scores all its bytes, each later one `stride`."""
    length = experiment.sequence_length
    stride = stride or length
    windows = 1 + math.ceil(max(0, held_out_bytes - length) / stride)
    return dataclasses.replace(experiment, eval_stride=None if stride == length else stride,
                               eval_batches=math.ceil(windows / experiment.batch_size))


def eval_stride(experiment, args):
    """The stride of the held-out windows: --eval_stride, or half the preset's window."""
    return args.eval_stride or experiment.sequence_length // 2


def training_curve(train_dir, start_time):
    """[(seconds since `start_time`, training bits per byte)] from the trainer's TensorBoard events."""
    import tensorflow as tf

    points = []
    for name in sorted(os.listdir(train_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(train_dir, name)):
            for value in event.summary.value:
                if value.tag == CURVE_TAG:
                    points.append((event.wall_time - start_time, float(tf.make_ndarray(value.tensor))))
    return sorted(points)


def train_and_score(config, jit, args):
    """Trains one (config, jit) for the budget in this process, then scores the held-out windows."""
    import tensorflow as tf

    from apps import evaluation, gin_experiment, train

    experiment = gin_experiment.parse_config([PRESETS[config]], experiment_params(config, jit, args))
    stride = eval_stride(experiment, args)
    from_scratch = scoring_held_out_bytes(experiment, args.held_out_bytes)
    experiment = scoring_held_out_bytes(experiment, args.held_out_bytes, stride)
    with tempfile.TemporaryDirectory(prefix=f"quality_{config}_") as model_dir:
        start_wall, start_cpu, machine_before = time.time(), harness.process_cpu_s(), harness.cpu_seconds()
        model = train.train(experiment, model_dir)
        train_wall, train_cpu = time.time() - start_wall, harness.process_cpu_s() - start_cpu
        others = harness.others_cpu_share(machine_before, harness.cpu_seconds())
        checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        steps = int(tf.train.load_variable(checkpoint, "step/.ATTRIBUTES/VARIABLE_VALUE"))
        results = evaluation.evaluate(experiment, model_dir)
        scratch_results = evaluation.evaluate(from_scratch, model_dir)
        curve = training_curve(os.path.join(model_dir, "train"), start_wall)
    text = evaluation.evaluated_bytes(experiment)
    tokens_per_step = experiment.batch_size * experiment.sequence_length
    return {"preset": PRESETS[config], "jit": experiment.jit_compile, "parameters": model.count_params(),
            "sequence_length": experiment.sequence_length, "batch_size": experiment.batch_size,
            "train_steps": experiment.train_steps, "steps": steps, "train_wall_s": train_wall,
            "train_cpu_s": train_cpu, "others_cpu_share": others, "tokens_per_s": steps * tokens_per_step / train_wall,
            "bits_per_byte": results["bits_per_token"], "eval_stride": stride,
            "held_out_tokens": results["tokens"], "held_out_bytes": len(text),
            "from_scratch_bits_per_byte": scratch_results["bits_per_token"],
            "from_scratch_held_out_bytes": scratch_results["tokens"],
            "xz_bits_per_byte": 8.0 * len(lzma.compress(text, preset=9)) / len(text),
            "curve": curve}


def run_one(config, jit, args):
    """One (config, jit) in a fresh process; its numbers or a status saying why not."""
    jit_flag = "preset" if jit is None else ("on" if jit else "off")
    cmd = [sys.executable, "-m", "benchmarks.quality", f"--worker={config}", f"--jit={jit_flag}",
           f"--budget_s={args.budget_s}", f"--held_out_bytes={args.held_out_bytes}",
           f"--eval_split={args.eval_split}"] + ([f"--eval_stride={args.eval_stride}"] if args.eval_stride else [])
    cmd += [f"--{name}={getattr(args, name)}" for name in ("data_dir", "local_text_dir") if getattr(args, name)]
    cmd += [f"--gin_param={binding}" for binding in args.gin_param]
    return harness.run_guarded(cmd, args.budget_s + args.timeout, args.memory_limit_gib * harness.GIB)


def target_lines(records, xz):
    """Whether the runs meet the 10-minute target: the best at most TARGET_BITS_PER_BYTE, every family within
    WITHIN_BEST of the best; and whether any beats xz -9."""
    runs = [r for r in records if r["status"] == "ok" and r["config"] != "dense"]
    if not runs:
        return []
    best = min(runs, key=lambda r: r["bits_per_byte"])
    worst = max(runs, key=lambda r: r["bits_per_byte"])
    gap = worst["bits_per_byte"] / best["bits_per_byte"] - 1.0
    met = best["bits_per_byte"] <= TARGET_BITS_PER_BYTE
    return [f"- Target: the best family at most {TARGET_BITS_PER_BYTE:.2f} bits/byte: **{'met' if met else 'not met'}"
            f"** ({best['config']}, {best['bits_per_byte']:.3f}); every family within {WITHIN_BEST:.0%} of the best: "
            f"**{'yes' if gap <= WITHIN_BEST else 'no'}** (worst {worst['config']}, {gap:+.1%}); below xz -9: "
            f"**{'yes' if xz and best['bits_per_byte'] < xz else 'no'}**."]


def report(records, xz, held_out, peak, args, command, date, wall_s):
    """The Markdown report: per (config, jit), size, steps, speed, CPU-minutes and held-out bits/byte vs xz -9."""
    ok = [r for r in records if r["status"] == "ok"]
    shapes = sorted({(r["sequence_length"], r["batch_size"]) for r in ok})
    peak_text = f"{peak['flops_per_s'] / 1e9:.0f} GFLOP/s float32 matmul" if peak else "matmul rate not measured"
    lines = ["# Quality per CPU-minute: the cpu_small presets at an equal wall-clock budget", "",
             f"- Machine: {harness.machine()}; {peak_text} ({families.PEAK_SIZE}x{families.PEAK_SIZE}).",
             "- Models: each family's `cpu_small.gin` as it is (" + ", ".join(
                 f"{r['config']}: {r['preset']}, {r['parameters']:,} parameters" for r in ok) + "); windows x batch: "
             + ", ".join(f"{length} x {batch}" for length, batch in shapes) + ".",
             f"- Budget: {args.budget_s:g} s of wall-clock training each (tracing and compilation included) or the "
             f"preset's steps, whichever ends first, on the train split of "
             f"{args.local_text_dir or 'the local corpus (Python standard library)'}.",
             f"- Held-out: the first {held_out:,} bytes of the {args.eval_split} split (never trained on; the "
             f"presets were tuned on the validation split), whole batches of the preset's windows, every byte "
             f"after the first window predicted from at least {context_text(ok)} bytes before it (windows every "
             f"{stride_text(ok)} bytes); xz -9 on the same bytes: **{xz:.3f} bits/byte**. \"from scratch\": the "
             f"same model on consecutive windows (the first {held_out_scratch_text(ok)} bytes), the first bytes of "
             "each predicted from nothing." if xz else "- Held-out: not measured.",
             *target_lines(records, xz),
             f"- Run: `{command}`, {date}, wall time {wall_s:.0f} s; each run in a fresh process, started once other "
             f"processes left the CPU (or after --idle_wait). \"others' CPU\": the share of the machine other "
             f"processes used while it trained; above {harness.BUSY_SHARE:.0%} (marked *) its steps, tokens/s and "
             "bits/byte are not what this machine gives a run of its own.", "",
             "| config | jit | parameters | steps | tokens/s | CPU-minutes | others' CPU | held-out bits/byte | "
             "vs xz -9 | from scratch |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        jit = {None: "preset", True: "on", False: "off"}[r["jit"]]
        if r["status"] != "ok":
            lines.append(f"| {r['config']} | {jit} | {r['status']} | | | | | | | |")
            continue
        mark = "*" if harness.disturbed(r) else ""
        lines.append(f"| {r['config']}{mark} | {jit} | {r['parameters']:,} | {r['steps']:,} | "
                     f"{r['tokens_per_s']:,.0f} | {r['train_cpu_s'] / 60:.1f} | {r['others_cpu_share']:.0%} | "
                     f"{r['bits_per_byte']:.3f} | {r['bits_per_byte'] / xz:.2f}x | "
                     f"{r['from_scratch_bits_per_byte']:.3f} |")
    return "\n".join(lines) + "\n"


def _distinct(values):
    return " / ".join(f"{v:,}" for v in sorted(set(values)))


def context_text(records):
    return _distinct(r["sequence_length"] - r["eval_stride"] for r in records)


def stride_text(records):
    return _distinct(r["eval_stride"] for r in records)


def held_out_scratch_text(records):
    return _distinct(int(r["from_scratch_held_out_bytes"]) for r in records)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=harness.comma_list(str), default=list(DEFAULT_CONFIGS),
                        help=f"some of {', '.join(PRESETS)}")
    parser.add_argument("--jit", choices=("preset", "both", "on", "off"), default="preset",
                        help="XLA-compile the steps: as the preset says (on), on, off, or both")
    parser.add_argument("--budget_s", type=float, default=600.0, help="wall-clock training seconds per run")
    parser.add_argument("--held_out_bytes", type=int, default=262144,
                        help="bytes of the held-out split scored (whole batches of the preset's windows)")
    parser.add_argument("--eval_stride", type=int, default=None,
                        help="score held-out windows every N bytes, their last N (default: half the window)")
    parser.add_argument("--eval_split", choices=("test", "validation"), default="test",
                        help="the held-out split (tune on validation, report test)")
    parser.add_argument("--gin_param", action="append", default=[], help="extra gin binding for every run")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (default ~/tensorflow_datasets)")
    parser.add_argument("--local_text_dir", default=None, help="folder of text files (default: the Python stdlib)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed beyond the budget per run")
    parser.add_argument("--memory_limit_gib", type=float, default=20)
    parser.add_argument("--idle_wait", type=float, default=300,
                        help="seconds to wait before each run for other processes to leave the CPU")
    parser.add_argument("--output", default=os.path.join(harness.RESULTS_DIR, "quality"),
                        help="path stem of the .md/.json results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.configs) - set(PRESETS))
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    if args.eval_stride is not None and args.eval_stride < 1:
        parser.error(f"--eval_stride must be >= 1 (got {args.eval_stride})")
    if args.budget_s <= 0 or args.held_out_bytes < 1:
        parser.error(f"--budget_s must be > 0 and --held_out_bytes >= 1 (got {args.budget_s:g}, "
                     f"{args.held_out_bytes})")
    return args


def main(argv=None):
    args = parse_args(argv)
    jits = {"preset": (None,), "both": (True, False), "on": (True,), "off": (False,)}[args.jit]
    if args.worker:
        result = train_and_score(args.worker, jits[0], args)
        print(harness.RESULT_TAG + json.dumps(result), flush=True)
        return
    command = " ".join(["python -m benchmarks.quality", *(sys.argv[1:] if argv is None else argv)])
    date = datetime.datetime.now().isoformat(timespec="seconds")
    start = time.time()
    peak = families.measure_peak(repeats=5)
    records = []
    for config in args.configs:
        for jit in jits:
            harness.wait_for_idle(args.idle_wait)
            result = run_one(config, jit, args)
            records.append({"config": config, "jit": result.pop("jit", jit), **result})
            r = records[-1]
            print(f"{config} jit={r['jit']}: " + (f"{r['steps']} steps, {r['bits_per_byte']:.3f} bits/byte"
                                                  if r["status"] == "ok" else r["status"] + " " + r.get("error", "")),
                  file=sys.stderr, flush=True)
    measured = [r for r in records if r["status"] == "ok"]
    if len({(r["held_out_bytes"], r["xz_bits_per_byte"]) for r in measured}) > 1:
        raise RuntimeError("the runs scored different held-out bytes (presets with different windows or batches?); "
                           "the comparison would be meaningless")
    xz = measured[0]["xz_bits_per_byte"] if measured else None
    held_out = measured[0]["held_out_bytes"] if measured else 0
    text = report(records, xz, held_out, peak, args, command, date, time.time() - start)
    print(text)
    shapes = sorted({(r["sequence_length"], r["batch_size"]) for r in measured})
    raw = {"machine": harness.machine(), "matmul_flops_per_s": peak["flops_per_s"], "command": command,
           "date": date, "settings": {"sequence_length": shapes[0][0] if len(shapes) == 1 else None,
                                      "budget_s": args.budget_s, "held_out_bytes": args.held_out_bytes,
                                      "eval_stride": args.eval_stride, "eval_split": args.eval_split, "presets": {c: PRESETS[c] for c in args.configs},
                                      "gin_params": args.gin_param},
           "held_out_bytes": held_out, "xz_bits_per_byte": xz, "records": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    harness.write_atomically(args.output + ".md", text)
    harness.write_atomically(args.output + ".json", json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
