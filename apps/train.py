"""Train and evaluate any zoo model from gin files.

    python -m apps.train --gin_file=gin_configs/quickstart.gin --model_dir=DIR [--gin_param=...]
    python -m apps.train --gin_file=... --model_dir=DIR --mode=eval

Training resumes from the latest checkpoint in `model_dir` with the same step, optimizer state and data
position (the tf.data iterator is part of the checkpoint). Checkpoints are written by
`tf.train.CheckpointManager` (files first, then the atomic update of the `checkpoint` index), with
`operative_config.gin` beside them; a damaged newest checkpoint is skipped for the newest readable one, with a
line saying so (`apps.checkpoints`). Bad input (missing gin file, unknown binding, unprepared dataset,
checkpoint of another model shape, a sequence length the attention cannot take) ends with a one-line error
and a non-zero exit code, and never overwrites a checkpoint.

Distributed (`--strategy=mirrored | multi_worker | tpu`, see `apps.distribute`): the same gin file trains
on every replica of a tf.distribute strategy with the results of one device at the same global batch. Each
replica takes its share of the global batch, its loss is scaled so that the replicas' gradients sum to the
global one, and only the chief writes checkpoints, summaries, the operative config and evaluation results
(other workers save to a temporary directory that they delete). Checkpoints hold no trace of the strategy: any
strategy resumes them.

This module is the loop and the command; the experiment and what it builds are `apps.gin_experiment`, the
compiled steps `apps.steps`, evaluation `apps.evaluation`, checkpoints and `load_trained_model`
`apps.checkpoints`.
"""

import contextlib
import math
import os
import shutil
import sys
import tempfile
import time

if __name__ == "__main__":  # the command line, checked before TensorFlow loads (apps.command_line)
    from apps import command_line
    command_line.start("train")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from apps import (checkpoints, command_line, console, curves, distribute, errors, evaluation,  # noqa: E402
                  gin_experiment, steps)

FLAGS = flags.FLAGS


def train(experiment, model_dir, strategy=None):
    """Trains to `experiment.train_steps` (or for `experiment.train_seconds`) under `strategy` (default: one
    device), resuming from the latest checkpoint in model_dir."""
    strategy = strategy or tf.distribute.get_strategy()
    distribute.check_replicas(experiment, strategy)
    with strategy.scope():
        model, info = gin_experiment.build_model(experiment)
        learning_rate = experiment.learning_rate
        optimizer = gin_experiment.make_optimizer(experiment, model)
    iterator = iter(gin_experiment.make_dataset(experiment, "train", training=True))
    step = tf.Variable(0, dtype=tf.int64, name="step")
    checkpoint = checkpoints.make_checkpoint(model, optimizer, step, iterator)
    directory = os.path.join(model_dir, "checkpoints")
    chief = strategy.extended.should_checkpoint
    if chief and tf.io.gfile.isdir(directory):
        for name in checkpoints.remove_partial_saves(directory):
            print(f"removed {os.path.join(directory, name)}, left by a save that was interrupted", flush=True)
    resumed = checkpoints.restore(checkpoint, directory, move_aside=chief)  # Every worker resumes from the chief's.
    if resumed:
        print(f"resumed from {resumed} at step {int(step.numpy())}", flush=True)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=experiment.keep_checkpoints)
    train_step = steps.make_train_step(model, optimizer, experiment.clip_norm, experiment.jit_compile, strategy)
    writer = distribute.summary_writer(strategy, os.path.join(model_dir, "train"))
    start_step, start_time = int(step.numpy()), time.time()
    clock_offset = curves.train_seconds_at(model_dir, start_step)  # a resumed run's clock goes on
    evaluating_s = 0.0  # in-loop evaluation, left out of the training clock
    window_tokens, window_time = 0.0, time.time()
    out_of_time = False
    eval_step = None  # compiled at the first in-loop evaluation, reused by the later ones
    while int(step.numpy()) < experiment.train_steps and not out_of_time:
        metrics = train_step(next(iterator))
        step.assign_add(1)
        current = int(step.numpy())
        window_tokens += experiment.batch_size * experiment.sequence_length
        trained_s = time.time() - start_time - evaluating_s
        out_of_time = bool(experiment.train_seconds) and trained_s >= experiment.train_seconds
        last = current == experiment.train_steps or out_of_time
        if current % experiment.log_every == 0 or last:
            elapsed = time.time() - window_time
            tokens_per_second = window_tokens / max(elapsed, 1e-9)
            done = current - start_step
            remaining = (time.time() - start_time) / max(done, 1) * (experiment.train_steps - current)
            if experiment.train_seconds:
                remaining = min(remaining, max(0.0, experiment.train_seconds - (time.time() - start_time)))
            bits = float(metrics["cross_entropy"]) / math.log(2.0)
            lr = learning_rate(current) if callable(learning_rate) else learning_rate
            print(f"step {current}/{experiment.train_steps}  loss {float(metrics['loss']):.4f}  "
                  f"bits/token {bits:.4f}  tokens/s {tokens_per_second:,.0f}  "
                  f"time left {console.duration(remaining)}", flush=True)
            with writer.as_default(step=current):
                tf.summary.scalar("loss", metrics["loss"])
                tf.summary.scalar("bits_per_token", bits)
                tf.summary.scalar("learning_rate", float(lr))
                tf.summary.scalar("tokens_per_second", tokens_per_second)
                tf.summary.scalar("train_seconds", clock_offset + trained_s)
                for name, value in getattr(model, "summaries", dict)().items():
                    tf.summary.scalar(name, value)
            window_tokens, window_time = 0.0, time.time()
        if current % experiment.checkpoint_every == 0 or last:
            save(checkpoint, manager, model_dir, current, strategy)
        if experiment.eval_every and current % experiment.eval_every == 0 and not last:
            eval_start = time.time()
            eval_step = eval_step or steps.make_eval_step(model, experiment, strategy)
            with evaluation.averaged_weights(model, optimizer) if experiment.eval_ema else contextlib.nullcontext():
                results = evaluation.evaluate_model(model, info, experiment, current, model_dir, strategy,
                                                    train_seconds=clock_offset + trained_s, eval_step=eval_step)
            print(f"step {current}  eval bits/token {results['bits_per_token']:.4f}", flush=True)
            evaluating_s += time.time() - eval_start
            window_time += time.time() - eval_start
    if out_of_time:
        print(f"stopped at step {int(step.numpy())}: train_seconds = {experiment.train_seconds:g} spent", flush=True)
    writer.flush()
    if strategy.extended.should_save_summary:
        curves.write_curves_png(model_dir)
    return model


def save(checkpoint, manager, model_dir, step, strategy):
    """The chief writes the checkpoint (through `manager`) and the operative gin_experiment. Another worker saves too
    (saving can involve collective ops), into a temporary directory that it deletes."""
    if strategy.extended.should_checkpoint:
        manager.save(checkpoint_number=step)
        checkpoints.write_atomically(os.path.join(model_dir, "operative_config.gin"), gin.operative_config_str())
        return
    directory = tempfile.mkdtemp(prefix="worker_checkpoint_")
    try:
        tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1).save(checkpoint_number=step)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(gin_files, gin_params, model_dir, mode, strategy="default", tpu="local"):
    """What `python -m apps.train` does; `strategy` names a `apps.distribute` strategy."""
    try:  # First: MultiWorkerMirroredStrategy must be created before TensorFlow runs anything.
        distribution = distribute.make_strategy(strategy, tpu)
    except ValueError as error:
        raise errors.UserError(errors.first_line(error)) from error
    experiment = gin_experiment.parse_config(gin_files, gin_params)
    os.makedirs(model_dir, exist_ok=True)
    if mode in ("train", "train_and_eval"):
        train(experiment, model_dir, distribution)
        print(f"checkpoints: {model_dir}/checkpoints  TensorBoard: tensorboard --logdir {model_dir}  "
              f"operative config: {model_dir}/operative_config.gin", flush=True)
    if mode in ("eval", "train_and_eval"):
        results = evaluation.evaluate(experiment, model_dir, distribution)
        print("eval: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in results.items()), flush=True)
        return results
    return None


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # progress and errors are printed; library warnings are noise here
    try:
        run(FLAGS.gin_file, FLAGS.gin_param, FLAGS.model_dir, FLAGS.mode, FLAGS.strategy, FLAGS.tpu)
    except errors.UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main, flags_parser=command_line.parsed_argv)
