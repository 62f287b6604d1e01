"""`enwik8`: this project's TFDS builder for the Hutter Prize enwik8 file.

TFDS has no enwik8, and it is not downloaded at run time: put ``enwik8.zip``
(http://mattmahoney.net/dc/enwik8.zip) or the extracted ``enwik8`` file in the
manual directory, ``<data_dir>/downloads/manual/`` by default.

Split (the standard one, as in Transformer-XL, Sparse Transformer and the
Routing Transformer): the first 90M bytes train, the next 5M validation, the
last 5M test. For a file that is not the real 100,000,000 bytes (tests) the
same proportions are used: validation and test get ``len // 20`` bytes each.

The split streams are stored in order (``disable_shuffling``) as examples of
about 1 MB, cut after a newline, so that concatenating a split's examples gives
back its bytes exactly; ``text`` holds the raw bytes. Training shuffles these
chunks; evaluation reads them in order.

Preparing: ``make_dataset`` / ``evaluation_units`` prepare it on first use once
the file is in place (offline, seconds). By hand::

    from apps.data import Enwik8
    Enwik8(data_dir=DATA_DIR).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))

(the ``tfds build`` command of TFDS 4.9 needs apache-beam just to start, and
``--imports apps.data`` to find this builder).
"""

from __future__ import annotations

import io
import os
import zipfile

import tensorflow as tf
import tensorflow_datasets as tfds

ARCHIVE_NAME = "enwik8.zip"
FILE_NAME = "enwik8"
URL = "http://mattmahoney.net/dc/enwik8.zip"
STANDARD_SIZE = 100_000_000
CHUNK_BYTES = 1_000_000

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {URL} and put {ARCHIVE_NAME} (or the extracted file `{FILE_NAME}`) in the
manual directory, `<data_dir>/downloads/manual/` by default:
  mkdir -p ~/tensorflow_datasets/downloads/manual
  wget -P ~/tensorflow_datasets/downloads/manual {URL}
"""


def find_source(manual_dir: str) -> str | None:
    """The path of enwik8.zip or enwik8 in `manual_dir`, or None."""
    for name in (ARCHIVE_NAME, FILE_NAME):
        path = os.path.join(manual_dir, name)
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            return path
    return None


def read_source(path: str) -> bytes:
    """The enwik8 bytes from the archive or the extracted file."""
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    if path.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if os.path.basename(n) == FILE_NAME]
            if not names:
                raise ValueError(f"{path} holds no file named {FILE_NAME!r}")
            data = archive.read(names[0])
    return data


def split_bounds(total: int) -> dict[str, tuple[int, int]]:
    """Byte ranges [start, end) of train/validation/test for a file of `total` bytes."""
    held_out = total // 20  # 5M of the real 100M
    train_end = total - 2 * held_out
    return {
        "train": (0, train_end),
        "validation": (train_end, train_end + held_out),
        "test": (train_end + held_out, total),
    }


def chunk(data: bytes, target: int = CHUNK_BYTES) -> list[bytes]:
    """Cuts `data` into pieces of about `target` bytes, after a newline where possible."""
    pieces, start = [], 0
    while start < len(data):
        end = min(start + target, len(data))
        if end < len(data):
            newline = data.find(b"\n", end)
            if newline != -1 and newline - end < target:
                end = newline + 1
        pieces.append(data[start:end])
        start = end
    return pieces


class Enwik8(tfds.core.GeneratorBasedBuilder):
    """enwik8 (first 10^8 bytes of an English Wikipedia XML dump), byte-level."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "90M/5M/5M byte split, ordered chunks of ~1 MB."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="enwik8: the first 100M bytes of an English Wikipedia XML dump, "
            "split 90M/5M/5M; examples are in-order chunks of raw bytes.",
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "index": tf.int32,
            }),
            homepage="http://mattmahoney.net/dc/textdata.html",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        path = find_source(os.fspath(dl_manager.manual_dir))
        if path is None:
            raise FileNotFoundError(
                f"{ARCHIVE_NAME} (or {FILE_NAME}) not found in {dl_manager.manual_dir}")
        data = read_source(path)
        return {
            name: self._generate_examples(data[start:end])
            for name, (start, end) in split_bounds(len(data)).items()
        }

    def _generate_examples(self, data: bytes):
        for index, piece in enumerate(chunk(data)):
            yield index, {"text": piece, "index": index}
