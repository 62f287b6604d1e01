"""Packing a stream of token sequences into fixed-length windows.

Documents are concatenated into one stream (in the order they arrive) and the
stream is cut into consecutive windows of `sequence_length` tokens: no token is
dropped or repeated, and a window may span the end of one document and the
start of the next (SentencePiece documents end with ``</s>``; byte documents
are joined as they are). With ``flush=True`` (evaluation) the final partial
window is emitted, zero-padded, with weights 0 on the padding; without it
(training, an infinite stream) there is no end.

Implemented with ``tf.data.Dataset.scan`` carrying the unfinished tail, so it
costs one concatenation per document, not one element per token.
"""

from __future__ import annotations

import tensorflow as tf


def pack(documents: tf.data.Dataset, sequence_length: int, *, flush: bool) -> tf.data.Dataset:
    """int32 [None] documents -> {"token_ids": int32 [L], "weights": float32 [L]} windows."""
    length = int(sequence_length)
    if length < 1:
        raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
    documents = documents.map(lambda tokens: (tf.cast(tokens, tf.int32), False))
    if flush:
        documents = documents.concatenate(
            tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), True)))

    def step(tail, element):
        tokens, last = element
        stream = tf.concat([tail, tokens], axis=0)
        size = tf.size(stream)
        pad = tf.where(last, (length - size % length) % length, 0)
        stream = tf.pad(stream, [[0, pad]])
        weights = tf.pad(tf.ones([size], tf.float32), [[0, pad]])
        count = tf.size(stream) // length
        used = count * length
        windows = tf.reshape(stream[:used], [count, length])
        window_weights = tf.reshape(weights[:used], [count, length])
        return stream[used:], (windows, window_weights)

    windows = documents.scan(tf.zeros([0], tf.int32), step)
    windows = windows.unbatch()
    return windows.map(lambda ids, weights: {"token_ids": ids, "weights": weights})


def pad_batch(batch: dict, batch_size: int) -> dict:
    """Pads a (possibly short) last batch to `batch_size` rows of zeros with weight 0."""
    def pad(value):
        rows = batch_size - tf.shape(value)[0]
        padded = tf.pad(value, [[0, rows]] + [[0, 0]] * (value.shape.rank - 1))
        return tf.ensure_shape(padded, [batch_size] + value.shape[1:].as_list())
    return {key: pad(value) for key, value in batch.items()}
