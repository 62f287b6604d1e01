"""Packing a stream of token sequences into fixed-length windows.

Documents are concatenated into one stream (in the order they arrive) and the
stream is cut into windows of `sequence_length` tokens: a window may span the
end of one document and the start of the next (SentencePiece documents end
with ``</s>``; byte documents are joined as they are). With ``flush=True``
(evaluation) the final partial window is emitted, zero-padded, with weights 0
on the padding; without it (training, an infinite stream) there is no end.

By default the windows are consecutive: no token is dropped or repeated. With
a ``stride`` below the window (evaluation with context), a window starts every
``stride`` tokens and only its last ``stride`` tokens have weight 1 (the first
window's all of them): every token is still scored exactly once, in order, and
every scored token after the first window sees at least ``sequence_length -
stride`` tokens before it instead of starting from nothing at each window.

Implemented with ``tf.data.Dataset.scan`` carrying the unfinished tail, so it
costs one concatenation per document, not one element per token.
"""

from __future__ import annotations

import tensorflow as tf


def pack(documents: tf.data.Dataset, sequence_length: int, *, flush: bool,
         stride: int | None = None) -> tf.data.Dataset:
    """int32 [None] documents -> {"token_ids": int32 [L], "weights": float32 [L]} windows, one every `stride`
    tokens (default L: consecutive windows)."""
    length = int(sequence_length)
    if length < 1:
        raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
    stride = length if stride is None else int(stride)
    if not 1 <= stride <= length:
        raise ValueError(f"stride must be in [1, sequence_length = {length}], got {stride}")
    documents = documents.map(lambda tokens: (tf.cast(tokens, tf.int32), False))
    if flush:
        documents = documents.concatenate(
            tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), True)))
    positions = tf.range(length)

    def step(state, element):
        # state: the tokens not yet in a window's scored part, after the `length - stride` tokens of context
        # that the next window repeats (none before the first window, `started` False).
        tail, started = state
        tokens, last = element
        stream = tf.concat([tail, tokens], axis=0)
        size = tf.size(stream)
        context = tf.where(started, length - stride, 0)
        unscored = size - context
        # At the end, pad so that the last window takes the last unscored tokens (none: no window).
        short = tf.where(size < length, length - size, (stride - (size - length) % stride) % stride)
        pad = tf.where(last & (unscored > 0), short, 0)
        stream = tf.pad(stream, [[0, pad]])
        count = tf.maximum(tf.size(stream) - length, -stride) // stride + 1
        starts = tf.range(count) * stride
        windows = tf.gather(stream, starts[:, None] + positions[None, :])
        scored = (positions[None, :] >= length - stride) | ((starts[:, None] == 0) & tf.logical_not(started))
        real = starts[:, None] + positions[None, :] < size
        weights = tf.cast(scored & real, tf.float32)
        return (stream[count * stride:], started | (count > 0)), (windows, weights)

    windows = documents.scan((tf.zeros([0], tf.int32), tf.constant(False)), step)
    windows = windows.unbatch()
    return windows.map(lambda ids, weights: {"token_ids": ids, "weights": weights})


def pad_batch(batch: dict, batch_size: int) -> dict:
    """Pads a (possibly short) last batch to `batch_size` rows of zeros with weight 0."""
    def pad(value):
        rows = batch_size - tf.shape(value)[0]
        padded = tf.pad(value, [[0, rows]] + [[0, 0]] * (value.shape.rank - 1))
        return tf.ensure_shape(padded, [batch_size] + value.shape[1:].as_list())
    return {key: pad(value) for key, value in batch.items()}
