"""tf.data pipelines: `make_dataset`, `dataset_info`, `evaluation_units`, `make_tokenizer`.

Every element is ``{"token_ids": int32 [batch, L], "weights": float32 [batch, L]}``
(weights 1 on real tokens, 0 on padding).

Text: the split's documents (files, ~1 MB enwik8 chunks, wikitext articles,
PG-19 books, Wiki-40B articles) are tokenised (bytes, or SentencePiece with
``</s>`` closing each document), concatenated into one stream and cut into
consecutive windows of L tokens (see `apps.data.packing`).

- Training: documents shuffled (files shuffled by TFDS, then a buffer of
  ``DOCUMENT_SHUFFLE_BUFFER`` documents, reshuffled every epoch, seeded), the
  stream repeats forever (window boundaries move from epoch to epoch because the
  document order does), windows shuffled in a buffer of `shuffle_buffer`,
  batched with ``drop_remainder`` (static shape), prefetched.
- Evaluation: stored order, finite; every token of the split appears in exactly
  one window position with weight 1; the last window is zero-padded (weight 0)
  and the last batch is padded with whole zero rows (weight 0), so every batch
  has the same static shape [batch_size, L].

Images: one image per row, flattened in raster order (row, column, channel),
``sequence_length`` must equal H*W*C (3072 for cifar10, 12288 for
downsampled_imagenet/64x64). Training shuffles (buffer of `shuffle_buffer`
images, seeded) and repeats; evaluation keeps the stored order and pads the last
batch with zero rows of weight 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import numpy as np
import tensorflow as tf

from apps.data import catalog
from apps.data import packing
from apps.data import sources
from apps.data import tokenizers as tokenizers_lib

DATASETS = catalog.DATASETS
DEFAULT_SHUFFLE_BUFFER = 1024
DOCUMENT_SHUFFLE_BUFFER = 256
_AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a dataset's tokens.

    Attributes:
      vocabulary_size: ids are in [0, vocabulary_size).
      unit: what one token is: "byte", "token" (subword) or "dim" (image sub-pixel).
      tokenizer: "bytes", "sentencepiece" or "image".
      image_shape: (height, width, channels) for images, else None.
    """

    vocabulary_size: int
    unit: str
    tokenizer: str
    image_shape: tuple[int, int, int] | None = None

    @property
    def image_length(self) -> int | None:
        """Tokens per image (H*W*C), or None for text."""
        return int(np.prod(self.image_shape)) if self.image_shape else None


def _vocabulary_size(spec: catalog.DatasetSpec, tokenizer: str,
                     vocabulary_size: int | None) -> int:
    if tokenizer == "sentencepiece":
        size = int(vocabulary_size or spec.sentencepiece_vocabulary_size)
        if size < 8:
            raise ValueError(f"SentencePiece vocabulary_size must be >= 8, got {size}")
        return size
    if vocabulary_size is not None and vocabulary_size < 256:
        raise ValueError(f"{tokenizer} tokens need vocabulary_size >= 256, got {vocabulary_size}")
    return 256


def dataset_info(name: str, *, data_dir: str | None = None, tokenizer: str | None = None,
                 vocabulary_size: int | None = None) -> DataInfo:
    """Vocabulary, unit and image shape of `name` with `tokenizer` (its default if None).

    Cheap: reads no data and trains nothing. For SentencePiece the vocabulary is
    the requested size (`vocabulary_size` or the dataset's default); the trained
    model never has more pieces.
    """
    del data_dir  # Same answer for every data_dir; kept for a uniform signature.
    spec = catalog.get_spec(name)
    tokenizer = catalog.resolve_tokenizer(spec, tokenizer)
    size = _vocabulary_size(spec, tokenizer, vocabulary_size)
    unit = {"bytes": "byte", "sentencepiece": "token", "image": "dim"}[tokenizer]
    return DataInfo(vocabulary_size=size, unit=unit, tokenizer=tokenizer,
                    image_shape=spec.image_shape)


@dataclasses.dataclass
class _Source:
    spec: catalog.DatasetSpec
    tokenizer: str
    data_dir: str
    builder: object

    def read(self, split: str, *, shuffle_files: bool = False, seed: int = 0) -> tf.data.Dataset:
        return sources.read_split(self.spec, self.builder, self.data_dir, split,
                                  shuffle_files=shuffle_files, seed=seed)


def _open(name, *, data_dir, tokenizer, local_text_dir, manual_dir) -> _Source:
    spec = catalog.get_spec(name)
    tokenizer = catalog.resolve_tokenizer(spec, tokenizer)
    if local_text_dir is not None and name != "local_text":
        raise ValueError(f"local_text_dir applies to 'local_text' only, not {name!r}")
    root = sources.resolve_data_dir(data_dir)
    builder = sources.get_builder(spec, root, local_text_dir=local_text_dir)
    sources.ensure_prepared(spec, builder, root, manual_dir=manual_dir)
    return _Source(spec, tokenizer, root, builder)


def raw_split(name: str, split: str, *, data_dir: str | None = None, local_text_dir: str | None = None,
              manual_dir: str | None = None) -> tf.data.Dataset:
    """The split's raw examples in stored order (text: tf.string documents; images: uint8 [H, W, C]), e.g. for
    a compression baseline on the same held-out bytes."""
    source = _open(name, data_dir=data_dir, tokenizer=None, local_text_dir=local_text_dir,
                   manual_dir=manual_dir)
    return source.read(split)


def sentencepiece_model_path(source: _Source, vocabulary_size: int) -> str:
    """``<data_dir>/<name>[/<config>]/spm_<vocabulary_size>.model``."""
    return os.path.join(sources.cache_dir(source.builder, source.data_dir),
                        f"spm_{vocabulary_size}.model")


def _tokenizer_for(source: _Source, vocabulary_size: int | None):
    if source.tokenizer == "bytes":
        _vocabulary_size(source.spec, "bytes", vocabulary_size)
        return tokenizers_lib.ByteTokenizer()
    if source.tokenizer == "image":
        return tokenizers_lib.ImageTokenizer(source.spec.image_shape)
    size = _vocabulary_size(source.spec, "sentencepiece", vocabulary_size)
    path = sentencepiece_model_path(source, size)
    if not tf.io.gfile.exists(path):
        texts = source.read("train").as_numpy_iterator()
        tokenizers_lib.train_sentencepiece(texts, path, size)
    return tokenizers_lib.SentencePieceTokenizer(path)


def make_tokenizer(name: str, *, data_dir: str | None = None, tokenizer: str | None = None,
                   vocabulary_size: int | None = None, local_text_dir: str | None = None,
                   manual_dir: str | None = None):
    """The tokenizer `make_dataset` uses (a SentencePiece model is trained on first use)."""
    source = _open(name, data_dir=data_dir, tokenizer=tokenizer, local_text_dir=local_text_dir,
                   manual_dir=manual_dir)
    return _tokenizer_for(source, vocabulary_size)


def _check_has_examples(source: _Source, split: str) -> None:
    splits = source.builder.info.splits
    if split in splits and splits[split].num_examples == 0:
        raise ValueError(f"split {split!r} of {source.spec.name!r} is empty")


def make_dataset(name: str, split: str, *, sequence_length: int, batch_size: int,
                 training: bool, data_dir: str | None = None, tokenizer: str | None = None,
                 vocabulary_size: int | None = None, seed: int = 0,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 local_text_dir: str | None = None,
                 manual_dir: str | None = None,
                 eval_stride: int | None = None) -> tf.data.Dataset:
    """Batches of {"token_ids": int32 [batch, L], "weights": float32 [batch, L]}.

    Args:
      name: one of `DATASETS`.
      split: a TFDS split ("train", "validation", "test"; slices like "train[:1%]").
      sequence_length: L (for images, H*W*C).
      batch_size: rows per batch (always exactly this many; see module doc).
      training: infinite, shuffled, drop_remainder; else finite, ordered, complete.
      data_dir: TFDS data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets).
      tokenizer: "bytes" / "sentencepiece" for text (default per dataset), "image".
      vocabulary_size: SentencePiece vocabulary (default per dataset).
      seed: shuffling seed (training).
      shuffle_buffer: windows (text) or images kept in the training shuffle buffer.
      local_text_dir: folder of text files for "local_text" (default: the stdlib).
      manual_dir: where enwik8.zip / wikitext-103-v1.zip are (default
        <data_dir>/downloads/manual).
      eval_stride: text evaluation (not training): a window every this many
        tokens, scoring its last `eval_stride` (`packing.pack`), so that every
        scored token has at least L - eval_stride tokens of context; None: L.

    Raises:
      DatasetNotPreparedError: data missing; the one-line message says what to do.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = _open(name, data_dir=data_dir, tokenizer=tokenizer, local_text_dir=local_text_dir,
                   manual_dir=manual_dir)
    if training:
        _check_has_examples(source, split)
    tokenizer_object = _tokenizer_for(source, vocabulary_size)
    raw = source.read(split, shuffle_files=training, seed=seed)

    if source.spec.kind == "image" and eval_stride is not None:
        raise ValueError(f"eval_stride applies to text; {name!r} is images (one window per image)")
    if source.spec.kind == "image":
        if sequence_length != tokenizer_object.length:
            raise ValueError(f"{name!r} images are {tokenizer_object.length} tokens "
                             f"({'x'.join(map(str, source.spec.image_shape))}); got "
                             f"sequence_length={sequence_length}")
        if training:
            raw = raw.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()

        def to_row(image):
            ids = tokenizer_object.tokenize(image)
            return {"token_ids": ids, "weights": tf.ones_like(ids, tf.float32)}

        rows = raw.map(to_row, num_parallel_calls=_AUTOTUNE, deterministic=True)
    else:
        if training:
            raw = raw.shuffle(DOCUMENT_SHUFFLE_BUFFER, seed=seed,
                              reshuffle_each_iteration=True).repeat()
        documents = raw.map(tokenizer_object.tokenize, num_parallel_calls=_AUTOTUNE,
                            deterministic=True)
        rows = packing.pack(documents, sequence_length, flush=not training,
                            stride=None if training else eval_stride)
        if training:
            rows = rows.shuffle(shuffle_buffer, seed=seed + 1)

    if training:
        batches = rows.batch(batch_size, drop_remainder=True)
    else:
        batches = rows.batch(batch_size).map(lambda b: packing.pad_batch(b, batch_size))
    return batches.prefetch(_AUTOTUNE)


def _cache_tag(split: str, tokenizer: str, vocabulary_size: int) -> str:
    split_tag = re.sub(r"[^A-Za-z0-9]+", "_", split).strip("_")
    suffix = f"_{vocabulary_size}" if tokenizer == "sentencepiece" else ""
    return f"evaluation_units_{split_tag}_{tokenizer}{suffix}.json"


def evaluation_units(name: str, split: str, *, data_dir: str | None = None,
                     tokenizer: str | None = None, vocabulary_size: int | None = None,
                     local_text_dir: str | None = None,
                     manual_dir: str | None = None) -> dict:
    """Totals of the evaluation split, to turn summed nats into the papers' metrics.

    Text: {"tokens": T (== sum of weights of the evaluation dataset), "bytes":
    bytes of the raw text, "words": whitespace-separated words (ASCII whitespace, as
    ``bytes.split()``), "lines": newline characters, "documents": D}.
    Bits per byte = nats / ln 2 / bytes; per-word perplexity = exp(nats / words)
    (WikiText-103's usual count adds one end-of-line token per line: words + lines).
    Images: {"tokens": T, "dims": N*H*W*C, "images": N}; bits/dim = nats / ln 2 / dims.

    Computed by reading the split once and cached as JSON in
    ``<data_dir>/<name>[/<config>]/`` (keyed on the split's example count and size,
    and on the SentencePiece model).
    """
    source = _open(name, data_dir=data_dir, tokenizer=tokenizer, local_text_dir=local_text_dir,
                   manual_dir=manual_dir)
    size = _vocabulary_size(source.spec, source.tokenizer, vocabulary_size)
    tokenizer_object = _tokenizer_for(source, vocabulary_size)
    splits = source.builder.info.splits
    fingerprint = None
    if split in splits:
        fingerprint = [int(splits[split].num_examples), int(splits[split].num_bytes)]
        if isinstance(tokenizer_object, tokenizers_lib.SentencePieceTokenizer):
            fingerprint.append(hashlib.sha256(tokenizer_object.model).hexdigest())
    cache = os.path.join(sources.cache_dir(source.builder, source.data_dir),
                         _cache_tag(split, source.tokenizer, size))
    if fingerprint is not None and tf.io.gfile.exists(cache):
        with tf.io.gfile.GFile(cache, "r") as f:
            cached = json.load(f)
        if cached.get("fingerprint") == fingerprint:
            return cached["units"]

    raw = source.read(split)
    if source.spec.kind == "image":
        if fingerprint is not None:
            images = fingerprint[0]
        else:
            images = int(raw.reduce(np.int64(0), lambda count, _: count + 1))
        dims = images * tokenizer_object.length
        units = {"tokens": dims, "dims": dims, "images": images}
    else:
        counted = raw.map(lambda text: (text, tf.size(tokenizer_object.tokenize(text))),
                          num_parallel_calls=_AUTOTUNE, deterministic=True)
        units = {"tokens": 0, "bytes": 0, "words": 0, "lines": 0, "documents": 0}
        for text, count in counted.as_numpy_iterator():
            units["tokens"] += int(count)
            units["bytes"] += len(text)
            units["words"] += len(text.split())
            units["lines"] += text.count(b"\n")
            units["documents"] += 1

    if fingerprint is not None:
        tf.io.gfile.makedirs(os.path.dirname(cache))
        with tf.io.gfile.GFile(cache, "w") as f:
            json.dump({"fingerprint": fingerprint, "units": units}, f, indent=1)
    return units
