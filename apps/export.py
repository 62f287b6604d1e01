"""Export of a zoo language model: a TF SavedModel with named serving signatures, and a `.keras` file.

    python -m apps.export --model_dir=DIR --export_dir=OUT    # OUT/saved_model/ and OUT/model.keras

The SavedModel needs only TensorFlow to serve (`tf.saved_model.load`, `saved_model_cli`). Its signatures:
  - `serving_default`: token_ids int32 [batch, length] -> logits float32 [batch, length, vocabulary]
    (logits[:, t] predict token t from the tokens before it).
  - `score`: token_ids -> log_probabilities float32 [batch, length] (of each token given those before it)
    and bits_per_token float32 [batch] (their mean, in bits).
  - `generate`: prompt_ids int32 [batch, n], max_new_tokens, temperature, top_k, top_p, seed, stop_id (int32 /
    float32 scalars; stop_id -1 for none) -> generated_ids int32 [batch, max_new_tokens]: incremental decoding
    with the layers' caches inside one `tf.while_loop` (`apps.sample.generate`), reproducible for a seed.
Only `training=False` is traced, so serving never moves state such as routing centroids. Bad requests (ids
outside the vocabulary, too long, an empty prompt, top_p outside (0, 1], ...) fail with an
`InvalidArgumentError` that names the problem; its last line (the last line `saved_model_cli run` prints) is the
failed check's op, named after the problem (`[[{{node top_p_must_be_in_0_1/...}}]]`).
"""

import math
import os
import sys

if __name__ == "__main__":  # the command line, checked before TensorFlow loads (apps.command_line)
    from apps import command_line
    command_line.start("export")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from apps import checkpoints, command_line, errors, sample  # noqa: E402

FLAGS = flags.FLAGS

TOKEN_IDS = tf.TensorSpec([None, None], tf.int32, name="token_ids")
GENERATE_INPUTS = [
    tf.TensorSpec([None, None], tf.int32, name="prompt_ids"),
    tf.TensorSpec([], tf.int32, name="max_new_tokens"),
    tf.TensorSpec([], tf.float32, name="temperature"),
    tf.TensorSpec([], tf.int32, name="top_k"),
    tf.TensorSpec([], tf.float32, name="top_p"),
    tf.TensorSpec([], tf.int32, name="seed"),
    tf.TensorSpec([], tf.int32, name="stop_id"),
]


def model_max_length(model):
    """The longest sequence the model's absolute positions cover, or None (relative positions only)."""
    return model.position_embedding.max_length if model.position_embedding is not None else None


def batch_by_length(ids, name):
    """`ids` checked at run time to be [batch, length]: the signature's static shape is not checked by a served
    call, and a 1-D request would otherwise fail deep in the graph ("slice index 1 of dimension 0 out of
    bounds"). The error names the input and the expected shape."""
    return tf.ensure_shape(ids, [None, None], name=f"{name}_must_be_batch_by_length")


def checked_token_ids(token_ids, vocabulary_size, max_length):
    """token_ids after assertions that they are [batch, length], in the vocabulary and no longer than
    max_length."""
    token_ids = batch_by_length(token_ids, "token_ids")
    checks = [sample.check_token_ids(token_ids, vocabulary_size, "token_ids")]
    if max_length is not None:
        checks.append(sample.assertion(
            tf.debugging.assert_less_equal, tf.shape(token_ids)[1], max_length,
            message=f"token_ids is longer than the model's maximum length {max_length}"))
    with tf.control_dependencies(checks):
        return tf.identity(token_ids)


def export_saved_model(model, export_dir, max_length=None):
    """Writes `model` to `export_dir` as a TF SavedModel with the signatures of the module docstring.

    max_length: the longest sequence served (default: what the model's absolute positions cover; give the
      training sequence length for models with relative positions only).
    """
    if not model.built:
        model(tf.zeros([1, 1], tf.int32))
    max_length = max_length or model_max_length(model)
    vocabulary_size = model.vocabulary_size

    def serve(token_ids):
        token_ids = checked_token_ids(token_ids, vocabulary_size, max_length)
        return {"logits": model(token_ids, training=False)}

    def score(token_ids):
        token_ids = checked_token_ids(token_ids, vocabulary_size, max_length)
        log_probabilities = tf.nn.log_softmax(model(token_ids, training=False), axis=-1)
        per_token = tf.gather(log_probabilities, token_ids, batch_dims=2)
        return {"log_probabilities": per_token,
                "bits_per_token": -tf.reduce_mean(per_token, axis=1) / math.log(2.0)}

    def generate(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_id):
        prompt_ids = batch_by_length(prompt_ids, "prompt_ids")
        ids = sample.generate(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_id,
                              max_length=max_length)
        return {"generated_ids": ids}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[TOKEN_IDS])
    archive.add_endpoint("score", score, input_signature=[TOKEN_IDS])
    archive.add_endpoint("generate", generate, input_signature=GENERATE_INPUTS)
    archive.write_out(export_dir, verbose=False)


def export_trained_model(model_dir, export_dir):
    """`python -m apps.export`: the latest checkpoint of `model_dir` as OUT/saved_model and OUT/model.keras."""
    model, experiment = checkpoints.load_trained_model(model_dir)
    os.makedirs(export_dir, exist_ok=True)
    export_saved_model(model, os.path.join(export_dir, "saved_model"), max_length=experiment.sequence_length)
    model.save(os.path.join(export_dir, "model.keras"))


def main(argv):
    del argv
    try:
        export_trained_model(FLAGS.model_dir, FLAGS.export_dir)
    except errors.UserError as error:
        sys.exit(f"error: {error}")
    print(f"wrote {FLAGS.export_dir}/saved_model (signatures serving_default, score, generate) and "
          f"{FLAGS.export_dir}/model.keras")


if __name__ == "__main__":
    app.run(main, flags_parser=command_line.parsed_argv)
