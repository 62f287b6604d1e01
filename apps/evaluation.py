"""Evaluation of a trained model on the experiment's evaluation split: bits per token, and the papers' units
(bits per byte or dim, word perplexity) over a whole split; the bytes a compressor is compared on."""

import contextlib
import json
import math
import os
import time

import tensorflow as tf

from apps import checkpoints, console, curves, data, distribute, errors, gin_experiment, steps


@contextlib.contextmanager
def averaged_weights(model, optimizer):
    """The optimizer's moving average of the weights in the model for the duration, the trained ones after."""
    trained = [tf.identity(v) for v in model.trainable_variables]
    optimizer.finalize_variable_values(model.trainable_variables)
    try:
        yield
    finally:
        for variable, value in zip(model.trainable_variables, trained):
            variable.assign(value)


def evaluate(experiment, model_dir, strategy=None):
    """Evaluates the latest checkpoint on `experiment.eval_split` under `strategy` (default: one device); the
    chief writes eval_results.json and summaries."""
    strategy = strategy or tf.distribute.get_strategy()
    distribute.check_replicas(experiment, strategy)
    with strategy.scope():
        model, info = gin_experiment.build_model(experiment)
        optimizer = gin_experiment.make_optimizer(experiment, model) if experiment.eval_ema else None
    step = tf.Variable(0, dtype=tf.int64, name="step")
    objects = dict(checkpoints.model_objects(model), step=step)
    if optimizer is not None:  # its moving average of the weights is what is evaluated
        objects["optimizer"] = optimizer
    if checkpoints.restore(tf.train.Checkpoint(**objects), os.path.join(model_dir, "checkpoints")) is None:
        raise errors.UserError(f"no checkpoint in {model_dir}/checkpoints; train first (--mode=train).")
    if optimizer is not None:
        optimizer.finalize_variable_values(model.trainable_variables)  # evaluate the moving average
    current = int(step.numpy())
    results = evaluate_model(model, info, experiment, current, model_dir, strategy,
                             train_seconds=curves.train_seconds_at(model_dir, current), progress=True)
    if strategy.extended.should_checkpoint:
        checkpoints.write_atomically(os.path.join(model_dir, "eval_results.json"), json.dumps(results, indent=2) + "\n")
        curves.write_curves_png(model_dir)
    return results


def evaluate_model(model, info, experiment, step, model_dir, strategy=None, train_seconds=None, progress=False,
                   eval_step=None):
    """The model's metrics on `experiment.eval_split` (all of it, or `eval_batches` batches), also written as
    TensorBoard scalars under model_dir/eval at `step` (by the chief), with the `train_seconds` the model had
    trained for, if given (for curves against time). Every replica scores its share of each batch.
    progress: print batches done (and time left, when `eval_batches` says how many) as training does.
    eval_step: the model's `make_eval_step`, to reuse one across evaluations (default: a new one)."""
    strategy = strategy or tf.distribute.get_strategy()
    eval_step = eval_step or steps.make_eval_step(model, experiment, strategy)

    dataset = gin_experiment.make_dataset(experiment, experiment.eval_split, training=False)
    if experiment.eval_batches:
        dataset = dataset.take(experiment.eval_batches)
    total_nats = tokens = 0.0
    start, every = time.time(), max(1, (experiment.eval_batches or 500) // 10)
    for done, batch in enumerate(dataset, start=1):
        nats, count = eval_step(batch)
        total_nats += float(nats)
        tokens += float(count)
        if progress and done % every == 0:
            elapsed = time.time() - start
            left = (f"  time left {console.duration(elapsed / done * (experiment.eval_batches - done))}"
                    if experiment.eval_batches else "")
            print(f"eval {done}{'/' + str(experiment.eval_batches) if experiment.eval_batches else ''} batches  "
                  f"{tokens / elapsed:,.0f} tokens/s{left}", flush=True)
    results = {"step": step, "split": experiment.eval_split, "tokens": tokens,
               "bits_per_token": total_nats / max(tokens, 1.0) / math.log(2.0),
               "perplexity": math.exp(total_nats / max(tokens, 1.0))}
    if not experiment.eval_batches:
        results.update(unit_metrics(experiment, info, total_nats))
    writer = distribute.summary_writer(strategy, os.path.join(model_dir, "eval"))
    with writer.as_default(step=step):
        for name, value in results.items():
            if isinstance(value, float):
                tf.summary.scalar(name, value)
        if train_seconds is not None:
            tf.summary.scalar("train_seconds", train_seconds)
    writer.flush()
    return results


def evaluated_bytes(experiment):
    """The bytes that evaluating `experiment` scores (byte-level datasets): its `eval_batches` batches of the
    evaluation split (all of it when None), unpadded, in order; what a compressor is compared on."""
    dataset = gin_experiment.make_dataset(experiment, experiment.eval_split, training=False)
    if experiment.eval_batches:
        dataset = dataset.take(experiment.eval_batches)
    return b"".join(bytes(batch["token_ids"].numpy()[batch["weights"].numpy() > 0].astype("uint8").tolist())
                    for batch in dataset)


def unit_metrics(experiment, info, total_nats):
    """The papers' metrics from the summed nats: bits per byte/character, bits per dim, per-word perplexity."""
    units = data.evaluation_units(experiment.dataset, experiment.eval_split, data_dir=experiment.data_dir,
                                  **experiment.data_options)
    bits = total_nats / math.log(2.0)
    results = {}
    if units.get("bytes"):
        results["bits_per_byte"] = bits / units["bytes"]
    if units.get("dims"):
        results["bits_per_dim"] = bits / units["dims"]
    if units.get("words") and info.unit == "token":  # subword text: the word-level figure of the papers
        results["word_perplexity"] = math.exp(total_nats / units["words"])
    return results
