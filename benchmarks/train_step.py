"""A whole training step of a gin experiment with jit_compile on and off, on this machine.

    python -m benchmarks.train_step [--gin_file=quickstart.gin] [--steps=20]

Each setting runs in a fresh process (same model, optimizer, data and seed); the report gives the median
wall time and CPU time per step after the warm-up (the first steps trace and compile) and the ratio
off/on, measured in the same run. The trainer's default (`Experiment.jit_compile`) is chosen from this.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

RESULT_TAG = "BENCHMARK_RESULT "


def measure(gin_file, jit, steps, warmup):
    """Times `steps` training steps after `warmup` ones in this process; returns the numbers."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from apps import gin_experiment
    from apps.steps import make_train_step

    experiment = gin_experiment.parse_config([gin_file], [f"Experiment.jit_compile = {jit}"])
    model, _ = gin_experiment.build_model(experiment)
    optimizer = experiment.optimizer(learning_rate=experiment.learning_rate)
    optimizer.build(model.trainable_variables)
    step = make_train_step(model, optimizer, experiment.clip_norm, experiment.jit_compile)
    batches = iter(gin_experiment.make_dataset(experiment, "train", training=True))
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
            "tokens_per_second": tokens / statistics.median(walls)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_file", default="quickstart.gin")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker_jit", choices=["True", "False"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_jit:
        print(RESULT_TAG + json.dumps(measure(args.gin_file, args.worker_jit == "True", args.steps, args.warmup)))
        return
    results = {}
    for jit in ("True", "False"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.train_step", f"--gin_file={args.gin_file}",
                              f"--steps={args.steps}", f"--warmup={args.warmup}", f"--worker_jit={jit}"],
                             capture_output=True, text=True, check=True).stdout
        results[jit] = json.loads([l for l in out.splitlines() if l.startswith(RESULT_TAG)][-1][len(RESULT_TAG):])
    print(f"training step of {args.gin_file} ({args.steps} steps after {args.warmup} warm-up, CPU, "
          f"{os.cpu_count()} cores)")
    print("| jit_compile | wall ms/step | CPU ms/step | tokens/s |\n| --- | ---: | ---: | ---: |")
    for jit, r in results.items():
        print(f"| {jit} | {r['wall_ms']:.1f} | {r['cpu_ms']:.1f} | {r['tokens_per_second']:,.0f} |")
    print(f"off/on wall-time ratio: {results['False']['wall_ms'] / results['True']['wall_ms']:.2f}x")


if __name__ == "__main__":
    main()
