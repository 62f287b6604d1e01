"""What the data layer knows about each supported dataset."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset.

    Attributes:
      name: the name `make_dataset` takes (a TFDS name).
      kind: "text" or "image".
      source: "local" (this project's builder, no download), "manual" (this
        project's builder over a manually downloaded archive) or "tfds" (a TFDS
        builder, prepared with `tfds build`).
      feature: the feature holding the document text or the image.
      default_tokenizer: "bytes", "sentencepiece" or "image".
      sentencepiece_vocabulary_size: vocabulary used when the tokenizer is SentencePiece.
      image_shape: (height, width, channels) for images.
      prepare_note: what `tfds build` needs, shown in the not-prepared message.
    """

    name: str
    kind: str
    source: str
    feature: str
    default_tokenizer: str
    sentencepiece_vocabulary_size: int | None = None
    image_shape: tuple[int, int, int] | None = None
    prepare_note: str = ""


SPECS = {
    spec.name: spec for spec in (
        DatasetSpec("local_text", "text", "local", "text", "bytes",
                    sentencepiece_vocabulary_size=8192),
        DatasetSpec("enwik8", "text", "manual", "text", "bytes",
                    sentencepiece_vocabulary_size=8192),
        # The papers report word-level perplexity; subwords keep the softmax small.
        DatasetSpec("wikitext103", "text", "manual", "text", "sentencepiece",
                    sentencepiece_vocabulary_size=32768),
        # PG-19 (Rae et al.; Routing Transformer): a subword vocabulary of ~2^15.
        DatasetSpec("pg19", "text", "tfds", "book_text", "sentencepiece",
                    sentencepiece_vocabulary_size=32768,
                    prepare_note="needs access to gs://deepmind-gutenberg"),
        DatasetSpec("cifar10", "image", "tfds", "image", "image", image_shape=(32, 32, 3),
                    prepare_note="downloads from www.cs.toronto.edu"),
        DatasetSpec("downsampled_imagenet/64x64", "image", "tfds", "image", "image",
                    image_shape=(64, 64, 3),
                    prepare_note="downloads from image-net.org"),
        # Combiner: Wiki-40B-En with a 32K SentencePiece model. Text kept as TFDS
        # gives it (with its _START_ARTICLE_/_START_PARAGRAPH_/_NEWLINE_ markers).
        DatasetSpec("wiki40b/en", "text", "tfds", "text", "sentencepiece",
                    sentencepiece_vocabulary_size=32000,
                    prepare_note="an apache-beam pipeline over gs://tfds-data"),
    )
}

DATASETS = tuple(SPECS)
TOKENIZERS = ("bytes", "sentencepiece", "image")


def get_spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; supported: {', '.join(DATASETS)}")
    return SPECS[name]


def resolve_tokenizer(spec: DatasetSpec, tokenizer: str | None) -> str:
    """The tokenizer name to use for `spec` (its default when `tokenizer` is None)."""
    tokenizer = tokenizer or spec.default_tokenizer
    allowed = ("image",) if spec.kind == "image" else ("bytes", "sentencepiece")
    if tokenizer not in allowed:
        raise ValueError(f"tokenizer {tokenizer!r} does not apply to {spec.name!r}; "
                         f"use one of: {', '.join(allowed)}")
    return tokenizer
