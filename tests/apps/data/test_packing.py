"""Packing documents into fixed windows: nothing lost, nothing repeated."""

import numpy as np
import pytest
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


def _scored_with_context(windows):
    """(scored ids in order, for each the ids of the window before it)."""
    scored, contexts = [], []
    for window in windows:
        for position in np.flatnonzero(window["weights"]):
            scored.append(window["token_ids"][position])
            contexts.append(window["token_ids"][:position])
    return np.array(scored), contexts


def test_stride_scores_every_token_once_in_order_with_its_context():
    documents = _documents([3, 0, 10, 1, 7, 2])  # 23 tokens
    stream = np.concatenate(documents)
    for length, stride in [(4, 4), (4, 2), (4, 1), (5, 3), (8, 3), (30, 7)]:
        windows = list(packing.pack(_dataset(documents), length, flush=True, stride=stride).as_numpy_iterator())
        scored, contexts = _scored_with_context(windows)
        np.testing.assert_array_equal(scored, stream, err_msg=f"L={length}, stride={stride}")
        for index, context in enumerate(contexts):  # the window holds the stream's tokens before the scored one
            np.testing.assert_array_equal(context, stream[max(0, index - len(context)):index])
            assert len(context) >= min(index, length - stride)
        weights = np.concatenate([w["weights"] for w in windows])
        assert weights.sum() == len(stream)
        assert len(windows) == max(1, -(-(len(stream) - length) // stride) + 1), (length, stride)


def test_stride_equal_to_the_window_is_the_consecutive_packing():
    documents = _documents([3, 0, 10, 1, 7])
    plain = list(packing.pack(_dataset(documents), 4, flush=True).as_numpy_iterator())
    strided = list(packing.pack(_dataset(documents), 4, flush=True, stride=4).as_numpy_iterator())
    for a, b in zip(plain, strided, strict=True):
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
        np.testing.assert_array_equal(a["weights"], b["weights"])


def test_stride_windows_overlap_by_the_context():
    windows = list(packing.pack(_dataset(_documents([10])), 4, flush=True, stride=2).as_numpy_iterator())
    np.testing.assert_array_equal([w["token_ids"] for w in windows],
                                  [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8], [7, 8, 9, 10]])
    np.testing.assert_array_equal([w["weights"] for w in windows], [[1, 1, 1, 1]] + [[0, 0, 1, 1]] * 3)


def test_stride_outside_the_window_is_refused():
    for stride in (0, 5):
        with pytest.raises(ValueError, match="stride must be in"):
            packing.pack(_dataset(_documents([3])), 4, flush=True, stride=stride)
