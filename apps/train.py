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
"""

import contextlib
import dataclasses
import json
import logging as pylogging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Optional

if __name__ == "__main__":  # the command line, checked before TensorFlow loads (apps.command_line)
    from apps import command_line
    command_line.start("train")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from apps import checkpoints, command_line, curves, data, distribute
from apps.configurables import register_configurables
from common.metrics import token_cross_entropy

GIN_CONFIGS = command_line.GIN_CONFIGS

FLAGS = flags.FLAGS


class UserError(Exception):
    """A problem with the user's input; reported as one line."""


@gin.configurable(module="train")
@dataclasses.dataclass
class Experiment:
    """What to train and how. Every field is bindable from gin as `Experiment.<field>`.

    model: a model class or factory (e.g. `@routing_transformer.RoutingTransformerLM`), called with
      `vocabulary_size` from the dataset.
    optimizer: an optimizer class (e.g. `@keras.optimizers.Adafactor`), called with `learning_rate`.
    learning_rate: a number or a schedule (e.g. `@common.RsqrtDecay()`).
    data_options: extra keyword arguments of `apps.data.make_dataset` (tokenizer, local_text_dir, ...).
    eval_every: evaluate every this many training steps (TensorBoard `eval/`); None only at the end with
      --mode=train_and_eval.
    eval_batches: evaluate on this many batches; None covers the whole split (needed for per-byte/per-word
      metrics).
    batch_size: the global batch; under a strategy, a multiple of the number of replicas.
    jit_compile: XLA-compile the training and evaluation steps; on one replica only (see `step_function`).
    train_seconds: also stop (with a checkpoint) once this run has trained this many seconds of wall-clock time,
      tracing and compilation included; for comparisons at an equal time budget (benchmarks.quality). A resumed
      run gets the budget anew. None: train_steps only.
    decay_matrices_only: weight decay on variables of rank >= 2 only (not on biases, norm gains, start vectors),
      as the released Sparse Transformer code decays.
    eval_ema: evaluate with the optimizer's exponential moving average of the weights (Polyak averaging, what
      the released Sparse Transformer image code evaluates); the optimizer must keep it (`<Optimizer>.use_ema =
      True`, `ema_momentum`). Training itself, sampling and export use the trained weights.
    """

    model: Optional[Callable] = None
    dataset: str = "local_text"
    sequence_length: int = 1024
    batch_size: int = 8
    train_steps: int = 1000
    optimizer: Callable = keras.optimizers.Adam
    learning_rate: Any = 1e-3
    clip_norm: Optional[float] = None
    log_every: int = 20
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    eval_split: str = "validation"
    eval_every: Optional[int] = None
    eval_batches: Optional[int] = None
    jit_compile: bool = True
    seed: int = 0
    data_dir: Optional[str] = None
    data_options: dict = dataclasses.field(default_factory=dict)
    train_seconds: Optional[float] = None
    decay_matrices_only: bool = False
    eval_ema: bool = False

    def __post_init__(self):
        """ValueError naming the field for a value of the wrong type or range (gin binds whatever it parses)."""
        for name in ("sequence_length", "batch_size", "train_steps", "log_every", "checkpoint_every",
                     "keep_checkpoints", "eval_every", "eval_batches"):
            value = getattr(self, name)
            optional = name in ("eval_every", "eval_batches")
            if not (optional and value is None) and (not _is_int(value) or value < 1):
                raise ValueError(f"Experiment.{name} = {value!r}: expected a positive integer"
                                 + (" or None" if optional else ""))
        for name in ("clip_norm", "train_seconds"):
            value = getattr(self, name)
            if value is not None and (not _is_number(value) or value <= 0):
                raise ValueError(f"Experiment.{name} = {value!r}: expected a positive number or None")
        if not _is_int(self.seed):
            raise ValueError(f"Experiment.seed = {self.seed!r}: expected an integer")
        for name in ("jit_compile", "decay_matrices_only", "eval_ema"):
            if getattr(self, name) not in (True, False):
                raise ValueError(f"Experiment.{name} = {getattr(self, name)!r}: expected True or False")
        for name in ("dataset", "eval_split"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"Experiment.{name} = {getattr(self, name)!r}: expected a string")
        if not isinstance(self.data_options, dict):
            raise ValueError(f"Experiment.data_options = {self.data_options!r}: expected a dict")
        if not (_is_number(self.learning_rate) and self.learning_rate > 0) and not callable(self.learning_rate):
            raise ValueError(f"Experiment.learning_rate = {self.learning_rate!r}: expected a positive number or a "
                             f"schedule")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_config(gin_files, gin_params):
    """Parses gin files and bindings; one-line `UserError` for a missing file or a bad binding."""
    register_configurables()
    gin.clear_config()  # Each parse starts from nothing (and unlocks a config finalised before).
    gin.add_config_file_search_path(GIN_CONFIGS)
    problem = command_line.gin_files_problem(gin_files)
    if problem:
        raise UserError(problem)
    resolved = [command_line.resolve_gin_file(path) for path in gin_files]
    try:
        with quiet_gin_search():
            gin.parse_config_files_and_bindings(resolved, gin_params, finalize_config=True, skip_unknown=False)
    except (ValueError, KeyError, SyntaxError, IOError) as error:
        raise UserError(f"bad gin configuration: {_first_line(error)}") from error
    try:
        experiment = Experiment()
    except (ValueError, TypeError) as error:
        raise UserError(f"bad gin configuration: {_first_line(error)}") from error
    if experiment.model is None:
        raise UserError("no model configured: bind `Experiment.model = @<family>.<Model>` in a gin file.")
    return experiment


@contextlib.contextmanager
def quiet_gin_search():
    """Gin logs an error for every search path where an `include` is not found before the one where it is;
    real failures still raise."""
    pylogging.disable(pylogging.CRITICAL)
    try:
        yield
    finally:
        pylogging.disable(pylogging.NOTSET)


def _first_line(error):
    """The message of an error in one line; for errors Keras re-raises from a layer's call, the original one."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(error)).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        return lines[1]
    return lines[0] if lines else type(error).__name__


def make_dataset(experiment, split, training):
    try:
        return data.make_dataset(experiment.dataset, split, sequence_length=experiment.sequence_length,
                                 batch_size=experiment.batch_size, training=training,
                                 data_dir=experiment.data_dir, seed=experiment.seed, **experiment.data_options)
    except ValueError as error:  # DatasetNotPreparedError included
        raise UserError(_first_line(error)) from error


def dataset_info(experiment):
    """The experiment's dataset description (vocabulary size, unit) without reading its examples."""
    return data.dataset_info(experiment.dataset, data_dir=experiment.data_dir,
                             **{k: v for k, v in experiment.data_options.items()
                                if k in ("tokenizer", "vocabulary_size")})


def build_model(experiment):
    """Creates the model for the dataset's vocabulary and builds it at the training sequence length."""
    info = dataset_info(experiment)
    keras.utils.set_random_seed(experiment.seed)
    name = getattr(experiment.model, "__name__", type(experiment.model).__name__)
    try:
        model = experiment.model(vocabulary_size=info.vocabulary_size)
    except (ValueError, TypeError) as error:
        raise UserError(f"bad arguments of the model {name}: {_first_line(error)}") from error
    try:
        model(tf.zeros([1, experiment.sequence_length], tf.int32))
    except ValueError as error:
        raise UserError(f"the model cannot take sequence_length={experiment.sequence_length}: "
                        f"{_first_line(error)}") from error
    return model, info


def untracked_variables(model):
    """Model variables that tf.train.Checkpoint cannot reach through the object graph.

    Keras 3 hides from TensorFlow what layers keep in Python lists (e.g. the seed-generator state of every
    `Dropout`), so these would silently not be saved; `model_objects` saves them by position instead.
    """
    reachable = {id(t) for t in tf.train.TrackableView(model).descendants()}
    return tuple(v for v in model.variables if id(v) not in reachable)


def model_objects(model):
    """What a checkpoint holds of a model: its object graph plus the variables the graph misses."""
    untracked = untracked_variables(model)
    return dict(model=model, model_untracked=untracked) if untracked else dict(model=model)


def make_optimizer(experiment, model):
    """The experiment's optimizer, built for the model's trainable variables (weight decay on matrices only
    if `decay_matrices_only`); `UserError` if `eval_ema` asks for an average the optimizer does not keep."""
    optimizer = experiment.optimizer(learning_rate=experiment.learning_rate)
    if experiment.eval_ema and not getattr(optimizer, "use_ema", False):
        raise UserError(f"Experiment.eval_ema needs an optimizer that keeps a moving average of the weights; bind "
                        f"{type(optimizer).__name__}.use_ema = True (and its ema_momentum).")
    if experiment.decay_matrices_only:
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    optimizer.build(model.trainable_variables)
    return optimizer


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


def make_checkpoint(model, optimizer, step, iterator):
    objects = dict(model_objects(model), optimizer=optimizer, step=step)
    if iterator is not None:
        objects["iterator"] = iterator
    return tf.train.Checkpoint(**objects)


def restore(checkpoint, directory, move_aside=False):
    """Restores the newest readable checkpoint of `directory` (see apps.checkpoints); returns its path, or
    None when there is none. `UserError` when none can be restored (damaged, or of a model of another shape)."""
    try:
        return checkpoints.restore_newest_readable(checkpoint, directory, move_aside=move_aside)
    except checkpoints.UnreadableCheckpointError as error:
        raise UserError(f"{error}; if they hold another model, use another --model_dir or the gin config it was "
                        f"trained with.") from error


def write_atomically(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def call_model(model, ids, training):
    """`model(ids)` -> (logits, this call's auxiliary losses), safe on replicas.

    The call runs in a `keras.StatelessScope`, which collects its losses: Keras keeps `model.losses` in the
    layers, which replicas share, and a replica that reaches a synchronisation point inside the forward pass
    (the k-means all-reduce) lets the next replica clear and refill them. The state updates of the call
    (k-means EMA, dropout seeds), held back by the scope, are written to the variables right after it.
    """
    with keras.StatelessScope(collect_losses=True) as scope:
        logits = model(ids, training=training)
    updated = [v for v in model.non_trainable_variables if scope.get_current_value(v) is not None]
    if len(updated) != len(scope.state_mapping):
        raise ValueError(f"{model.name} assigned variables outside its non_trainable_variables; the trainer "
                         f"would lose those updates.")
    for variable in updated:
        variable.assign(scope.get_current_value(variable))
    return logits, scope.losses


def loss_and_metrics(model, batch, training, global_tokens=None):
    """Cross-entropy over the batch's weighted tokens, plus the layers' auxiliary losses in training.

    Under a strategy, `batch` is one replica's share and `global_tokens` the weighted tokens of the global
    batch: the cross-entropy is divided by those and the auxiliary losses by the number of replicas, so that
    the replicas' losses, metrics and gradients sum to those of one device on the global batch.
    """
    ids, weights = batch["token_ids"], batch["weights"]
    logits, losses = call_model(model, ids, training)
    nats, _ = token_cross_entropy(ids, logits)
    total = tf.reduce_sum(nats * weights)
    count = tf.reduce_sum(weights)
    cross_entropy = total / tf.maximum(count if global_tokens is None else global_tokens, 1.0)
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync if context else 1
    auxiliary = tf.add_n(losses) / replicas if losses else tf.constant(0.0)
    return cross_entropy + auxiliary, {"cross_entropy": cross_entropy, "total_nats": total, "tokens": count}


def step_function(strategy, replica_fn, jit_compile):
    """A tf.function running `replica_fn(global_batch)` on every replica of `strategy` and summing its outputs.

    XLA-compiled when `jit_compile` and there is one replica: TensorFlow cannot XLA-compile a step whose
    replicas synchronise (gradient and k-means all-reduces are merge calls, and one compiled function cannot
    use variables on several devices); TPUStrategy compiles its steps itself.
    """
    jit = jit_compile and strategy.num_replicas_in_sync == 1 and not isinstance(strategy, tf.distribute.TPUStrategy)

    @tf.function(jit_compile=jit)
    def step(batch):
        outputs = strategy.run(replica_fn, args=(batch,))
        return tf.nest.map_structure(lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None), outputs)

    return step


def apply_gradients(optimizer, grads, variables, clip_norm):
    """Applies one replica's gradients; the optimizer sums them over replicas. Clipping by the global norm
    needs the summed gradient: it is all-reduced here and each replica hands the optimizer 1/N of it."""
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    if clip_norm:
        if replicas > 1:
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        if replicas > 1:
            grads = [g / replicas for g in grads]
    optimizer.apply(grads, variables)


def make_train_step(model, optimizer, clip_norm, jit_compile, strategy=None):
    """One training step on a global batch under `strategy` (default: one device); returns the metrics of the
    global batch. Model and optimizer must have been created under `strategy.scope()`."""
    strategy = strategy or tf.distribute.get_strategy()

    def replica_step(batch):
        global_tokens = tf.reduce_sum(batch["weights"])
        with tf.GradientTape() as tape:
            loss, metrics = loss_and_metrics(model, distribute.replica_share(batch), training=True,
                                             global_tokens=global_tokens)
        # Embedding gradients come as IndexedSlices; Keras 3.15's Adafactor fails on them when a table is hit
        # by many indices (e.g. 12,288 image positions into 64 rows), so every gradient is made dense.
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        apply_gradients(optimizer, grads, model.trainable_variables, clip_norm)
        return dict(metrics, loss=loss)

    return step_function(strategy, replica_step, jit_compile)


def _duration(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def check_replicas(experiment, strategy):
    """Every replica takes an equal share of the global batch; says that jit_compile is ignored on several."""
    replicas = strategy.num_replicas_in_sync
    if experiment.batch_size % replicas:
        raise UserError(f"Experiment.batch_size = {experiment.batch_size} is not a multiple of the {replicas} "
                        f"replicas of the strategy; every replica takes an equal share of the global batch.")
    if replicas > 1 and experiment.jit_compile:
        print(f"{replicas} replicas: Experiment.jit_compile is ignored (see apps.train.step_function)", flush=True)


def summary_writer(strategy, directory):
    """A summary writer to `directory` on the chief, one that writes nothing on the other workers."""
    if strategy.extended.should_save_summary:
        return tf.summary.create_file_writer(directory)
    return tf.summary.create_noop_writer()


def train(experiment, model_dir, strategy=None):
    """Trains to `experiment.train_steps` (or for `experiment.train_seconds`) under `strategy` (default: one
    device), resuming from the latest checkpoint in model_dir."""
    strategy = strategy or tf.distribute.get_strategy()
    check_replicas(experiment, strategy)
    with strategy.scope():
        model, info = build_model(experiment)
        learning_rate = experiment.learning_rate
        optimizer = make_optimizer(experiment, model)
    iterator = iter(make_dataset(experiment, "train", training=True))
    step = tf.Variable(0, dtype=tf.int64, name="step")
    checkpoint = make_checkpoint(model, optimizer, step, iterator)
    directory = os.path.join(model_dir, "checkpoints")
    chief = strategy.extended.should_checkpoint
    if chief and tf.io.gfile.isdir(directory):
        for name in checkpoints.remove_partial_saves(directory):
            print(f"removed {os.path.join(directory, name)}, left by a save that was interrupted", flush=True)
    resumed = restore(checkpoint, directory, move_aside=chief)  # Every worker resumes from the chief's.
    if resumed:
        print(f"resumed from {resumed} at step {int(step.numpy())}", flush=True)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=experiment.keep_checkpoints)
    train_step = make_train_step(model, optimizer, experiment.clip_norm, experiment.jit_compile, strategy)
    writer = summary_writer(strategy, os.path.join(model_dir, "train"))
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
                  f"time left {_duration(remaining)}", flush=True)
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
            eval_step = eval_step or make_eval_step(model, experiment, strategy)
            with averaged_weights(model, optimizer) if experiment.eval_ema else contextlib.nullcontext():
                results = evaluate_model(model, info, experiment, current, model_dir, strategy,
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
    """The chief writes the checkpoint (through `manager`) and the operative config. Another worker saves too
    (saving can involve collective ops), into a temporary directory that it deletes."""
    if strategy.extended.should_checkpoint:
        manager.save(checkpoint_number=step)
        write_atomically(os.path.join(model_dir, "operative_config.gin"), gin.operative_config_str())
        return
    directory = tempfile.mkdtemp(prefix="worker_checkpoint_")
    try:
        tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1).save(checkpoint_number=step)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def evaluate(experiment, model_dir, strategy=None):
    """Evaluates the latest checkpoint on `experiment.eval_split` under `strategy` (default: one device); the
    chief writes eval_results.json and summaries."""
    strategy = strategy or tf.distribute.get_strategy()
    check_replicas(experiment, strategy)
    with strategy.scope():
        model, info = build_model(experiment)
        optimizer = make_optimizer(experiment, model) if experiment.eval_ema else None
    step = tf.Variable(0, dtype=tf.int64, name="step")
    objects = dict(model_objects(model), step=step)
    if optimizer is not None:  # its moving average of the weights is what is evaluated
        objects["optimizer"] = optimizer
    if restore(tf.train.Checkpoint(**objects), os.path.join(model_dir, "checkpoints")) is None:
        raise UserError(f"no checkpoint in {model_dir}/checkpoints; train first (--mode=train).")
    if optimizer is not None:
        optimizer.finalize_variable_values(model.trainable_variables)  # evaluate the moving average
    current = int(step.numpy())
    results = evaluate_model(model, info, experiment, current, model_dir, strategy,
                             train_seconds=curves.train_seconds_at(model_dir, current), progress=True)
    if strategy.extended.should_checkpoint:
        write_atomically(os.path.join(model_dir, "eval_results.json"), json.dumps(results, indent=2) + "\n")
        curves.write_curves_png(model_dir)
    return results


def make_eval_step(model, experiment, strategy):
    """The (compiled, if `experiment.jit_compile`) step of an evaluation: (total nats, tokens) of a global
    batch, each replica scoring its share. It reads the model's variables when called, so one step serves every
    evaluation of a run (a new one per evaluation would be traced and compiled again each time)."""

    def replica_eval(batch):
        _, metrics = loss_and_metrics(model, distribute.replica_share(batch), training=False)
        return metrics["total_nats"], metrics["tokens"]

    return step_function(strategy, replica_eval, experiment.jit_compile)


def evaluate_model(model, info, experiment, step, model_dir, strategy=None, train_seconds=None, progress=False,
                   eval_step=None):
    """The model's metrics on `experiment.eval_split` (all of it, or `eval_batches` batches), also written as
    TensorBoard scalars under model_dir/eval at `step` (by the chief), with the `train_seconds` the model had
    trained for, if given (for curves against time). Every replica scores its share of each batch.
    progress: print batches done (and time left, when `eval_batches` says how many) as training does.
    eval_step: the model's `make_eval_step`, to reuse one across evaluations (default: a new one)."""
    strategy = strategy or tf.distribute.get_strategy()
    eval_step = eval_step or make_eval_step(model, experiment, strategy)

    dataset = make_dataset(experiment, experiment.eval_split, training=False)
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
            left = (f"  time left {_duration(elapsed / done * (experiment.eval_batches - done))}"
                    if experiment.eval_batches else "")
            print(f"eval {done}{'/' + str(experiment.eval_batches) if experiment.eval_batches else ''} batches  "
                  f"{tokens / elapsed:,.0f} tokens/s{left}", flush=True)
    results = {"step": step, "split": experiment.eval_split, "tokens": tokens,
               "bits_per_token": total_nats / max(tokens, 1.0) / math.log(2.0),
               "perplexity": math.exp(total_nats / max(tokens, 1.0))}
    if not experiment.eval_batches:
        results.update(unit_metrics(experiment, info, total_nats))
    writer = summary_writer(strategy, os.path.join(model_dir, "eval"))
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
    dataset = make_dataset(experiment, experiment.eval_split, training=False)
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


def run(gin_files, gin_params, model_dir, mode, strategy="default", tpu="local"):
    """What `python -m apps.train` does; `strategy` names a `apps.distribute` strategy."""
    try:  # First: MultiWorkerMirroredStrategy must be created before TensorFlow runs anything.
        distribution = distribute.make_strategy(strategy, tpu)
    except ValueError as error:
        raise UserError(_first_line(error)) from error
    experiment = parse_config(gin_files, gin_params)
    os.makedirs(model_dir, exist_ok=True)
    if mode in ("train", "train_and_eval"):
        train(experiment, model_dir, distribution)
        print(f"checkpoints: {model_dir}/checkpoints  TensorBoard: tensorboard --logdir {model_dir}  "
              f"operative config: {model_dir}/operative_config.gin", flush=True)
    if mode in ("eval", "train_and_eval"):
        results = evaluate(experiment, model_dir, distribution)
        print("eval: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in results.items()), flush=True)
        return results
    return None


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # progress and errors are printed; library warnings are noise here
    try:
        run(FLAGS.gin_file, FLAGS.gin_param, FLAGS.model_dir, FLAGS.mode, FLAGS.strategy, FLAGS.tpu)
    except UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main, flags_parser=command_line.parsed_argv)
