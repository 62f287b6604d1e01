"""enwik8 and wikitext103: this project's builders over manually downloaded archives."""

import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from apps import data
from apps.data import enwik8, wikitext103
from tests.apps.data import fakes

LENGTH, BATCH = 16, 3


def _eval_batches(name, data_dir, manual_dir, split, **kwargs):
    return list(data.make_dataset(name, split, sequence_length=LENGTH, batch_size=BATCH,
                                  training=False, data_dir=data_dir, manual_dir=manual_dir,
                                  **kwargs).as_numpy_iterator())


def _real_tokens(batches):
    return np.concatenate([b["token_ids"][b["weights"] == 1] for b in batches])


def test_enwik8_split_and_chunks():
    assert enwik8.split_bounds(100_000_000) == {
        "train": (0, 90_000_000), "validation": (90_000_000, 95_000_000),
        "test": (95_000_000, 100_000_000)}
    assert enwik8.split_bounds(1000)["test"] == (950, 1000)
    text = b"aaa\nbb\nc\nddddddddddd\ne"
    pieces = enwik8.chunk(text, target=3)
    assert b"".join(pieces) == text
    # Cut after the first newline at or past the target, unless it is a target away.
    assert pieces == [b"aaa\n", b"bb\nc\n", b"ddd", b"ddd", b"ddddd\n", b"e"]


def test_enwik8_from_a_fake_zip_byte_exact(tmp_path, no_network):
    raw = fakes.enwik8_bytes(1000)
    manual = tmp_path / "manual"
    fakes.write_enwik8_zip(manual, raw)
    data_dir = str(tmp_path / "data")
    for split, (start, end) in enwik8.split_bounds(len(raw)).items():
        batches = _eval_batches("enwik8", data_dir, str(manual), split)
        assert all(b["token_ids"].shape == (BATCH, LENGTH) for b in batches)
        assert all(b["token_ids"].dtype == np.int32 and b["weights"].dtype == np.float32
                   for b in batches)
        tokens = _real_tokens(batches)
        assert tokens.astype(np.uint8).tobytes() == raw[start:end]
        assert len(batches) == math.ceil(math.ceil((end - start) / LENGTH) / BATCH)
    # 50 test bytes -> 4 windows (3 full + 2 bytes) -> 2 batches, the last with 2 zero rows.
    last = batches[-1]
    np.testing.assert_array_equal(last["weights"].sum(axis=1), [2, 0, 0])
    units = data.evaluation_units("enwik8", "test", data_dir=data_dir, manual_dir=str(manual))
    assert units["tokens"] == units["bytes"] == 50
    assert units["words"] == len(raw[950:].split()) and units["documents"] == 1
    training = data.make_dataset("enwik8", "train", sequence_length=LENGTH, batch_size=BATCH,
                                 training=True, data_dir=data_dir, manual_dir=str(manual))
    rows = []
    for batch in training.take(30):  # 900 bytes of train = ~56 windows: it repeats
        assert batch["token_ids"].shape == (BATCH, LENGTH)
        rows.extend(row.astype(np.uint8).tobytes() for row in batch["token_ids"].numpy())
    # One chunk, so the stream is the train bytes over and over; the windows are
    # pieces of it, shuffled (not in stream order).
    stream = raw[:900] * 2
    assert all(row in stream for row in rows)
    positions = [stream.find(row) for row in rows[:12] if stream.count(row) == 2]  # unambiguous
    assert len(positions) >= 4 and positions != sorted(positions)


def test_enwik8_extracted_file_in_default_manual_dir(tmp_path):
    raw = fakes.enwik8_bytes(400)
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "enwik8").write_bytes(raw)
    batches = _eval_batches("enwik8", str(tmp_path), None, "validation")
    assert _real_tokens(batches).astype(np.uint8).tobytes() == raw[360:380]


def test_enwik8_missing_says_which_file_and_where(tmp_path):
    manual = tmp_path / "nowhere"
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.make_dataset("enwik8", "train", sequence_length=8, batch_size=2, training=True,
                          data_dir=str(tmp_path), manual_dir=str(manual))
    message = str(error.value)
    assert "\n" not in message
    assert "enwik8.zip" in message and str(manual) in message
    assert enwik8.URL in message
    with pytest.raises(data.DatasetNotPreparedError, match="downloads/manual"):
        data.evaluation_units("enwik8", "test", data_dir=str(tmp_path))
    assert "enwik8.zip" in data.Enwik8.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_wikitext_articles_concatenate_back():
    articles = wikitext103.split_articles(fakes.WIKITEXT["train"].encode())
    assert [title for title, _ in articles] == ["Alpha", "Beta", "Gamma"]  # "= = Usage = =" stays
    assert b"".join(text for _, text in articles) == fakes.WIKITEXT["train"].encode()
    assert articles[0][1].startswith(b" \n = Alpha = \n")
    assert wikitext103.split_articles(b"no header\n") == [("", b"no header\n")]


def test_wikitext103_from_a_fake_zip(tmp_path, no_network):
    manual = tmp_path / "manual"
    fakes.write_wikitext_zip(manual)
    data_dir = str(tmp_path / "data")
    info = data.dataset_info("wikitext103", vocabulary_size=40)
    assert (info.vocabulary_size, info.unit, info.tokenizer) == (40, "token", "sentencepiece")
    batches = _eval_batches("wikitext103", data_dir, str(manual), "test", vocabulary_size=40)
    tokens = _real_tokens(batches)
    assert tokens.min() >= 0 and tokens.max() < 40
    assert (tokens == 2).sum() == 2  # two articles, each closed by </s>
    model = tmp_path / "data" / "wikitext103" / "tokens" / "spm_40.model"
    assert model.exists()
    units = data.evaluation_units("wikitext103", "test", data_dir=data_dir,
                                  manual_dir=str(manual), vocabulary_size=40)
    assert units["words"] == fakes.WIKITEXT_TEST_WORDS
    assert units["lines"] == fakes.WIKITEXT_TEST_LINES
    assert units["bytes"] == len(fakes.WIKITEXT["test"].encode())
    assert units["documents"] == 2 and units["tokens"] == len(tokens)
    again = _eval_batches("wikitext103", data_dir, str(manual), "test", vocabulary_size=40)
    np.testing.assert_array_equal(_real_tokens(again), tokens)
    # Byte-level works on the same data and reproduces the file.
    byte_batches = _eval_batches("wikitext103", data_dir, str(manual), "validation",
                                 tokenizer="bytes")
    assert _real_tokens(byte_batches).astype(np.uint8).tobytes() == (
        fakes.WIKITEXT["valid"].encode())


def test_wikitext103_extracted_files(tmp_path):
    folder = tmp_path / "downloads" / "manual" / "wikitext-103"
    folder.mkdir(parents=True)
    for split, text in fakes.WIKITEXT.items():
        (folder / f"wiki.{split}.tokens").write_text(text)
    batches = _eval_batches("wikitext103", str(tmp_path), None, "test", tokenizer="bytes")
    assert _real_tokens(batches).astype(np.uint8).tobytes() == fakes.WIKITEXT["test"].encode()


def test_wikitext103_missing_says_which_file_and_where(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError) as error:
        data.make_dataset("wikitext103", "test", sequence_length=8, batch_size=2, training=False,
                          data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "wikitext-103-v1.zip" in message and str(tmp_path / "downloads" / "manual") in message
    assert "wikitext-103-v1.zip" in data.Wikitext103.MANUAL_DOWNLOAD_INSTRUCTIONS


@pytest.mark.parametrize("builder_class, archive", [
    (data.Enwik8, "enwik8.zip"), (data.Wikitext103, "wikitext-103-v1.zip")])
def test_tfds_itself_shows_the_manual_download_instructions(tmp_path, builder_class, archive):
    empty = tmp_path / "manual"
    empty.mkdir()
    builder = builder_class(data_dir=str(tmp_path / "data"))
    config = tfds.download.DownloadConfig(manual_dir=str(empty), try_download_gcs=False)
    with pytest.raises(AssertionError, match=f"(?s)does not exist or is empty.*{archive}"):
        builder.download_and_prepare(download_config=config)
