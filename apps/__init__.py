"""The zoo's applications, above the library (`common`) and the families: data pipelines, the gin experiment,
training and evaluation, checkpoints, export, sampling, the demo and the tools' command lines. TensorFlow lives
here; nothing below imports this package."""

import common  # noqa: F401  (TensorFlow's CPU kernels: before anything imports TensorFlow)
