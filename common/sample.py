"""Autoregressive sampling from a trained zoo model.

    python -m common.sample --model_dir=DIR --prompt="def main(" --length=200

This version recomputes the model over a fixed window of `sequence_length` tokens at every step (the newest
token's logits are read at its position); it is exact for strictly causal models. Incremental decoding with
per-layer caches is the serving issue's work.
"""

import os
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags

from common import train

FLAGS = flags.FLAGS


def define_flags():
    """The command line of `python -m common.sample` (defined only when it runs)."""
    flags.DEFINE_string("model_dir", None, "A directory written by common.train.")
    flags.DEFINE_string("prompt", "", "Text to continue (byte-level models).")
    flags.DEFINE_integer("length", 200, "Number of tokens to generate.")
    flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 picks the most likely token.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 for all.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")


def filter_logits(logits, temperature, top_k):
    """Scales by temperature and keeps the top_k logits (others -inf)."""
    logits = logits / max(temperature, 1e-6)
    if top_k and top_k < logits.shape[-1]:
        kth = np.sort(logits)[-top_k]
        logits = np.where(logits >= kth, logits, -np.inf)
    return logits


def generate(model, prompt_ids, num_tokens, window, temperature=1.0, top_k=0, seed=0):
    """Continues `prompt_ids` (a non-empty list of ints) by `num_tokens` tokens; returns the new ids."""
    if not prompt_ids:
        raise ValueError("the prompt is empty; give at least one token.")
    rng = np.random.default_rng(seed)
    ids = list(prompt_ids)
    step = tf.function(lambda x: model(x, training=False))
    for _ in range(num_tokens):
        context = ids[-(window - 1):]
        position = len(context)  # logits at `position` predict the next token from everything before it
        buffer = np.zeros([1, window], np.int32)
        buffer[0, :position] = context
        logits = step(tf.constant(buffer))[0, position].numpy().astype(np.float64)
        if temperature == 0:
            ids.append(int(np.argmax(logits)))
            continue
        logits = filter_logits(logits, temperature, top_k)
        probabilities = np.exp(logits - logits.max())
        ids.append(int(rng.choice(len(probabilities), p=probabilities / probabilities.sum())))
    return ids[len(prompt_ids):]


def load_trained_model(model_dir):
    """Rebuilds the model from `model_dir/operative_config.gin` and restores its latest checkpoint."""
    config = os.path.join(model_dir, "operative_config.gin")
    if not os.path.exists(config):
        raise train.UserError(f"{config} does not exist; train a model in {model_dir} first.")
    experiment = train.parse_config([config], [])
    model, _ = train.build_model(experiment)
    checkpoint = tf.train.Checkpoint(**train.model_objects(model))
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "checkpoints"), max_to_keep=None)
    if manager.latest_checkpoint is None:
        raise train.UserError(f"no checkpoint in {model_dir}/checkpoints.")
    train.restore(checkpoint, manager)
    return model, experiment


def main(argv):
    del argv
    if not FLAGS.model_dir:
        sys.exit("error: --model_dir is required.")
    try:
        model, experiment = load_trained_model(FLAGS.model_dir)
        prompt = list(FLAGS.prompt.encode("utf-8"))
        new_ids = generate(model, prompt, FLAGS.length, experiment.sequence_length, FLAGS.temperature,
                           FLAGS.top_k, FLAGS.seed)
    except (train.UserError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(FLAGS.prompt + bytes(new_ids).decode("utf-8", errors="replace"))


if __name__ == "__main__":
    define_flags()
    app.run(main)
