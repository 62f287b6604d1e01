"""Packing documents into fixed windows: nothing lost, nothing repeated."""

import numpy as np
import tensorflow as tf

from apps.data import packing


def _documents(lengths, start=1):
    values, documents = start, []
    for length in lengths:
        documents.append(np.arange(values, values + length, dtype=np.int32))
        values += length
    return documents


def _dataset(documents):
    return tf.data.Dataset.from_generator(
        lambda: iter(documents), output_signature=tf.TensorSpec([None], tf.int32))


def test_flush_covers_every_token_once_in_order():
    documents = _documents([3, 0, 10, 1, 7])  # 21 tokens, an empty document too
    windows = list(packing.pack(_dataset(documents), 4, flush=True).as_numpy_iterator())
    assert len(windows) == 6  # ceil(21 / 4)
    ids = np.concatenate([w["token_ids"] for w in windows])
    weights = np.concatenate([w["weights"] for w in windows])
    assert ids.dtype == np.int32 and weights.dtype == np.float32
    np.testing.assert_array_equal(ids[weights == 1], np.concatenate(documents))
    np.testing.assert_array_equal(weights, [1.0] * 21 + [0.0] * 3)
    np.testing.assert_array_equal(ids[21:], 0)


def test_exact_multiple_has_no_padding_window():
    windows = list(packing.pack(_dataset(_documents([5, 3])), 4, flush=True))
    assert len(windows) == 2
    assert all(float(tf.reduce_min(w["weights"])) == 1.0 for w in windows)


def test_without_flush_the_unfinished_tail_is_kept_back():
    windows = list(packing.pack(_dataset(_documents([5, 6])), 4, flush=False))
    assert len(windows) == 2  # 11 tokens -> two full windows, tail of 3 waits
    np.testing.assert_array_equal(windows[1]["token_ids"], [5, 6, 7, 8])


def test_pad_batch_adds_zero_rows():
    batch = {"token_ids": tf.ones([2, 3], tf.int32), "weights": tf.ones([2, 3])}
    padded = packing.pad_batch(batch, 5)
    assert padded["token_ids"].shape == (5, 3)
    assert float(tf.reduce_sum(padded["weights"])) == 6.0
    assert int(tf.reduce_sum(padded["token_ids"][2:])) == 0
