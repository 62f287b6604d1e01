"""Tokenizers: exact bytes, SentencePiece training and reuse, raster image order."""

import numpy as np
import pytest
import tensorflow as tf

from apps.data import tokenizers

TEXT = "Hello, w\u00f6rld \u2603\n\ttabs and  spaces".encode("utf-8") + b"\xff\x00\x80"


def test_byte_tokenizer_gives_exact_bytes():
    tokenizer = tokenizers.ByteTokenizer()
    ids = tokenizer.tokenize(tf.constant(TEXT))
    assert ids.dtype == tf.int32
    np.testing.assert_array_equal(ids.numpy(), np.frombuffer(TEXT, np.uint8))
    assert tokenizer.vocabulary_size == 256
    assert tokenizer.detokenize(ids).numpy() == TEXT


def test_byte_tokenizer_covers_all_256_values_and_batches():
    every_byte = bytes(range(256))
    tokenizer = tokenizers.ByteTokenizer()
    ids = tokenizer.tokenize(tf.constant([every_byte, b"", b"ab"]))
    assert isinstance(ids, tf.RaggedTensor)
    np.testing.assert_array_equal(ids[0].numpy(), np.arange(256))
    assert ids[1].shape[0] == 0
    assert list(tokenizer.detokenize(ids).numpy()) == [every_byte, b"", b"ab"]


def _corpus():
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=8)) for _ in range(200)]
    return ["\n".join(lines[i:i + 10]).encode() for i in range(0, 200, 10)]


def test_sentencepiece_trains_saves_and_round_trips(tmp_path):
    path = str(tmp_path / "spm" / "spm_64.model")
    tokenizers.train_sentencepiece(_corpus(), path, 64)
    tokenizer = tokenizers.SentencePieceTokenizer(path)
    assert 20 <= tokenizer.vocabulary_size <= 64
    text = "gamma delta\nalpha beta"
    ids = tokenizer.tokenize(tf.constant(text)).numpy()
    assert ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < 64
    assert ids[-1] == tokenizer.eos_id == 2  # every document ends with </s>
    assert tokenizer.detokenize(ids[:-1]).numpy().decode() == text  # newline kept
    assert len(ids) < len(text)  # subwords, not characters


def test_sentencepiece_training_is_bounded_and_refuses_empty_text(tmp_path):
    sentences = list(tokenizers._training_sentences([b"abc def\n\nghi\n" * 1000], max_bytes=100))
    assert 0 < sum(len(s) for s in sentences) < 100 + 8
    with pytest.raises(ValueError, match="no training text"):
        tokenizers.train_sentencepiece([b"\n \n"], str(tmp_path / "x.model"), 32)


def test_image_tokenizer_is_raster_order():
    height, width, channels = 4, 5, 3
    r, c, ch = np.meshgrid(np.arange(height), np.arange(width), np.arange(channels),
                           indexing="ij")
    image = (r * 50 + c * 10 + ch).astype(np.uint8)
    tokenizer = tokenizers.ImageTokenizer((height, width, channels))
    ids = tokenizer.tokenize(image).numpy()
    assert ids.dtype == np.int32 and ids.shape == (height * width * channels,)
    for row in range(height):
        for column in range(width):
            for channel in range(channels):
                index = (row * width + column) * channels + channel
                assert ids[index] == row * 50 + column * 10 + channel
    np.testing.assert_array_equal(tokenizer.detokenize(ids).numpy(), image)


def test_image_tokenizer_crops_or_pads_odd_shapes():
    tokenizer = tokenizers.ImageTokenizer((8, 8, 3))
    large = np.full((10, 12, 3), 200, np.uint8)
    small = np.full((5, 7, 3), 200, np.uint8)
    assert tokenizer.tokenize(large).shape == (192,)
    assert np.all(tokenizer.tokenize(large).numpy() == 200)
    ids = tokenizer.tokenize(small).numpy().reshape(8, 8, 3)
    assert ids.shape == (8, 8, 3) and ids.max() == 200 and ids.min() == 0  # zero padded
    assert (ids == 200).sum() == 5 * 7 * 3
    batch = tokenizer.tokenize(np.zeros((2, 8, 8, 3), np.uint8))
    assert batch.shape == (2, 192)
