"""An experiment's parameter count and memory estimate, without training and without allocating the weights.

    python -m apps.experiment_info --gin_file=sparse_transformer/enwik8.gin [--gin_param=...]

The model is built inside a `keras.StatelessScope`, where Keras defers creating variables: every shape is known
(so `count_params()` is exact) but no weight is allocated or initialised, so even the largest experiment takes
seconds and little memory. The memory estimate is float32 training state: weights, gradients and optimizer
slots (Adam/AdamW: two per weight; Adafactor: factored second moments of matrices, full ones otherwise; SGD:
none), plus a lower bound on activations, the residual stream stored at every block boundary (what
recomputation keeps); the attention and feed-forward activations of one block come on top.
"""

import dataclasses
import math
import sys

if __name__ == "__main__":  # the command line, checked before TensorFlow loads (apps.command_line)
    from apps import command_line
    command_line.start("experiment_info")

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

from apps import command_line, data, errors, gin_experiment  # noqa: E402

FLOAT_BYTES = 4
FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ExperimentInfo:
    """What `describe` reports. Byte counts are float32 training state of one replica."""

    model: str
    dataset: str
    sequence_length: int
    batch_size: int
    vocabulary_size: int
    num_layers: int
    hidden_dim: int
    parameters: int
    optimizer: str
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    residual_stream_bytes: int

    @property
    def total_bytes(self):
        return self.weight_bytes + self.gradient_bytes + self.optimizer_bytes + self.residual_stream_bytes


def optimizer_slots(optimizer_name, shapes):
    """Float32 values the optimizer keeps for variables of these shapes (besides the weights themselves)."""
    name = optimizer_name.lower()
    if name in ("adam", "adamw"):
        return 2 * sum(math.prod(shape) for shape in shapes)
    if name == "adafactor":  # Keras Adafactor: row and column second moments of >= 2-D variables, no momentum.
        total = 0
        for shape in shapes:
            if len(shape) >= 2:
                total += math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]
            else:
                total += math.prod(shape)
        return total
    if name == "sgd":
        return 0
    raise ValueError(f"no memory model for optimizer {optimizer_name!r}")


def describe(experiment):
    """Builds `experiment.model` at the experiment's sequence length without allocating and measures it."""
    info = data.dataset_info(experiment.dataset, data_dir=experiment.data_dir,
                             **{k: v for k, v in experiment.data_options.items()
                                if k in ("tokenizer", "vocabulary_size")})
    try:
        with keras.StatelessScope():
            model = experiment.model(vocabulary_size=info.vocabulary_size)
            model.build((1, experiment.sequence_length))
    except ValueError as error:
        raise errors.UserError(f"the model cannot take sequence_length={experiment.sequence_length}: "
                               f"{errors.first_line(error)}") from error
    shapes = [tuple(int(d) for d in v.shape) for v in model.trainable_variables]
    parameters = model.count_params()
    trainable = sum(math.prod(shape) for shape in shapes)
    optimizer = getattr(experiment.optimizer, "__name__", type(experiment.optimizer).__name__)
    # A moving average of the weights (`use_ema`, for Experiment.eval_ema) is one more copy of them.
    keeps_average = getattr(experiment.optimizer(learning_rate=1e-3), "use_ema", False)
    num_layers, hidden_dim = int(model.num_layers), int(model.hidden_dim)
    return ExperimentInfo(
        model=type(model).__name__, dataset=experiment.dataset, sequence_length=experiment.sequence_length,
        batch_size=experiment.batch_size, vocabulary_size=info.vocabulary_size, num_layers=num_layers,
        hidden_dim=hidden_dim, parameters=parameters, optimizer=optimizer,
        weight_bytes=FLOAT_BYTES * parameters, gradient_bytes=FLOAT_BYTES * trainable,
        optimizer_bytes=FLOAT_BYTES * (optimizer_slots(optimizer, shapes) + (trainable if keeps_average else 0)),
        residual_stream_bytes=FLOAT_BYTES * experiment.batch_size * experiment.sequence_length * hidden_dim
        * (num_layers + 1))


def _size(num_bytes):
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"


def format_info(info):
    return "\n".join([
        f"model            {info.model}: {info.num_layers} layers of width {info.hidden_dim}",
        f"data             {info.dataset}: vocabulary {info.vocabulary_size}, sequence length "
        f"{info.sequence_length}, batch {info.batch_size}",
        f"parameters       {info.parameters:,} ({info.parameters / 1e6:.1f}M)",
        f"weights          {_size(info.weight_bytes)} (float32)",
        f"gradients        {_size(info.gradient_bytes)}",
        f"optimizer state  {_size(info.optimizer_bytes)} ({info.optimizer})",
        f"residual stream  {_size(info.residual_stream_bytes)} (batch x length x width x (layers + 1); a lower "
        f"bound on activations)",
        f"total (at least) {_size(info.total_bytes)}",
    ])


def main(argv):
    del argv
    try:
        experiment = gin_experiment.parse_config(FLAGS.gin_file, FLAGS.gin_param)
        print(format_info(describe(experiment)), flush=True)
    except errors.UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main, flags_parser=command_line.parsed_argv)
