"""A whole training step of a gin experiment under several settings ("arms"), on this machine.

    python -m benchmarks.train_step [--gin_file=quickstart.gin] [--steps=40] [--warmup=5] [--rounds=3]
        [--arm 'NAME=BINDING; BINDING'] ... [--output=benchmarks/results/NAME]

Without --arm the arms are `jit_compile` on and off (the trainer's default, `Experiment.jit_compile`, is chosen
from this). Each arm runs in a fresh process (same model, optimizer, data and seed) and the arms take turns,
round after round, so that a machine whose speed drifts slows every arm alike. An arm's figure is the median
wall time per step after the warm-up (the first steps trace and compile); its ratio to the first arm is taken
round by round and reported as the median with its range. --output writes NAME.json and NAME.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import harness

DEFAULT_ARMS = ("jit on=Experiment.jit_compile = True", "jit off=Experiment.jit_compile = False")


def training_step(gin_files, bindings):
    """An experiment's training step as the trainer builds it (model, built optimizer, the step traced or
    compiled per `Experiment.jit_compile` on its first call): (experiment, step, iterator of training batches)."""
    from apps import gin_experiment
    from apps.steps import make_train_step

    experiment = gin_experiment.parse_config(list(gin_files), list(bindings))
    model, _ = gin_experiment.build_model(experiment)
    optimizer = gin_experiment.make_optimizer(experiment, model)
    step = make_train_step(model, optimizer, experiment.clip_norm, experiment.jit_compile)
    return experiment, step, iter(gin_experiment.make_dataset(experiment, "train", training=True))


def measure(gin_file, bindings, steps, warmup):
    """Times `steps` training steps after `warmup` ones in this process; returns the numbers."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    experiment, step, batches = training_step([gin_file], bindings)
    for _ in range(warmup):
        step(next(batches))["loss"].numpy()
    walls, cpus = [], []
    for _ in range(steps):
        batch = next(batches)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        step(batch)["loss"].numpy()
        walls.append(time.perf_counter() - start_wall)
        cpus.append(time.process_time() - start_cpu)
    tokens = experiment.batch_size * experiment.sequence_length
    return {"wall_ms": 1000 * statistics.median(walls), "cpu_ms": 1000 * statistics.median(cpus),
            "tokens_per_second": tokens / statistics.median(walls), "jit_compile": experiment.jit_compile}


def parse_arm(text):
    """'NAME=BINDING; BINDING' -> (name, [bindings]); a binding is itself 'Key = value'."""
    name, separator, bindings = text.partition("=")
    if not separator or not name.strip():
        raise ValueError(f"--arm {text!r}: expected 'NAME=BINDING; BINDING' (e.g. 'jit off=Experiment.jit_compile "
                         f"= False')")
    return name.strip(), [b.strip() for b in bindings.split(";") if b.strip()]


def run_arm(args, bindings):
    """One measurement of an arm in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.train_step", f"--gin_file={args.gin_file}",
                          f"--steps={args.steps}", f"--warmup={args.warmup}", "--worker",
                          *[f"--binding={b}" for b in bindings]],
                         capture_output=True, text=True)
    result = harness.last_line(out.stdout, harness.RESULT_TAG)
    if out.returncode or not result:
        raise RuntimeError(f"the worker failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}")
    return json.loads(result[len(harness.RESULT_TAG):])


def summarize(arms, rounds):
    """Per arm: the median of its rounds, and its per-round ratio to the first arm (median, min, max)."""
    first = [r[arms[0][0]]["wall_ms"] for r in rounds]
    summary = []
    for name, bindings in arms:
        walls = [r[name]["wall_ms"] for r in rounds]
        ratios = [w / f for w, f in zip(walls, first)]
        summary.append({"arm": name, "bindings": bindings, "wall_ms": statistics.median(walls),
                        "cpu_ms": statistics.median(r[name]["cpu_ms"] for r in rounds),
                        "tokens_per_second": statistics.median(r[name]["tokens_per_second"] for r in rounds),
                        "ratio_to_first": statistics.median(ratios), "ratio_min": min(ratios),
                        "ratio_max": max(ratios)})
    return summary


def report(args, summary):
    lines = [f"# Training step of {args.gin_file}", "",
             f"{args.steps} steps after {args.warmup} warm-up, median per arm over {args.rounds} alternating rounds, "
             f"CPU, {os.cpu_count()} cores. Ratio: wall time per step over the first arm's in the same round "
             f"(median, range).", "",
             "| arm | bindings | wall ms/step | CPU ms/step | tokens/s | vs first |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for s in summary:
        lines.append(f"| {s['arm']} | {'; '.join(s['bindings']) or '(preset)'} | {s['wall_ms']:.1f} | "
                     f"{s['cpu_ms']:.1f} | {s['tokens_per_second']:,.0f} | {s['ratio_to_first']:.3f} "
                     f"({s['ratio_min']:.3f}-{s['ratio_max']:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", default="quickstart.gin")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arm", action="append", help="'NAME=BINDING; BINDING' (repeatable)")
    parser.add_argument("--output", help="write OUTPUT.json and OUTPUT.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--binding", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(harness.RESULT_TAG + json.dumps(measure(args.gin_file, args.binding, args.steps, args.warmup)), flush=True)
        return
    if min(args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    try:
        arms = [parse_arm(text) for text in (args.arm or DEFAULT_ARMS)]
    except ValueError as error:
        parser.error(str(error))
    if len({name for name, _ in arms}) != len(arms):
        parser.error("every --arm needs its own NAME")
    rounds = []
    for index in range(args.rounds):
        rounds.append({name: run_arm(args, bindings) for name, bindings in arms})
        print(f"round {index + 1}/{args.rounds}: " + ", ".join(
            f"{name} {rounds[-1][name]['wall_ms']:.1f} ms" for name, _ in arms), flush=True)
    summary = summarize(arms, rounds)
    text = report(args, summary)
    print(text)
    if args.output:
        command = "python -m benchmarks.train_step " + " ".join(
            a if " " not in a else repr(a) for a in (argv if argv is not None else sys.argv[1:]))
        harness.write_atomically(args.output + ".json", json.dumps(
            {"gin_file": args.gin_file, "steps": args.steps, "warmup": args.warmup, "cores": os.cpu_count(),
             "command": command, "rounds": rounds, "summary": summary}, indent=1))
        harness.write_atomically(args.output + ".md", text)


if __name__ == "__main__":
    main()
