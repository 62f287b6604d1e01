"""Learning curves of a training run, read back from its TensorBoard events and drawn as `curves.png`.

The trainer logs `bits_per_token` and `train_seconds` (wall-clock seconds spent training, evaluation excluded,
counted across resumes) under `model_dir/train`, and its evaluations (`bits_per_token` with the
`train_seconds` they were taken at) under `model_dir/eval`; `write_curves_png` draws both against the step and
against training time.
"""

import glob
import os

import tensorflow as tf

CURVES_FILE = "curves.png"


def read_scalars(log_dir):
    """{tag: {step: value}} of every scalar summary in `log_dir` (later events win for a repeated step)."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for value in event.summary.value:
                    number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                              else float(value.simple_value))
                    scalars.setdefault(value.tag, {})[int(event.step)] = number
        except tf.errors.DataLossError:  # a file cut short by a kill: keep what was read
            continue
    return scalars


def train_seconds_at(model_dir, step):
    """Training seconds logged at the last logged step <= `step` (0.0 before any): where a resumed run's
    clock continues."""
    logged = read_scalars(os.path.join(model_dir, "train")).get("train_seconds", {})
    earlier = [s for s in logged if s <= step]
    return logged[max(earlier)] if earlier else 0.0


def curve(scalars, tag="bits_per_token"):
    """[(step, train_seconds, value)] of `tag`, by step; train_seconds is None where it was not logged."""
    values, seconds = scalars.get(tag, {}), scalars.get("train_seconds", {})
    return [(step, seconds.get(step), values[step]) for step in sorted(values)]


def write_curves_png(model_dir):
    """Draws train and eval bits per token against the step and against training seconds into
    `model_dir/curves.png`; returns its path, or None when nothing has been logged yet."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    series = {name: curve(read_scalars(os.path.join(model_dir, name))) for name in ("train", "eval")}
    if not any(series.values()):
        return None
    figure, (by_step, by_time) = pyplot.subplots(1, 2, figsize=(11, 4))
    styles = {"train": dict(linewidth=1, alpha=0.8), "eval": dict(marker="o", linewidth=1.5)}
    for name, points in series.items():
        if not points:
            continue
        by_step.plot([p[0] for p in points], [p[2] for p in points], label=name, **styles[name])
        timed = [p for p in points if p[1] is not None]
        by_time.plot([p[1] for p in timed], [p[2] for p in timed], label=name, **styles[name])
    by_step.set_xlabel("step")
    by_time.set_xlabel("training seconds (evaluation excluded)")
    for axes in (by_step, by_time):
        axes.set_ylabel("bits per token")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(os.path.basename(os.path.abspath(model_dir)))
    figure.tight_layout()
    path = os.path.join(model_dir, CURVES_FILE)
    figure.savefig(path + ".tmp.png", dpi=90)
    pyplot.close(figure)
    os.replace(path + ".tmp.png", path)
    return path
