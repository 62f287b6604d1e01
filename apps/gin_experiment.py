"""The gin experiment: what to train and how (`Experiment`), parsed from gin files and bindings, and what it
builds: the dataset, the model at the training length, the optimizer. Every problem with the user's input is a
one-line `UserError`."""

import contextlib
import dataclasses
import logging as pylogging
from typing import Any, Callable, Optional

import gin
import keras
import tensorflow as tf

from apps import command_line, data
from apps.configurables import register_configurables
from apps.errors import UserError, first_line

GIN_CONFIGS = command_line.GIN_CONFIGS


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
    eval_stride: text: evaluate windows that start every this many tokens and score their last `eval_stride`,
      so that every token after the first window is predicted from at least `sequence_length - eval_stride`
      tokens before it (as a compressor or a long-context evaluation does); each token is still scored once.
      None: consecutive windows, whose first tokens are predicted from nothing.
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
    eval_stride: Optional[int] = None
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
                     "keep_checkpoints", "eval_every", "eval_batches", "eval_stride"):
            value = getattr(self, name)
            optional = name in ("eval_every", "eval_batches", "eval_stride")
            if not (optional and value is None) and (not _is_int(value) or value < 1):
                raise ValueError(f"Experiment.{name} = {value!r}: expected a positive integer"
                                 + (" or None" if optional else ""))
        if self.eval_stride is not None and self.eval_stride > self.sequence_length:
            raise ValueError(f"Experiment.eval_stride = {self.eval_stride}: expected at most the sequence_length "
                             f"({self.sequence_length})")
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
        raise UserError(f"bad gin configuration: {first_line(error)}") from error
    try:
        experiment = Experiment()
    except (ValueError, TypeError) as error:
        raise UserError(f"bad gin configuration: {first_line(error)}") from error
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


def make_dataset(experiment, split, training):
    try:
        return data.make_dataset(experiment.dataset, split, sequence_length=experiment.sequence_length,
                                 batch_size=experiment.batch_size, training=training,
                                 data_dir=experiment.data_dir, seed=experiment.seed,
                                 eval_stride=experiment.eval_stride, **experiment.data_options)
    except ValueError as error:  # DatasetNotPreparedError included
        raise UserError(first_line(error)) from error


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
        raise UserError(f"bad arguments of the model {name}: {first_line(error)}") from error
    try:
        model(tf.zeros([1, experiment.sequence_length], tf.int32))
    except ValueError as error:
        raise UserError(f"the model cannot take sequence_length={experiment.sequence_length}: "
                        f"{first_line(error)}") from error
    return model, info


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
