"""The zoo's applications, above the library (`common`) and the families: data pipelines, the gin experiment,
training and evaluation, checkpoints, export, sampling, the demo and the tools' command lines. TensorFlow lives
here; nothing below imports this package."""
