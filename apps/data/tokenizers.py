"""Tokenizers (tensorflow-text) for the data pipelines and for sampling.

- :class:`ByteTokenizer`: exact bytes, ids 0..255 (``tf_text.ByteSplitter``).
- :class:`SentencePieceTokenizer`: ``tf_text.SentencepieceTokenizer`` over a
  model trained with the ``sentencepiece`` package (:func:`train_sentencepiece`)
  from a bounded sample of a training split, kept beside the data.
- :class:`ImageTokenizer`: images flattened in raster order (row, column,
  channel) into int32 tokens 0..255.

All ``tokenize`` methods work inside ``tf.data`` (graph mode). A scalar string
gives a 1-D int32 tensor; a 1-D batch of strings gives a ``tf.RaggedTensor``.
"""

from __future__ import annotations

import io
import os
import uuid
from typing import Iterable

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

BYTE_VOCABULARY_SIZE = 256
IMAGE_VOCABULARY_SIZE = 256
# At most this much training text is read to train a SentencePiece model.
SENTENCEPIECE_TRAINING_BYTES = 20_000_000
# SentencePiece skips longer sentences; lines are cut to this length first.
_MAX_SENTENCE_BYTES = 8192


class ByteTokenizer:
    """Text <-> its exact bytes as int32 ids 0..255 (vocabulary 256, no special ids)."""

    name = "bytes"
    vocabulary_size = BYTE_VOCABULARY_SIZE
    eos_id = None

    def __init__(self):
        self._splitter = tf_text.ByteSplitter()
        self._table = tf.constant([bytes([i]) for i in range(256)])

    def tokenize(self, text):
        """tf.string scalar -> int32 [n]; tf.string [batch] -> int32 RaggedTensor."""
        return tf.cast(self._splitter.split(tf.convert_to_tensor(text, tf.string)), tf.int32)

    def detokenize(self, ids):
        """int32 ids (last axis = tokens, ragged or dense) -> tf.string (one per row)."""
        if isinstance(ids, tf.RaggedTensor):
            pieces = tf.ragged.map_flat_values(tf.gather, self._table, tf.cast(ids, tf.int32))
        else:
            pieces = tf.gather(self._table, tf.cast(ids, tf.int32))
        return tf.strings.reduce_join(pieces, axis=-1)


class SentencePieceTokenizer:
    """SentencePiece subwords (``tf_text.SentencepieceTokenizer``) from a ``.model`` file.

    Args:
      model: path of a ``.model`` file, or its serialized bytes.
      add_eos: append ``</s>`` to every tokenized text (the pipelines mark the end
        of each document this way).
    """

    name = "sentencepiece"

    def __init__(self, model: str | bytes, *, add_eos: bool = True):
        if isinstance(model, str):
            self.path = model
            with tf.io.gfile.GFile(model, "rb") as f:
                model = f.read()
        else:
            self.path = None
        self.model = model
        self._tokenizer = tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32,
                                                         add_eos=add_eos)
        self._plain = tf_text.SentencepieceTokenizer(model=model, out_type=tf.int32)
        self.vocabulary_size = int(self._tokenizer.vocab_size())
        self.eos_id = int(self._plain.string_to_id("</s>"))

    def tokenize(self, text):
        return self._tokenizer.tokenize(tf.convert_to_tensor(text, tf.string))

    def detokenize(self, ids):
        return self._plain.detokenize(ids)

    def id_to_string(self, ids):
        return self._plain.id_to_string(ids)


class ImageTokenizer:
    """Images <-> raster-order (row, column, channel) int32 tokens 0..255.

    ``tokenize`` resizes (``tf.image.resize_with_crop_or_pad``: centre crop or
    zero pad, no interpolation) any [H', W', C] uint8 image to `image_shape`
    first, so odd shapes (the ``downsampled_imagenet`` mock) still give
    ``prod(image_shape)`` tokens.
    """

    name = "image"
    vocabulary_size = IMAGE_VOCABULARY_SIZE
    eos_id = None

    def __init__(self, image_shape):
        self.image_shape = tuple(int(d) for d in image_shape)
        self.length = int(np.prod(self.image_shape))

    def tokenize(self, image):
        """uint8 [H', W', C] (or [batch, H', W', C]) -> int32 [H*W*C] (or [batch, H*W*C])."""
        image = tf.convert_to_tensor(image)
        height, width, channels = self.image_shape
        image = tf.image.resize_with_crop_or_pad(image, height, width)
        image = tf.ensure_shape(image, [None] * (image.shape.rank - 3) + [height, width, channels])
        batch = tf.shape(image)[:-3]
        return tf.reshape(tf.cast(image, tf.int32), tf.concat([batch, [self.length]], 0))

    def detokenize(self, ids):
        """int32 [..., H*W*C] -> uint8 [..., H, W, C]."""
        ids = tf.convert_to_tensor(ids)
        shape = tf.concat([tf.shape(ids)[:-1], self.image_shape], 0)
        return tf.cast(tf.clip_by_value(tf.reshape(ids, shape), 0, 255), tf.uint8)


def flatten_image(image, image_shape):
    """An image (uint8 [H', W', C]) as raster-order int32 tokens, resized to `image_shape`."""
    return ImageTokenizer(image_shape).tokenize(image)


def _training_sentences(texts: Iterable[bytes], max_bytes: int):
    """Non-empty lines of `texts` (cut to _MAX_SENTENCE_BYTES), at most `max_bytes` in all."""
    total = 0
    for text in texts:
        for line in text.splitlines():
            for start in range(0, len(line), _MAX_SENTENCE_BYTES):
                piece = line[start:start + _MAX_SENTENCE_BYTES]
                if not piece.strip():
                    continue
                yield piece.decode("utf-8", errors="replace")
                total += len(piece)
                if total >= max_bytes:
                    return


def train_sentencepiece(texts: Iterable[bytes], path: str, vocabulary_size: int, *,
                        max_bytes: int = SENTENCEPIECE_TRAINING_BYTES) -> str:
    """Trains a unigram SentencePiece model on the first `max_bytes` of `texts`; saves it at `path`.

    Settings: identity normalisation and no whitespace folding (so decoding
    gives the text back), ``\\n`` as a user-defined piece (training reads lines),
    whitespace-only pieces allowed (code indentation), byte fallback for unseen
    characters when the vocabulary has room (>= 1024), ``hard_vocab_limit=False``
    (a tiny corpus gives fewer pieces instead of failing; ids stay below
    `vocabulary_size`). Ids: unk 0, bos 1, eos 2. The file is written to a
    temporary name and renamed, so concurrent trainers never see half a file.
    """
    import sentencepiece  # pylint: disable=g-import-not-at-top

    sentences = list(_training_sentences(texts, max_bytes))
    if not sentences:
        raise ValueError(f"no training text to train a SentencePiece model for {path}")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=int(vocabulary_size),
        hard_vocab_limit=False,
        character_coverage=0.9995,
        byte_fallback=vocabulary_size >= 1024,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        user_defined_symbols=["\n"],
        max_sentence_length=_MAX_SENTENCE_BYTES * 4,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=max(1, min(16, os.cpu_count() or 1)),
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2,
    )
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(temporary, "wb") as f:
        f.write(model.getvalue())
    tf.io.gfile.rename(temporary, path, overwrite=True)
    return path
