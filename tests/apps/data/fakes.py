"""Tiny local files and fake archives the data-layer tests write (nothing is downloaded)."""

import io
import zipfile

import numpy as np

from apps.data import local_text

# 70 short documents: the smallest count (doc_00..doc_69) where the 90/5/5 hash split gives
# validation and test two files each (checked in write_text_dir).
TEXT_FILE_COUNT = 70


def _document(index: int) -> bytes:
    body = (f"Document {index}: the quick brown fox jumps over the lazy dog.\n"
            f"Line two of {index} \u00e9t\u00e9 \u2603\n" * (1 + index % 3))
    return body.encode("utf-8")


def write_text_dir(root):
    """Writes the tiny text folder; returns {relative path: bytes} of the files kept."""
    root.mkdir(parents=True, exist_ok=True)
    kept = {}
    for index in range(TEXT_FILE_COUNT):
        folder = "sub" if index % 4 == 0 else ""
        relative = f"{folder}/doc_{index:02d}.txt".lstrip("/")
        data = _document(index)
        if index == 5:
            data += b"latin-1 byte \xff and \xe9\n"  # not UTF-8: must survive as bytes
        if index == 6:
            data = b""  # an empty file is a (zero-token) document
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        kept[relative] = data
    (root / "image.bin").write_bytes(b"\x89PNG\x00\x00binary")  # skipped: has NUL
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.txt").write_bytes(b"skip me")  # skipped: hidden
    splits = {local_text.split_for_path(path) for path in kept}
    assert splits == {"train", "validation", "test"}, splits
    return kept


def enwik8_bytes(size: int = 1000) -> bytes:
    """Wiki-XML-like bytes, with random words so that any 16 bytes occur once."""
    rng = np.random.default_rng(8)
    letters = list("abcdefghijklmnopqrstuvwxyz\u00e9")
    lines = []
    for i in range(size):
        word = "".join(rng.choice(letters, size=8))
        lines.append(f"<page><title>Caf\u00e9 {i}</title> {word} &amp;</page>\n")
    return "".join(lines).encode("utf-8")[:size]


def write_enwik8_zip(folder, data: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "enwik8.zip", "w") as archive:
        archive.writestr("enwik8", data)
    return folder / "enwik8.zip"


WIKITEXT = {
    "train": (" \n = Alpha = \n \n Alpha is the first letter . \n \n = = Usage = = \n \n"
              " It is used in <unk> words . \n \n = Beta = \n \n Beta follows alpha . \n \n"
              " = Gamma = \n \n Gamma rays are short waves . \n \n"),
    "valid": " \n = Delta = \n \n Delta is a river mouth . \n \n",
    # Hand counts for the test split: 12 words, 7 newlines, 2 articles.
    "test": " \n = Epsilon = \n \n Epsilon is small . \n \n = Zeta = \n Zeta ! \n",
}
WIKITEXT_TEST_WORDS = 12
WIKITEXT_TEST_LINES = 7


def write_wikitext_zip(folder):
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split, text in WIKITEXT.items():
            archive.writestr(f"wikitext-103/wiki.{split}.tokens", text.encode("utf-8"))
    (folder / "wikitext-103-v1.zip").write_bytes(buffer.getvalue())
    return folder / "wikitext-103-v1.zip"
