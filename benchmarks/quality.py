"""Quality per CPU-minute: each family and dense attention trained for the same wall-clock budget on the local
corpus at 4k context, held-out bits per byte next to `xz -9` on the same bytes.

    make bench-quality
    python -m benchmarks.quality [--budget_s=180] [--configs=dense,routing,sparse,combiner] [--jit=both|on|off]
    python -m benchmarks.quality --local_text_dir=/my/texts --sequence_length=1024   # your own text, 1k context

Models: the training-step benchmark's (benchmarks.families: 2 layers, d=512, 8 heads of 64, FFN 2048, bytes, no
dropout), except that routing assigns tokens with the strictly causal rule (`routing='causal'`): the original's
balanced top-k clusters let later tokens decide earlier tokens' clusters, which would flatter held-out bits.
Training: `common.train` on `local_text` (the Python standard library sources), sequence --sequence_length
(4096), batch 1, Adam, learning rate warmed up over 50 steps to 1e-3 and then constant (the budget, not a step
count, ends training), gradient clipping 1.0, stopped by `Experiment.train_seconds = --budget_s`: tracing and
XLA compilation count against the budget, as they do for a user. CPU time is the worker process's user + system
time while training.
Held-out: the first --eval_windows windows of --sequence_length bytes of the validation split (files never
trained on); bytes are tokens, so the model's bits per token are bits per byte; xz -9 compresses exactly those bytes.
Each (config, jit) runs in a fresh process. Output: benchmarks/results/quality.md and quality.json.
"""

import argparse
import datetime
import json
import lzma
import os
import sys
import tempfile
import time

import gin

from benchmarks import attention as harness
from benchmarks import families, routing

CONFIGS = families.TF_CONFIGS
PEAK_LEARNING_RATE, WARMUP_STEPS = 1e-3, 50
CURVE_TAG = "bits_per_token"


@gin.configurable(module="benchmarks.quality")
def build_model(vocabulary_size, config=gin.REQUIRED, length=gin.REQUIRED):
    """The benchmark's model for `config` at `length` tokens (causal routing, see the module docstring); the
    trainer's `Experiment.model`."""
    if vocabulary_size != families.VOCAB:
        raise ValueError(f"expected a byte vocabulary of {families.VOCAB}, got {vocabulary_size}")
    if config == "routing":
        return routing.build("routing_model", length, families.WINDOW, assignment="causal")[0]
    return families.build(config, length)[0]


def experiment_params(config, jit, args):
    """Gin bindings of the training run of `config`."""
    params = ["Experiment.model = @benchmarks.quality.build_model", f"build_model.config = {config!r}",
              f"build_model.length = {args.sequence_length}", "Experiment.dataset = 'local_text'", f"Experiment.sequence_length = {args.sequence_length}",
              "Experiment.batch_size = 1", "Experiment.train_steps = 1000000000",
              f"Experiment.train_seconds = {args.budget_s!r}", "Experiment.optimizer = @keras.optimizers.Adam",
              "Experiment.learning_rate = @common.WarmupCosine()", f"WarmupCosine.peak = {PEAK_LEARNING_RATE!r}",
              f"WarmupCosine.warmup_steps = {WARMUP_STEPS}", "WarmupCosine.total_steps = 1000000000",
              "WarmupCosine.final_fraction = 1.0", "Experiment.clip_norm = 1.0", "Experiment.log_every = 5",
              "Experiment.checkpoint_every = 1000000000", f"Experiment.eval_batches = {args.eval_windows}",
              f"Experiment.jit_compile = {jit}"]
    if args.data_dir:
        params.append(f"Experiment.data_dir = {args.data_dir!r}")
    if args.local_text_dir:
        params.append(f"Experiment.data_options = {{'local_text_dir': {args.local_text_dir!r}}}")
    return params


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


def held_out_bytes(experiment, eval_windows):
    """The bytes the evaluation scores: the first `eval_windows` windows of the validation split, unpadded."""
    from common import train

    dataset = train.make_dataset(experiment, experiment.eval_split, training=False).take(eval_windows)
    return b"".join(bytes(batch["token_ids"].numpy()[batch["weights"].numpy() > 0].astype("uint8").tolist())
                    for batch in dataset)


def train_and_score(config, jit, args):
    """Trains one (config, jit) for the budget in this process, then scores the held-out windows."""
    import tensorflow as tf

    from common import train

    experiment = train.parse_config([], experiment_params(config, jit, args))
    with tempfile.TemporaryDirectory(prefix=f"quality_{config}_") as model_dir:
        start_wall, start_cpu = time.time(), harness.process_cpu_s()
        train.train(experiment, model_dir)
        train_wall, train_cpu = time.time() - start_wall, harness.process_cpu_s() - start_cpu
        checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        steps = int(tf.train.load_variable(checkpoint, "step/.ATTRIBUTES/VARIABLE_VALUE"))
        results = train.evaluate(experiment, model_dir)
        curve = training_curve(os.path.join(model_dir, "train"), start_wall)
    text = held_out_bytes(experiment, args.eval_windows)
    return {"steps": steps, "train_wall_s": train_wall, "train_cpu_s": train_cpu,
            "tokens_per_s": steps * args.sequence_length / train_wall, "bits_per_byte": results["bits_per_token"],
            "held_out_tokens": results["tokens"], "held_out_bytes": len(text),
            "xz_bits_per_byte": 8.0 * len(lzma.compress(text, preset=9)) / len(text),
            "curve": curve}


def run_one(config, jit, args):
    """One (config, jit) in a fresh process; its numbers or a status saying why not."""
    cmd = [sys.executable, "-m", "benchmarks.quality", f"--worker={config}", f"--jit={'on' if jit else 'off'}",
           f"--budget_s={args.budget_s}", f"--eval_windows={args.eval_windows}",
           f"--sequence_length={args.sequence_length}"] + [
               f"--{name}={getattr(args, name)}" for name in ("data_dir", "local_text_dir") if getattr(args, name)]
    return harness.run_guarded(cmd, args.budget_s + args.timeout, args.memory_limit_gib * harness.GIB)


def report(records, xz, held_out, args, command, date, wall_s):
    """The Markdown report: per (config, jit), steps, speed, CPU-minutes and held-out bits per byte vs xz -9."""
    lines = [f"# Quality per CPU-minute at {args.sequence_length:,} tokens of context", "",
             f"- Machine: {harness.machine()}",
             f"- Models: 2 layers, d={families.HIDDEN}, {families.HEADS} heads of {families.HEAD_DIM}, FFN "
             f"{families.FFN}, bytes (benchmarks.families; routing with causal assignment); sequence "
             f"{args.sequence_length}, batch 1, Adam 1e-3 after {WARMUP_STEPS} warm-up steps, clip 1.0.",
             f"- Budget: {args.budget_s:g} s of wall-clock training each (tracing and compilation included), on "
             f"the train split of {args.local_text_dir or 'the local corpus (Python standard library)'}.",
             f"- Held-out: the first {args.eval_windows} windows of {args.sequence_length} bytes of the validation "
             f"split, {held_out:,} bytes; xz -9 on the same bytes: **{xz:.3f} bits/byte**."
             if xz else "- Held-out: not measured.",
             f"- Run: `{command}`, {date}, wall time {wall_s:.0f} s; each run in a fresh process.", "",
             "| config | jit | steps | tokens/s | CPU-minutes | held-out bits/byte | vs xz -9 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        jit = "on" if r["jit"] else "off"
        if r["status"] != "ok":
            lines.append(f"| {r['config']} | {jit} | {r['status']} | | | | |")
            continue
        lines.append(f"| {r['config']} | {jit} | {r['steps']:,} | {r['tokens_per_s']:,.0f} | "
                     f"{r['train_cpu_s'] / 60:.1f} | {r['bits_per_byte']:.3f} | {r['bits_per_byte'] / xz:.2f}x |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=harness.comma_list(str), default=list(CONFIGS))
    parser.add_argument("--jit", choices=("both", "on", "off"), default="both")
    parser.add_argument("--budget_s", type=float, default=180.0, help="wall-clock training seconds per run")
    parser.add_argument("--sequence_length", type=int, default=4096, help="context of training and scoring")
    parser.add_argument("--eval_windows", type=int, default=64, help="held-out windows of --sequence_length bytes")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (default ~/tensorflow_datasets)")
    parser.add_argument("--local_text_dir", default=None, help="folder of text files (default: the Python stdlib)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed beyond the budget per run")
    parser.add_argument("--memory_limit_gib", type=float, default=20)
    parser.add_argument("--output", default=os.path.join(harness.RESULTS_DIR, "quality"),
                        help="path stem of the .md/.json results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if args.budget_s <= 0 or args.eval_windows < 1:
        parser.error("--budget_s must be > 0 and --eval_windows >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        result = train_and_score(args.worker, args.jit == "on", args)
        print(harness.RESULT_TAG + json.dumps(result), flush=True)
        return
    command = "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv)
    date = datetime.datetime.now().isoformat(timespec="seconds")
    start = time.time()
    jits = {"both": (True, False), "on": (True,), "off": (False,)}[args.jit]
    records = []
    for config in args.configs:
        for jit in jits:
            records.append({"config": config, "jit": jit, **run_one(config, jit, args)})
            r = records[-1]
            print(f"{config} jit={jit}: " + (f"{r['steps']} steps, {r['bits_per_byte']:.3f} bits/byte"
                                             if r["status"] == "ok" else r["status"] + " " + r.get("error", "")),
                  file=sys.stderr, flush=True)
    measured = [r for r in records if r["status"] == "ok"]
    if len({(r["held_out_bytes"], r["xz_bits_per_byte"]) for r in measured}) > 1:
        raise RuntimeError("the runs scored different held-out bytes; the comparison would be meaningless")
    xz = measured[0]["xz_bits_per_byte"] if measured else None
    held_out = measured[0]["held_out_bytes"] if measured else 0
    text = report(records, xz, held_out, args, command, date, time.time() - start)
    print(text)
    raw = {"machine": harness.machine(), "command": command, "date": date,
           "settings": {"sequence_length": args.sequence_length, "budget_s": args.budget_s,
                        "eval_windows": args.eval_windows,
                        "model": f"2 layers, d={families.HIDDEN}, {families.HEADS} heads, FFN {families.FFN}, bytes"},
           "held_out_bytes": held_out, "xz_bits_per_byte": xz, "records": records}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    harness.write_atomically(args.output + ".md", text)
    harness.write_atomically(args.output + ".json", json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
