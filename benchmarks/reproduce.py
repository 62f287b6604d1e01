"""The papers' claims in miniature: trains every arm of every claim (benchmarks.claims) on local text and writes
benchmarks/results/reproduce.md, reproduce.json, learning-curve PNGs and the README's section "The papers'
claims, in miniature".

    make reproduce                                    # every claim: 1 h 52 min on 2 CPU cores (measured)
    python -m benchmarks.reproduce --claims=routing   # some claims; finished runs are kept and skipped
    python -m benchmarks.reproduce --local_text_dir=DIR   # your own text (any directory of text files)
    python -m benchmarks.reproduce --quick            # tiny models, a few steps: a smoke test of the harness

Protocol, the same for every arm of a claim:
- Every run: its claim's steps (benchmarks.claims; --steps overrides) (Adam, 10% linear warm-up, cosine to 10%,
  clip 1.0); seed s gives every arm the same
  initialisation seed and data order, so arms see the same tokens. It is scored on the test split (never
  trained or tuned on: --eval_windows windows of the claim's context, at --evals points during training and at
  the end) and, at the end, on the validation split.
- One learning-rate sweep at full length: seed 0 of every arm at each --learning_rates; each arm's rate is the
  one with the best validation bits, and its seed-0 run is that sweep run. Seeds 1.. train at that rate.
  (A short sweep favours high rates that a full run does not survive: 25-step sweeps picked 8e-3 for every
  routing arm, at which local attention was unstable over 100 steps.) The default is one rate, 2e-3, for every
  arm (between the rates the cpu_small presets' validation sweeps chose at d=128: 1e-3 for 8,000 steps, 2e-3 for
  7,000 and 3.5e-3 for 1,100): no sweep, which keeps `make reproduce` to 2 seeds per arm within 2 hours;
  --learning_rates=2e-3,4e-3 sweeps (a wider sweep reuses the runs at rates it shares with a narrower one).
  The committed results sweep every claim over 1e-3, 2e-3 and 4e-3 (the report's sweep tables).
- Two views: equal steps (the last evaluation) and equal training time: each run's held-out curve against
  steps x its arm's seconds per step, read at the training seconds of the arm that finishes first (compilation
  and evaluation are not counted). The seconds per step come from one paired timing per claim, not from the
  runs: every arm's step is built and compiled in one process and timed in rounds, the arms in turn, so each arm
  sees the machine at the same speed (this machine's speed moves between days by up to 1.4x, and a claim's runs
  can be days apart). `--retime` times the selected claims again.
Runs are recorded in the JSON as they finish, keyed by claim, arm, learning rate, seed and the settings that
shape a run; a rerun does only what is missing. Each run trains in a fresh process (--quick: in this one,
with tf.functions run eagerly, since tracing would cost more than a few steps of a tiny model).
"""

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import itertools
import json
import lzma
import math
import os
import sys
import time

from benchmarks import harness
from benchmarks import claims as claim_specs
from benchmarks import reproduce_report
from benchmarks import train_step

README = os.path.join(harness.REPO_ROOT, "README.md")
DEFAULT_OUTPUT = os.path.join(harness.RESULTS_DIR, "reproduce")


class UsageError(Exception):
    """Bad command-line input; reported as one line."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What shapes a run besides its claim, arm, learning rate and seed."""

    scale: str
    steps: int  # None: each claim's own (`claim_settings`)
    learning_rates: tuple
    evals: int
    eval_windows: int
    jit: bool
    local_text_dir: str

    def key(self):
        """What a run's result depends on: every field but the swept rates (a run's own rate is in its key), so
        a wider sweep reuses the runs it shares with a narrower one."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "learning_rates"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def run_key(settings, claim, arm, learning_rate, seed):
    settings_key = reproduce_report.claim_settings(settings, claim).key()
    return f"{claim}/{arm}/lr={learning_rate:g}/seed={seed}/{claim_specs.runs_key(settings_key, claim)}"


def experiment_params(settings, claim, arm, learning_rate, seed, data_dir=None):
    """Gin bindings of one run: the test split scored at `settings.evals` points and at the end."""
    size = claim_specs.CLAIMS[claim].sizes[settings.scale]
    steps = reproduce_report.claim_settings(settings, claim).steps
    eval_every = max(1, steps // settings.evals)
    params = [
        "Experiment.model = @benchmarks.claims.build_arm", f"build_arm.claim = {claim!r}", f"build_arm.arm = {arm!r}",
        f"build_arm.scale = {settings.scale!r}", f"build_arm.seed = {seed}", f"Experiment.seed = {seed}",
        "Experiment.dataset = 'local_text'", f"Experiment.sequence_length = {size.sequence_length}",
        f"Experiment.batch_size = {size.batch_size}", f"Experiment.train_steps = {steps}",
        "Experiment.optimizer = @keras.optimizers.Adam", "Experiment.learning_rate = @common.WarmupCosine()",
        f"WarmupCosine.peak = {learning_rate!r}", f"WarmupCosine.warmup_steps = {max(1, steps // 10)}",
        f"WarmupCosine.total_steps = {steps}", "WarmupCosine.final_fraction = 0.1", "Experiment.clip_norm = 1.0",
        f"Experiment.log_every = {max(1, steps // 40)}", f"Experiment.checkpoint_every = {steps}",
        "Experiment.eval_split = 'test'",
        f"Experiment.eval_batches = {math.ceil(settings.eval_windows / size.batch_size)}",
        f"Experiment.eval_every = {eval_every}", f"Experiment.jit_compile = {settings.jit}"]
    if data_dir:
        params.append(f"Experiment.data_dir = {data_dir!r}")
    if settings.local_text_dir:
        params.append(f"Experiment.data_options = {{'local_text_dir': {settings.local_text_dir!r}}}")
    return params


def seconds_per_step(train_curve):
    """Training seconds per step after the first logged step (which carries tracing and compilation)."""
    timed = [(step, seconds) for step, seconds, _ in train_curve if seconds is not None]
    if len(timed) < 2:
        return timed[-1][1] / max(timed[-1][0], 1) if timed else None
    (first_step, first_s), (last_step, last_s) = timed[0], timed[-1]
    return (last_s - first_s) / (last_step - first_step)


def train_run(settings, claim, arm, learning_rate, seed, data_dir=None):
    """Trains and scores one run in this process (test split, then validation); returns its record. The trained
    model is scored as it is, by one compiled evaluation step for both splits: rebuilding it from the checkpoint
    for each would build the model and compile the step twice."""
    import tempfile

    import tensorflow as tf

    from apps import curves, evaluation, gin_experiment, steps, train

    experiment = gin_experiment.parse_config([], experiment_params(settings, claim, arm, learning_rate, seed, data_dir))
    with tempfile.TemporaryDirectory(prefix=f"reproduce_{claim}_{arm}_") as model_dir:
        before = harness.cpu_seconds()
        model = train.train(experiment, model_dir)
        others_share = harness.others_cpu_share(before, harness.cpu_seconds())
        train_curve = curves.curve(curves.read_scalars(os.path.join(model_dir, "train")))
        info = gin_experiment.dataset_info(experiment)
        eval_step = steps.make_eval_step(model, experiment, tf.distribute.get_strategy())
        step, seconds = train_curve[-1][0], train_curve[-1][1]
        results = evaluation.evaluate_model(model, info, experiment, step, model_dir, train_seconds=seconds,
                                            eval_step=eval_step)
        eval_curve = curves.curve(curves.read_scalars(os.path.join(model_dir, "eval")))
        on_validation = dataclasses.replace(experiment, eval_split="validation")
        validation = evaluation.evaluate_model(model, info, on_validation, step,
                                               os.path.join(model_dir, "validation"), eval_step=eval_step)
    parameters = int(sum(math.prod(v.shape) for v in model.trainable_variables))
    return {"claim": claim, "arm": arm, "learning_rate": learning_rate, "seed": seed,
            "steps": results["step"], "tokens": results["step"] * experiment.batch_size * experiment.sequence_length,
            "parameters": parameters, "split": results["split"], "held_out_tokens": results["tokens"],
            "bits_per_byte": results["bits_per_token"], "validation_bits_per_byte": validation["bits_per_token"],
            "train_seconds": train_curve[-1][1],
            "seconds_per_step": seconds_per_step(train_curve), "others_cpu_share": others_share,
            "train_curve": train_curve,
            "eval_curve": eval_curve}


# Paired timing (`time_arms`): rounds, and steps of each arm per round (~10 s at full scale on 2 cores).
TIMING = {"full": dict(rounds=5, steps=12), "quick": dict(rounds=2, steps=1)}


def time_arms(settings, claim, data_dir=None):
    """Seconds per training step of every arm of `claim`, timed back to back in this process: each arm's model,
    optimizer and compiled step (its seed-0 run's) are built and compiled first, then every round times
    `TIMING` steps of each arm in turn, the order rotating between rounds. Returns {"arms": {arm: [s/step of
    each round]}, "others_cpu_share", "rounds", "steps_per_round"}."""
    arms = list(claim_specs.CLAIMS[claim].arms)
    prepared = {}
    for arm in arms:
        params = experiment_params(settings, claim, arm, settings.learning_rates[0], 0, data_dir)
        _, step, batches = train_step.training_step([], params)
        batches = list(itertools.islice(batches, 2))
        float(step(batches[0])["loss"])  # traced and compiled before the timing
        prepared[arm] = step, batches
    rounds, count = TIMING[settings.scale]["rounds"], TIMING[settings.scale]["steps"]
    times = {arm: [] for arm in arms}
    harness.wait_for_idle(60)
    before = harness.cpu_seconds()
    for index in range(rounds):
        for arm in arms[index % len(arms):] + arms[:index % len(arms)]:
            step, batches = prepared[arm]
            started = time.perf_counter()
            for n in range(count):
                outputs = step(batches[n % len(batches)])
            float(outputs["loss"])
            times[arm].append((time.perf_counter() - started) / count)
    return {"arms": times, "others_cpu_share": harness.others_cpu_share(before, harness.cpu_seconds()),
            "rounds": rounds, "steps_per_round": count}


def held_out_text(settings, claim, data_dir=None):
    """The test-split bytes a claim's evaluation scores (its first eval_windows windows, unpadded)."""
    from apps import evaluation, gin_experiment

    arm = next(iter(claim_specs.CLAIMS[claim].arms))
    experiment = gin_experiment.parse_config([], experiment_params(settings, claim, arm, 1e-3, 0, data_dir))
    return evaluation.evaluated_bytes(experiment)


def split_sizes(settings, data_dir=None):
    """Bytes of the train, validation and test splits of the corpus."""
    from apps import data

    sizes = {}
    for split in ("train", "validation", "test"):
        sizes[split] = sum(len(text) for text in data.raw_split(
            "local_text", split, data_dir=data_dir, local_text_dir=settings.local_text_dir or None).as_numpy_iterator())
    return sizes


def check_corpus(settings, claim_names, data_dir=None):
    """UsageError (one line, naming both sizes) when a split is too small for a claim's context and evaluation."""
    try:
        sizes = split_sizes(settings, data_dir)
    except ValueError as error:  # e.g. a directory whose files leave a split empty
        raise UsageError(str(error).splitlines()[0]) from error
    where = settings.local_text_dir or "the local corpus"
    for name in claim_names:
        size = claim_specs.CLAIMS[name].sizes[settings.scale]
        needs = {"test": settings.eval_windows * size.sequence_length,
                 "validation": settings.eval_windows * size.sequence_length,
                 "train": size.batch_size * size.sequence_length}
        for split, needed in needs.items():
            if sizes[split] < needed:
                raise UsageError(
                    f"{where}: its {split} split has {sizes[split]:,} bytes, but claim {name!r} needs {needed:,} "
                    f"({settings.eval_windows if split != 'train' else size.batch_size} windows of "
                    f"{size.sequence_length:,} tokens); use a larger directory or fewer --eval_windows")
    return sizes


@contextlib.contextmanager
def eager_functions():
    """Runs tf.functions eagerly (for --quick: a few steps of tiny models cost less than tracing them)."""
    import tensorflow as tf

    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(before)


def time_claim(name, settings, args, results, log):
    """The paired timing of `name`'s arms (`time_arms`), recorded in `results` unless it is there already and
    `--retime` was not given."""
    key = reproduce_report.timing_key(settings, name)
    costs = results.data.setdefault("step_costs", {})
    if key in costs and costs[key].get("status") == "ok" and not args.retime:
        return
    if args.in_process:
        with eager_functions():
            record = {"status": "ok", **time_arms(settings, name, args.data_dir)}
    else:
        record = run_in_subprocess(settings, dict(claim=name, timing=True), args)
    record["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    costs[key] = record
    results.save()
    log(f"{name} paired timing: " + (", ".join(f"{arm} {sum(t) / len(t):.3f}" for arm, t in record["arms"].items())
                                     + " s/step" if record["status"] == "ok" else
                                     f"{record['status']} {record.get('error', '')}"))


def run_in_subprocess(settings, spec, args):
    cmd = [sys.executable, "-m", "benchmarks.reproduce", "--worker=" + json.dumps(spec)] + settings_flags(args)
    return harness.run_guarded(cmd, args.timeout, args.memory_limit_gib * harness.GIB)


def settings_flags(args):
    flags = [f"--steps={args.steps}"] if args.steps else []
    flags += ["--learning_rates=" + ",".join(f"{lr!r}" for lr in args.learning_rates),
             f"--evals={args.evals}",
             f"--eval_windows={args.eval_windows}", f"--jit={'on' if args.jit else 'off'}"]
    flags += ["--quick"] if args.quick else []
    flags += [f"--{name}={getattr(args, name)}" for name in ("data_dir", "local_text_dir") if getattr(args, name)]
    return flags


class Results:
    """The JSON of every finished run, saved after each one (so an interrupted reproduction resumes)."""

    def __init__(self, path):
        self.path = path
        self.data = {"runs": {}, "held_out": {}}
        if os.path.exists(path):
            with open(path) as f:
                self.data = json.load(f)

    def get(self, key):
        return self.data["runs"].get(key)

    def put(self, key, record):
        self.data["runs"][key] = record
        self.save()

    def save(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        harness.write_atomically(self.path, json.dumps(self.data, indent=1) + "\n")


def run_claim(name, settings, args, results, log):
    """The sweep, then the seeds at each arm's best rate; records every run in `results`."""
    claim = claim_specs.CLAIMS[name]
    settings = reproduce_report.claim_settings(settings, name)

    def run(arm, learning_rate, seed):
        key = run_key(settings, name, arm, learning_rate, seed)
        record = results.get(key)
        if record is None or record.get("status") != "ok":
            spec = dict(claim=name, arm=arm, learning_rate=learning_rate, seed=seed)
            started = time.time()
            if args.in_process:
                with eager_functions():
                    record = {"status": "ok", **train_run(settings, data_dir=args.data_dir, **spec)}
            else:
                record = {**spec, **run_in_subprocess(settings, spec, args)}
            record["wall_s"] = time.time() - started
            results.put(key, dict(record, settings=dataclasses.asdict(settings)))
            log(f"{name}/{arm} lr={learning_rate:g} seed={seed}: " + (
                f"{record['bits_per_byte']:.4f} bits/byte (test), {record['validation_bits_per_byte']:.4f} "
                f"(validation), {record['steps']} steps, "
                f"{record['wall_s']:.0f} s" if record["status"] == "ok" else f"{record['status']} "
                                                                              f"{record.get('error', '')}"))
        return record

    best_rates = {}
    for arm in claim.arms:
        best_rates[arm] = reproduce_report.best_rate([run(arm, lr, 0) for lr in args.learning_rates])
        if best_rates[arm] is None:
            raise RuntimeError(f"claim {name!r}, arm {arm!r}: no run of the learning-rate sweep finished")
    for seed in range(1, args.seeds):
        for arm in claim.arms:
            run(arm, best_rates[arm], seed)
    held_out = results.data["held_out"]
    held_key = f"{name}/{settings.key()}"
    if held_key not in held_out:
        text = held_out_text(settings, name, args.data_dir)
        held_out[held_key] = {"bytes": len(text), "xz_bits_per_byte": 8.0 * len(lzma.compress(text, preset=9))
                              / max(len(text), 1)}
        results.save()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", default=",".join(claim_specs.CLAIMS),
                        help="comma-separated claims: " + ", ".join(claim_specs.CLAIMS))
    parser.add_argument("--quick", action="store_true", help="tiny models and a few steps (seconds)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per run (default: each claim's, benchmarks.claims)")
    parser.add_argument("--learning_rates", default=None,
                        help="the sweep's peak learning rates (default 2e-3: no sweep; quick 1e-3,3e-3)")
    parser.add_argument("--evals", type=int, default=None,
                        help="held-out evaluations during a run (default 6; quick 1)")
    parser.add_argument("--eval_windows", type=int, default=None, help="held-out windows per evaluation (16)")
    parser.add_argument("--jit", choices=("on", "off"), default=None, help="XLA (default on; quick off)")
    parser.add_argument("--local_text_dir", default=None, help="a directory of text files (default: Python stdlib)")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory (default ~/tensorflow_datasets)")
    parser.add_argument("--output", default=None, help="path stem of the .md/.json/PNG results "
                                                       "(default benchmarks/results/reproduce)")
    parser.add_argument("--readme", default=None, help="README whose section to rewrite (default: the "
                                                       "repository's, unless --quick or --output is given)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    parser.add_argument("--memory_limit_gib", type=float, default=20)
    parser.add_argument("--retime", action="store_true",
                        help="time the selected claims' arms again (the paired timing of the equal-time view)")
    parser.add_argument("--report_only", action="store_true",
                        help="rewrite the report (and README section) from the JSON, training nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = dict(seeds=2, learning_rates="1e-3,3e-3", evals=1, eval_windows=2, jit="off") if args.quick \
        else dict(seeds=2, learning_rates="2e-3", evals=6, eval_windows=16, jit="on")
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.jit = args.jit == "on"
    args.claims = [c.strip() for c in args.claims.split(",") if c.strip()]
    unknown = [c for c in args.claims if c not in claim_specs.CLAIMS]
    if unknown or not args.claims:
        raise UsageError(f"unknown claim {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
                         f"{', '.join(claim_specs.CLAIMS)}")
    try:
        args.learning_rates = [float(x) for x in args.learning_rates.split(",") if x.strip()]
    except ValueError as error:
        raise UsageError(f"--learning_rates={args.learning_rates!r} is not a list of numbers") from error
    if not args.learning_rates or min(args.learning_rates) <= 0:
        raise UsageError("--learning_rates needs at least one positive rate")
    if args.seeds < 1:
        raise UsageError(f"--seeds={args.seeds}: a comparison needs at least one seed (2 to report a spread)")
    for name in ("steps", "evals", "eval_windows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name}={getattr(args, name)} is too short to reach one evaluation; it must be "
                             f">= 1")
    settings = settings_of(args)
    for name in args.claims:
        steps = reproduce_report.claim_settings(settings, name).steps
        if steps < args.evals:
            raise UsageError(f"{steps} steps (claim {name!r}) are too short to reach {args.evals} evaluations "
                             f"(--evals); give at least as many --steps as evaluations")
    if args.local_text_dir and not os.path.isdir(args.local_text_dir):
        raise UsageError(f"--local_text_dir={args.local_text_dir!r} is not a directory")
    if args.readme and not os.path.isfile(args.readme):
        raise UsageError(f"--readme={args.readme!r} is not a file (the README whose section to rewrite)")
    args.in_process = args.quick
    return args


def settings_of(args):
    return Settings(scale="quick" if args.quick else "full", steps=args.steps,
                    learning_rates=tuple(args.learning_rates), evals=args.evals, eval_windows=args.eval_windows,
                    jit=args.jit,
                    local_text_dir=os.path.abspath(args.local_text_dir) if args.local_text_dir else "")


def quiet_libraries():
    """Progress is printed by this module; absl warnings and TFDS progress bars are noise here."""
    import tensorflow_datasets as tfds
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    tfds.disable_progress_bar()


def main(argv=None):
    try:
        args = parse_args(argv)
        quiet_libraries()
        settings = settings_of(args)
        if args.worker:
            spec = json.loads(args.worker)
            if spec.pop("timing", False):
                record = time_arms(settings, spec["claim"], args.data_dir)
            else:
                record = train_run(settings, data_dir=args.data_dir, **spec)
            print(harness.RESULT_TAG + json.dumps(record), flush=True)
            return
        output = args.output or DEFAULT_OUTPUT
        readme = args.readme or (None if args.quick or args.output else README)
        results = Results(output + ".json")
        if args.report_only:
            if not os.path.exists(results.path):
                raise UsageError(f"--report_only: no results at {results.path} (run the reproduction first)")
            reproduce_report.write(results.data, settings, output, readme)
            return
        for name in args.claims:
            claim_specs.check_parameter_counts(name, settings.scale)
        check_corpus(settings, args.claims, args.data_dir)
    except UsageError as error:
        sys.exit(f"error: {error}")
    command = "python -m benchmarks.reproduce " + " ".join(sys.argv[1:] if argv is None else argv)
    results.data["machine"] = harness.machine()
    results.data.setdefault("invocations", []).append(
        {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds")})

    def log(line):
        print(line, file=sys.stderr, flush=True)

    for name in args.claims:
        run_claim(name, settings, args, results, log)
        time_claim(name, settings, args, results, log)
    reproduce_report.write(results.data, settings, output, readme)


if __name__ == "__main__":
    main()
