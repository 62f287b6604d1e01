"""pg19, wiki40b/en, cifar10, downsampled_imagenet/64x64 on tfds.testing.mock_data."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from apps import data

EXAMPLES = 12


def _batches(name, split, data_dir, *, sequence_length, batch_size, training=False, **kwargs):
    dataset = data.make_dataset(name, split, sequence_length=sequence_length,
                                batch_size=batch_size, training=training, data_dir=data_dir,
                                **kwargs)
    for key, dtype in (("token_ids", "int32"), ("weights", "float32")):
        spec = dataset.element_spec[key]  # static shapes: jit-compiled steps never retrace
        assert spec.shape == (batch_size, sequence_length) and spec.dtype.name == dtype
    if training:
        dataset = dataset.take(EXAMPLES)
    return list(dataset.as_numpy_iterator())


def _check_batch(batch, batch_size, length, vocabulary_size):
    assert batch["token_ids"].shape == (batch_size, length)
    assert batch["weights"].shape == (batch_size, length)
    assert batch["token_ids"].dtype == np.int32 and batch["weights"].dtype == np.float32
    assert batch["token_ids"].min() >= 0 and batch["token_ids"].max() < vocabulary_size


@pytest.mark.parametrize("name, feature, model_dir", [
    ("pg19", "book_text", "pg19"),
    ("wiki40b/en", "text", os.path.join("wiki40b", "en")),
])
def test_subword_text_on_mock_data(tmp_path, name, feature, model_dir, no_network):
    data_dir, vocabulary = str(tmp_path), 40
    info = data.dataset_info(name, vocabulary_size=vocabulary)
    assert (info.unit, info.tokenizer, info.image_shape) == ("token", "sentencepiece", None)
    with tfds.testing.mock_data(num_examples=EXAMPLES):
        first = _batches(name, "test", data_dir, sequence_length=16, batch_size=4,
                         vocabulary_size=vocabulary)
        second = _batches(name, "test", data_dir, sequence_length=16, batch_size=4,
                          vocabulary_size=vocabulary)
        units = data.evaluation_units(name, "test", data_dir=data_dir, vocabulary_size=vocabulary)
        documents = [ex[feature] for ex in tfds.as_numpy(
            tfds.load(name, split="test", data_dir=data_dir, shuffle_files=False))]
        tokenizer = data.make_tokenizer(name, data_dir=data_dir, vocabulary_size=vocabulary)
        training = _batches(name, "train", data_dir, sequence_length=16, batch_size=4,
                            training=True, vocabulary_size=vocabulary)
    assert os.path.exists(os.path.join(data_dir, model_dir, f"spm_{vocabulary}.model"))
    for batch in first + training:
        _check_batch(batch, 4, 16, vocabulary)
    assert len(training) == EXAMPLES and all(np.all(b["weights"] == 1) for b in training)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
        np.testing.assert_array_equal(a["weights"], b["weights"])
    expected = np.concatenate([tokenizer.tokenize(d).numpy() for d in documents])
    got = np.concatenate([b["token_ids"][b["weights"] == 1] for b in first])
    np.testing.assert_array_equal(got, expected)  # every token once, in order
    assert (got == tokenizer.eos_id).sum() == EXAMPLES
    assert units == {"tokens": len(expected), "bytes": sum(map(len, documents)),
                     "words": sum(len(d.split()) for d in documents), "lines": 0,
                     "documents": EXAMPLES}


def test_pg19_bytes_tokenizer_on_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=EXAMPLES):
        batches = _batches("pg19", "validation", str(tmp_path), sequence_length=32, batch_size=2,
                           tokenizer="bytes")
        books = [ex["book_text"] for ex in tfds.as_numpy(
            tfds.load("pg19", split="validation", data_dir=str(tmp_path)))]
    got = np.concatenate([b["token_ids"][b["weights"] == 1] for b in batches])
    assert got.astype(np.uint8).tobytes() == b"".join(books)


@pytest.mark.parametrize("name, split, shape", [
    ("cifar10", "test", (32, 32, 3)),
    ("downsampled_imagenet/64x64", "validation", (64, 64, 3)),
])
def test_images_on_mock_data(tmp_path, name, split, shape, no_network):
    length = int(np.prod(shape))
    info = data.dataset_info(name)
    assert (info.vocabulary_size, info.unit, info.tokenizer, info.image_shape) == (
        256, "dim", "image", shape)
    assert info.image_length == length
    with tfds.testing.mock_data(num_examples=EXAMPLES):
        first = _batches(name, split, str(tmp_path), sequence_length=length, batch_size=5)
        second = _batches(name, split, str(tmp_path), sequence_length=length, batch_size=5)
        images = [ex["image"] for ex in tfds.as_numpy(
            tfds.load(name, split=split, data_dir=str(tmp_path), shuffle_files=False))]
        training = _batches(name, "train", str(tmp_path), sequence_length=length, batch_size=5,
                            training=True)
        units = data.evaluation_units(name, split, data_dir=str(tmp_path))
        with pytest.raises(ValueError, match=f"{length} tokens"):
            data.make_dataset(name, split, sequence_length=1024, batch_size=2, training=False,
                              data_dir=str(tmp_path))
        with pytest.raises(ValueError, match="eval_stride applies to text"):
            data.make_dataset(name, split, sequence_length=length, batch_size=2, training=False,
                              data_dir=str(tmp_path), eval_stride=length // 2)
    assert len(first) == 3  # 12 images in batches of 5: 5, 5, 2 + 3 zero rows
    for batch in first + training:
        _check_batch(batch, 5, length, 256)
    np.testing.assert_array_equal(first[-1]["weights"].sum(axis=1), [length] * 2 + [0] * 3)
    assert sum(b["weights"].sum() for b in first) == EXAMPLES * length
    assert units == {"tokens": EXAMPLES * length, "dims": EXAMPLES * length, "images": EXAMPLES}
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
    rows = np.concatenate([b["token_ids"] for b in first])[:EXAMPLES]
    odd_shapes = 0
    for row, image in zip(rows, images, strict=True):
        odd_shapes += image.shape != shape
        # Raster order (row, column, channel); the downsampled_imagenet mock has random
        # shapes, centre-cropped / zero-padded to 64x64.
        np.testing.assert_array_equal(row, _crop_or_pad(image, shape).reshape(-1))
    assert odd_shapes == 0 if name == "cifar10" else odd_shapes > 0
    assert all(np.all(b["weights"] == 1) for b in training)
    shuffled = np.concatenate([b["token_ids"] for b in training])[:EXAMPLES]
    assert not np.array_equal(shuffled, rows)  # training order is shuffled
    assert {r.tobytes() for r in shuffled} <= {r.tobytes() for r in rows}  # same images


def _crop_or_pad(image, shape):
    """NumPy centre crop / zero pad, as tf.image.resize_with_crop_or_pad."""
    height, width, channels = shape
    top, left = max((image.shape[0] - height) // 2, 0), max((image.shape[1] - width) // 2, 0)
    image = image[top:top + height, left:left + width]
    out = np.zeros(shape, np.uint8)
    top, left = (height - image.shape[0]) // 2, (width - image.shape[1]) // 2
    out[top:top + image.shape[0], left:left + image.shape[1]] = image
    return out


@pytest.mark.parametrize("name, hint", [
    ("pg19", "gs://deepmind-gutenberg"),
    ("cifar10", ""),
    ("downsampled_imagenet/64x64", ""),
    ("wiki40b/en", "apache-beam"),
])
def test_unprepared_tfds_dataset_is_a_one_line_error(tmp_path, name, hint, no_network):
    length = {"cifar10": 3072, "downsampled_imagenet/64x64": 12288}.get(name, 64)
    for call in (
        lambda: data.make_dataset(name, "train", sequence_length=length, batch_size=2,
                                  training=True, data_dir=str(tmp_path)),
        lambda: data.evaluation_units(name, "test", data_dir=str(tmp_path)),
    ):
        with pytest.raises(data.DatasetNotPreparedError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message
        assert f"`tfds build {name} --data_dir={tmp_path}`" in message
        assert hint in message
        assert error.value.__cause__ is None and error.value.__suppress_context__
    assert isinstance(error.value, ValueError)


def test_datasets_tuple():
    assert data.DATASETS == ("local_text", "enwik8", "wikitext103", "pg19", "cifar10",
                             "downsampled_imagenet/64x64", "wiki40b/en")
