"""make_dataset / evaluation_units / dataset_info on local_text over tiny local files."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from apps import data
from apps.data import local_text

LENGTH, BATCH = 32, 4


def _eval(text_dir, data_dir, split, **kwargs):
    root, _ = text_dir
    return data.make_dataset("local_text", split, sequence_length=LENGTH, batch_size=BATCH,
                             training=False, data_dir=data_dir, local_text_dir=str(root),
                             **kwargs)


def _train(text_dir, data_dir, seed=0, **kwargs):
    root, _ = text_dir
    return data.make_dataset("local_text", "train", sequence_length=LENGTH, batch_size=BATCH,
                             training=True, data_dir=data_dir, local_text_dir=str(root),
                             seed=seed, shuffle_buffer=64, **kwargs)


def _stored_documents(text_dir, data_dir, split):
    root, _ = text_dir
    builder = local_text.LocalText(data_dir=data_dir, directory=str(root))
    return [ex["text"] for ex in tfds.as_numpy(builder.as_dataset(split=split))]


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_evaluation_reproduces_the_split_bytes_exactly(text_dir, local_data_dir, split,
                                                       no_network):
    batches = list(_eval(text_dir, local_data_dir, split).as_numpy_iterator())
    for batch in batches:
        assert batch["token_ids"].shape == (BATCH, LENGTH) and batch["token_ids"].dtype == np.int32
        assert batch["weights"].shape == (BATCH, LENGTH) and batch["weights"].dtype == np.float32
        assert batch["token_ids"].min() >= 0 and batch["token_ids"].max() <= 255
        assert set(np.unique(batch["weights"])) <= {0.0, 1.0}
    ids = np.concatenate([b["token_ids"].reshape(-1) for b in batches])
    weights = np.concatenate([b["weights"].reshape(-1) for b in batches])
    expected = b"".join(_stored_documents(text_dir, local_data_dir, split))
    _, files = text_dir
    assert sorted(_stored_documents(text_dir, local_data_dir, split)) == sorted(
        d for p, d in files.items() if local_text.split_for_path(p) == split)
    assert ids[weights == 1].astype(np.uint8).tobytes() == expected
    # Padding only at the very end: real tokens form one prefix, then zeros.
    real = int(weights.sum())
    assert np.all(weights[:real] == 1) and np.all(weights[real:] == 0)
    assert np.all(ids[real:] == 0)
    assert len(batches) == math.ceil(math.ceil(real / LENGTH) / BATCH)


def test_evaluation_with_a_stride_scores_the_split_bytes_once_with_context(text_dir, local_data_dir):
    batches = list(_eval(text_dir, local_data_dir, "test", eval_stride=8).as_numpy_iterator())
    expected = b"".join(_stored_documents(text_dir, local_data_dir, "test"))
    rows = [(ids, weights) for b in batches for ids, weights in zip(b["token_ids"], b["weights"])]
    scored = np.concatenate([ids[weights == 1] for ids, weights in rows])
    assert scored.astype(np.uint8).tobytes() == expected
    for ids, weights in rows[1:]:  # after the first window, only the last 8 of 32 bytes, with 24 before them
        assert not weights[:LENGTH - 8].any()
    units = data.evaluation_units("local_text", "test", data_dir=local_data_dir, local_text_dir=str(text_dir[0]))
    assert sum(w.sum() for _, w in rows) == units["tokens"]


def test_training_ignores_the_evaluation_stride(text_dir, local_data_dir):
    plain = next(iter(_train(text_dir, local_data_dir)))
    strided = next(iter(_train(text_dir, local_data_dir, eval_stride=8)))
    np.testing.assert_array_equal(plain["token_ids"], strided["token_ids"])
    assert float(np.min(strided["weights"])) == 1.0


def test_evaluation_is_deterministic_and_finite(text_dir, local_data_dir):
    dataset = _eval(text_dir, local_data_dir, "validation")
    first = list(dataset.as_numpy_iterator())
    second = list(_eval(text_dir, local_data_dir, "validation").as_numpy_iterator())
    again = list(dataset.as_numpy_iterator())
    assert len(first) == len(second) == len(again) > 0
    for a, b, c in zip(first, second, again):
        np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
        np.testing.assert_array_equal(a["token_ids"], c["token_ids"])
        np.testing.assert_array_equal(a["weights"], c["weights"])


def test_evaluation_units_match_the_split(text_dir, local_data_dir):
    _, files = text_dir
    texts = [d for p, d in files.items() if local_text.split_for_path(p) == "test"]
    units = data.evaluation_units("local_text", "test", data_dir=local_data_dir,
                                  local_text_dir=str(text_dir[0]))
    assert units == {
        "tokens": sum(map(len, texts)),
        "bytes": sum(map(len, texts)),
        "words": sum(len(t.split()) for t in texts),
        "lines": sum(t.count(b"\n") for t in texts),
        "documents": len(texts),
    }
    weights = sum(b["weights"].sum() for b in _eval(text_dir, local_data_dir, "test")
                  .as_numpy_iterator())
    assert weights == units["tokens"]
    # Cached beside the data, and the cache is what a second call returns.
    cache_dir = os.path.join(local_data_dir, "local_text",
                             local_text.local_text_config(str(text_dir[0])).name)
    cache = os.path.join(cache_dir, "evaluation_units_test_bytes.json")
    with open(cache) as f:
        stored = json.load(f)
    assert stored["units"] == units
    again = lambda: data.evaluation_units("local_text", "test", data_dir=local_data_dir,
                                          local_text_dir=str(text_dir[0]))
    stored["units"]["words"] = -1  # a marked cache is what comes back...
    with open(cache, "w") as f:
        json.dump(stored, f)
    assert again()["words"] == -1
    stored["fingerprint"][0] += 1  # ...unless it belongs to other data: then recomputed
    with open(cache, "w") as f:
        json.dump(stored, f)
    assert again() == units


def test_training_is_infinite_fixed_shape_shuffled_and_seeded(text_dir, local_data_dir):
    for dataset in (_train(text_dir, local_data_dir), _eval(text_dir, local_data_dir, "train")):
        assert dataset.element_spec["token_ids"].shape == (BATCH, LENGTH)
        assert dataset.element_spec["weights"].shape == (BATCH, LENGTH)
    eval_batches = list(_eval(text_dir, local_data_dir, "train").as_numpy_iterator())
    many = len(eval_batches) + 5  # more than one epoch: it repeats
    first = list(_train(text_dir, local_data_dir, seed=1).take(many).as_numpy_iterator())
    same = list(_train(text_dir, local_data_dir, seed=1).take(many).as_numpy_iterator())
    other = list(_train(text_dir, local_data_dir, seed=2).take(many).as_numpy_iterator())
    assert len(first) == many
    for batch in first:
        assert batch["token_ids"].shape == (BATCH, LENGTH) and batch["token_ids"].dtype == np.int32
        assert np.all(batch["weights"] == 1.0)
        assert batch["token_ids"].min() >= 0 and batch["token_ids"].max() <= 255
    stack = lambda batches: np.stack([b["token_ids"] for b in batches])
    np.testing.assert_array_equal(stack(first), stack(same))
    assert not np.array_equal(stack(first), stack(other))
    ordered = stack(eval_batches[:4])
    assert not np.array_equal(stack(first[:4]), ordered)
    # Training windows are real text: most lie inside one document (they are
    # 32 bytes; the documents 100-300), the others span two.
    _, files = text_dir
    rows = [row.astype(np.uint8).tobytes() for b in first for row in b["token_ids"]]
    inside = sum(any(row in d for d in files.values()) for row in rows)
    assert inside >= 0.5 * len(rows)


def test_sentencepiece_on_local_text_is_trained_once_beside_the_data(text_dir, local_data_dir,
                                                                   monkeypatch):
    root, _ = text_dir
    batches = list(_eval(text_dir, local_data_dir, "validation", tokenizer="sentencepiece",
                         vocabulary_size=48).as_numpy_iterator())
    config_name = local_text.local_text_config(str(root)).name
    model = os.path.join(local_data_dir, "local_text", config_name, "spm_48.model")
    assert os.path.exists(model)
    ids = np.concatenate([b["token_ids"][b["weights"] == 1] for b in batches])
    assert ids.min() >= 0 and ids.max() < 48
    assert (ids == 2).sum() == 2  # one </s> per document (the split has two)
    units = data.evaluation_units("local_text", "validation", data_dir=local_data_dir,
                                  local_text_dir=str(root), tokenizer="sentencepiece",
                                  vocabulary_size=48)
    assert units["tokens"] == len(ids) and units["documents"] == 2
    assert units["bytes"] > units["tokens"]  # subwords are longer than a byte
    info = data.dataset_info("local_text", tokenizer="sentencepiece", vocabulary_size=48)
    assert (info.vocabulary_size, info.unit, info.tokenizer) == (48, "token", "sentencepiece")

    def no_training(*args, **kwargs):
        raise AssertionError("SentencePiece retrained although the model exists")
    monkeypatch.setattr(data.tokenizers, "train_sentencepiece", no_training)
    tokenizer = data.make_tokenizer("local_text", data_dir=local_data_dir, local_text_dir=str(root),
                                    tokenizer="sentencepiece", vocabulary_size=48)
    assert tokenizer.path == model
    assert tokenizer.detokenize(tokenizer.tokenize("Document 3: the quick")[:-1]).numpy() == (
        b"Document 3: the quick")


def test_dataset_info_for_bytes():
    info = data.dataset_info("local_text")
    assert (info.vocabulary_size, info.unit, info.tokenizer, info.image_shape) == (
        256, "byte", "bytes", None)
    assert data.dataset_info("enwik8").unit == "byte"


def test_prepares_local_text_on_first_use(text_dir, tmp_path, no_network):
    fresh = str(tmp_path / "fresh")
    dataset = _eval(text_dir, fresh, "test")
    assert next(iter(dataset))["token_ids"].shape == (BATCH, LENGTH)
    assert os.path.isdir(os.path.join(fresh, "local_text"))


def test_bad_input_is_a_one_line_error(tmp_path, text_dir, local_data_dir):
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.make_dataset("local_text", "train", sequence_length=8, batch_size=2, training=True,
                          data_dir=str(tmp_path), local_text_dir=str(tmp_path / "missing"))
    message = str(error.value)
    assert "\n" not in message and "missing" in message and "local_text_dir" in message
    with pytest.raises(ValueError, match="no split 'valid'; available: test, train, validation"):
        _eval(text_dir, local_data_dir, "valid")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        data.make_dataset("local_text", "test", sequence_length=8, batch_size=0, training=False)
    with pytest.raises(ValueError, match="unknown dataset 'enwik9'.*supported"):
        data.make_dataset("enwik9", "train", sequence_length=8, batch_size=2, training=True)
    with pytest.raises(ValueError, match="tokenizer 'image' does not apply"):
        data.dataset_info("local_text", tokenizer="image")
    with pytest.raises(ValueError, match="local_text_dir applies to 'local_text' only"):
        data.make_dataset("enwik8", "train", sequence_length=8, batch_size=2, training=True,
                          data_dir=str(tmp_path), local_text_dir=str(tmp_path))


def test_no_network_fixture_blocks_connections(no_network):
    import socket  # pylint: disable=g-import-not-at-top
    with pytest.raises(AssertionError, match="network access attempted"):
        socket.create_connection(("example.com", 80), timeout=1)
