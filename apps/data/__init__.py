"""Data layer: TFDS builders, tf.data pipelines and tensorflow-text tokenizers.

Entry points (what the trainer calls)::

    from apps import data
    data.DATASETS                       # supported names
    info = data.dataset_info("enwik8")  # vocabulary_size, unit, tokenizer, image_shape
    ds = data.make_dataset("local_text", "train", sequence_length=512, batch_size=8,
                           training=True)
    units = data.evaluation_units("local_text", "validation")  # tokens, bytes, words, ...

Missing data raises `DatasetNotPreparedError` with a one-line message saying what
to do. Modules: `local_text`, `enwik8`, `wikitext103` (this project's TFDS
builders, registered with TFDS on import), `tokenizers`, `packing`, `sources`,
`catalog`, `pipelines`, `errors`.
"""

from apps.data.catalog import DATASETS, TOKENIZERS
from apps.data.enwik8 import Enwik8
from apps.data.errors import DatasetNotPreparedError
from apps.data.local_text import LocalText, LocalTextConfig, local_text_config, split_for_path
from apps.data.pipelines import (DataInfo, dataset_info, evaluation_units, make_dataset,
                                   make_tokenizer, raw_split)
from apps.data.tokenizers import (ByteTokenizer, ImageTokenizer, SentencePieceTokenizer,
                                    flatten_image, train_sentencepiece)
from apps.data.wikitext103 import Wikitext103

__all__ = [
    "DATASETS", "TOKENIZERS", "DataInfo", "DatasetNotPreparedError", "dataset_info",
    "make_dataset", "evaluation_units", "make_tokenizer", "raw_split", "ByteTokenizer",
    "SentencePieceTokenizer", "ImageTokenizer", "flatten_image", "train_sentencepiece",
    "LocalText", "LocalTextConfig", "local_text_config", "split_for_path", "Enwik8",
    "Wikitext103",
]
