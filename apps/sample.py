"""Autoregressive sampling with incremental decoding caches, inside one TensorFlow graph.

    python -m apps.sample --model_dir=DIR --prompt="def main(" --length=200

The prompt runs once through the model (`DecoderLM.prefill`), which returns every layer's cache; then a
`tf.while_loop` computes one position per step (`DecoderLM.decode`) from the caches and samples the next
token from its logits (temperature, top-k, nucleus), with stateless random draws seeded by (seed, step), so a
seed always gives the same continuation. What each attention kernel keeps in its cache is written next to the
kernel (`common.attention.decoding` and the families' `decoding` modules).

The same graph is the SavedModel's `generate` signature (`apps.export`).
"""

import re
import sys

if __name__ == "__main__":  # the command line, checked before TensorFlow loads (apps.command_line)
    from apps import command_line
    command_line.start("sample")

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from apps import checkpoints, command_line, errors  # noqa: E402

FLAGS = flags.FLAGS


def check_arguments(prompt_length, max_new_tokens, temperature, top_k, top_p, max_length):
    """Python-side validation of a generation request, with errors that name the problem."""
    if prompt_length < 1:
        raise ValueError("the prompt is empty; give at least one token.")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}.")
    if max_length is not None and prompt_length + max_new_tokens > max_length:
        raise ValueError(f"a prompt of {prompt_length} tokens plus {max_new_tokens} new tokens exceeds the "
                         f"model's maximum length {max_length}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}.")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}.")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every token); got {top_k}.")


def graph_checks(prompt_ids, max_new_tokens, temperature, top_k, top_p, vocabulary_size, max_length):
    """The same validation as graph assertions, for the SavedModel signature (InvalidArgumentError)."""
    prompt_length = tf.shape(prompt_ids)[1]
    checks = [
        assertion(tf.debugging.assert_positive, prompt_length, message="prompt_ids is empty; give at least one "
                                                                       "token"),
        assertion(tf.debugging.assert_non_negative, max_new_tokens, message="max_new_tokens must be >= 0"),
        assertion(tf.debugging.assert_greater, top_p, 0.0, message="top_p must be in (0, 1]"),
        assertion(tf.debugging.assert_less_equal, top_p, 1.0, message="top_p must be in (0, 1]"),
        assertion(tf.debugging.assert_non_negative, temperature, message="temperature must be >= 0"),
        assertion(tf.debugging.assert_non_negative, top_k, message="top_k must be >= 0 (0 keeps every token)"),
        check_token_ids(prompt_ids, vocabulary_size, "prompt_ids"),
    ]
    if max_length is not None:
        checks.append(assertion(
            tf.debugging.assert_less_equal, prompt_length + max_new_tokens, max_length,
            message=f"the prompt length plus max_new_tokens exceeds the model's maximum length {max_length}"))
    return checks


def assertion(assert_fn, *args, message):
    """A `tf.debugging` assertion whose op is named after its message. A failed assertion's error ends with the
    op's name (`[[{{node NAME/Assert/Assert}}]]`, the last line of `saved_model_cli run`'s traceback), which then
    says what is wrong instead of `assert_less/Assert/Assert`."""
    return assert_fn(*args, message=message, name=re.sub(r"[^A-Za-z0-9]+", "_", message).strip("_")[:120])


def check_token_ids(token_ids, vocabulary_size, name):
    """Assertions that every id is in [0, vocabulary_size)."""
    message = f"{name} has ids outside the vocabulary [0, {vocabulary_size})"
    return tf.group(assertion(tf.debugging.assert_non_negative, token_ids, message=message),
                    assertion(tf.debugging.assert_less, token_ids, vocabulary_size, message=message))


def filter_logits(logits, temperature, top_k, top_p):
    """Logits [batch, vocabulary] scaled by 1/temperature, with -inf outside the top_k (0: all) and outside the
    nucleus (the most likely tokens whose probabilities first reach top_p; 1: all). The most likely token is
    always kept."""
    logits = logits / tf.maximum(tf.cast(temperature, logits.dtype), 1e-6)
    vocabulary = tf.shape(logits)[-1]
    ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    k = tf.where(top_k > 0, tf.minimum(top_k, vocabulary), vocabulary)
    kth = tf.gather(ordered, k - 1, axis=-1)[:, None]
    probabilities = tf.nn.softmax(ordered, axis=-1)
    # A token is in the nucleus when the probability before it has not reached top_p yet.
    before = tf.math.cumsum(probabilities, axis=-1, exclusive=True)
    in_nucleus = tf.logical_or(before < tf.cast(top_p, logits.dtype), tf.range(vocabulary)[None] == 0)
    nucleus_min = tf.reduce_min(tf.where(in_nucleus, ordered, ordered[:, :1]), axis=-1, keepdims=True)
    keep = tf.logical_and(logits >= kth, logits >= nucleus_min)
    return tf.where(keep, logits, -float("inf"))


def choose(logits, temperature, top_k, top_p, seed, step):
    """The next token ids [batch] from logits [batch, vocabulary]: the argmax at temperature 0, otherwise a
    draw from the filtered distribution with the stateless seed (seed, step)."""
    filtered = filter_logits(logits, temperature, top_k, top_p)
    drawn = tf.random.stateless_categorical(filtered, 1, seed=tf.stack([tf.cast(seed, tf.int64),
                                                                       tf.cast(step, tf.int64)]),
                                            dtype=tf.int32)[:, 0]
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.where(temperature > 0, drawn, greedy)


def generate(model, prompt_ids, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, seed=0, stop_id=-1,
             max_length=None):
    """Continues prompt_ids [batch, n] (n >= 1) by max_new_tokens tokens, one cached step at a time.

    Call it inside a `tf.function`. Invalid arguments (see `graph_checks`; `max_length` is the model's maximum
    sequence length, None for no limit) raise `InvalidArgumentError` naming the problem. Returns ids
    [batch, max_new_tokens]; after a row samples `stop_id` (>= 0), the rest of the row is `stop_id`, and the
    loop ends once every row has stopped.
    """
    prompt_ids = tf.convert_to_tensor(prompt_ids, tf.int32)
    max_new_tokens = tf.convert_to_tensor(max_new_tokens, tf.int32)
    with tf.control_dependencies(graph_checks(prompt_ids, max_new_tokens, temperature, top_k, top_p,
                                              model.vocabulary_size, max_length)):
        prompt_ids = tf.identity(prompt_ids)
    batch, prompt_length = tf.shape(prompt_ids)[0], tf.shape(prompt_ids)[1]
    total = prompt_length + max_new_tokens
    # The prompt's last token is the input of the first new position, so prefill stops one short of it.
    _, caches = model.prefill(prompt_ids, total)
    # Generated ids, stop_id where the loop ended early (every row stopped); a small tensor, updated per step.
    ids = tf.fill([batch, max_new_tokens], tf.cast(stop_id, tf.int32))
    rows = tf.range(batch)

    def keep_going(step, previous, caches, done, ids):
        return tf.logical_and(step < max_new_tokens, tf.logical_not(tf.reduce_all(done)))

    def body(step, previous, caches, done, ids):
        logits, caches = model.decode(previous, caches, prompt_length + step)
        token = choose(logits, temperature, top_k, top_p, seed, step)
        token = tf.where(done, stop_id, token)
        done = tf.logical_or(done, tf.equal(token, stop_id))
        ids = tf.tensor_scatter_nd_update(ids, tf.stack([rows, tf.fill([batch], step)], axis=1), token)
        return step + 1, token, caches, done, ids

    return tf.while_loop(keep_going, body, (0, prompt_ids[:, -1], caches, tf.zeros([batch], tf.bool), ids))[-1]


def incremental_logits(model, token_ids, prompt_length):
    """Logits [batch, length - prompt_length, vocabulary] of positions prompt_length .. length - 1 of
    token_ids [batch, length], computed as `generate` computes them (one cached step each, the true tokens fed
    back): they equal a full pass's logits for causal models. prompt_length: an int or a scalar int32 tensor.
    Call it inside a `tf.function`."""
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    length = tf.shape(token_ids)[1]
    _, caches = model.prefill(token_ids[:, :prompt_length], length)
    out = tf.TensorArray(tf.float32, size=length - prompt_length)

    def body(position, caches, out):
        logits, caches = model.decode(token_ids[:, position - 1], caches, position)
        return position + 1, caches, out.write(position - prompt_length, logits)

    _, _, out = tf.while_loop(lambda position, *_: position < length, body,
                              (tf.convert_to_tensor(prompt_length, tf.int32), caches, out))
    return tf.transpose(out.stack(), [1, 0, 2])


def sample_text(model, prompt, length, max_length, temperature=1.0, top_k=0, top_p=1.0, seed=0, stop_id=-1):
    """Continues the text `prompt` (byte-level models) by `length` tokens; returns the new ids."""
    prompt_ids = list(prompt.encode("utf-8"))
    check_arguments(len(prompt_ids), length, temperature, top_k, top_p, max_length)
    ids = tf.function(generate)(model, tf.constant([prompt_ids], tf.int32), length,
                                tf.constant(temperature, tf.float32), tf.constant(top_k, tf.int32),
                                tf.constant(top_p, tf.float32), tf.constant(seed, tf.int32),
                                tf.constant(stop_id, tf.int32), max_length)
    return [int(i) for i in ids[0].numpy()]


def main(argv):
    del argv
    try:
        model, experiment = checkpoints.load_trained_model(FLAGS.model_dir)
        new_ids = sample_text(model, FLAGS.prompt, FLAGS.length, experiment.sequence_length, FLAGS.temperature,
                              FLAGS.top_k, FLAGS.top_p, FLAGS.seed, FLAGS.stop_id)
    except (errors.UserError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(FLAGS.prompt + bytes(i for i in new_ids if 0 <= i < 256).decode("utf-8", errors="replace"))


if __name__ == "__main__":
    app.run(main, flags_parser=command_line.parsed_argv)
