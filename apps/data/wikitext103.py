"""`wikitext103`: this project's TFDS builder for WikiText-103.

TFDS has no WikiText-103, and it is not downloaded at run time: put
``wikitext-103-v1.zip`` (or, for the ``raw`` config, ``wikitext-103-raw-v1.zip``)
in the manual directory, ``<data_dir>/downloads/manual/`` by default. The
extracted files (``wiki.train.tokens``, ``wiki.valid.tokens``,
``wiki.test.tokens``, or ``wiki.*.raw``), directly in the manual directory or
in its ``wikitext-103/`` (``wikitext-103-raw/``) folder, work too.

Configs: ``tokens`` (default; the tokenised word-level files the papers report
perplexity on) and ``raw``.

Documents are the articles: a new one starts at every top-level header line
`` = Title = `` (one ``=`` on each side). Everything before the first header
(the file's opening blank line) belongs to the first article, so concatenating
a split's ``text`` in order (the builder keeps the file order,
``disable_shuffling``) gives back the file exactly. Splits: ``train``,
``validation`` (``wiki.valid.*``), ``test``.

Preparing: ``make_dataset`` / ``evaluation_units`` prepare it on first use once
the file is in place (offline, seconds). By hand::

    from apps.data import Wikitext103
    Wikitext103(data_dir=DATA_DIR).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))

(the ``tfds build`` command of TFDS 4.9 needs apache-beam just to start, and
``--imports apps.data`` to find this builder).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import zipfile

import tensorflow as tf
import tensorflow_datasets as tfds

URL = "https://wikitext.smerity.com/wikitext-103-v1.zip"
RAW_URL = "https://wikitext.smerity.com/wikitext-103-raw-v1.zip"
HOMEPAGE = ("https://blog.salesforceairesearch.com/"
            "the-wikitext-long-term-dependency-language-modeling-dataset/")
_HEADER = re.compile(r"^ = [^=](.*[^=])? = $")

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {URL} (or, for the `raw` config, {RAW_URL}; mirror:
https://huggingface.co/datasets/Salesforce/wikitext) and put the zip file, or the
extracted wiki.train.tokens / wiki.valid.tokens / wiki.test.tokens, in the manual
directory, `<data_dir>/downloads/manual/` by default:
  mkdir -p ~/tensorflow_datasets/downloads/manual
  wget -P ~/tensorflow_datasets/downloads/manual {URL}
"""


@dataclasses.dataclass(eq=False)
class Wikitext103Config(tfds.core.BuilderConfig):
    archive: str = "wikitext-103-v1.zip"
    folder: str = "wikitext-103"
    extension: str = "tokens"

    def file_name(self, split: str) -> str:
        stem = "valid" if split == "validation" else split
        return f"wiki.{stem}.{self.extension}"


TOKENS = Wikitext103Config(name="tokens", description="Tokenised (word-level) text.")
RAW = Wikitext103Config(name="raw", archive="wikitext-103-raw-v1.zip",
                        folder="wikitext-103-raw", extension="raw",
                        description="Raw (untokenised) text.")
SPLITS = ("train", "validation", "test")


def find_sources(manual_dir: str, config: Wikitext103Config) -> str | dict[str, str] | None:
    """The zip path, or {split: extracted file path}, or None when neither is in `manual_dir`."""
    archive = os.path.join(manual_dir, config.archive)
    if tf.io.gfile.exists(archive):
        return archive
    for folder in ("", config.folder):
        paths = {s: os.path.join(manual_dir, folder, config.file_name(s)) for s in SPLITS}
        if all(tf.io.gfile.exists(p) for p in paths.values()):
            return paths
    return None


def read_split(source: str | dict[str, str], config: Wikitext103Config, split: str) -> bytes:
    """The bytes of `split`'s file from the archive or the extracted files."""
    if isinstance(source, dict):
        with tf.io.gfile.GFile(source[split], "rb") as f:
            return f.read()
    with tf.io.gfile.GFile(source, "rb") as f:
        archive = zipfile.ZipFile(io.BytesIO(f.read()))
    wanted = config.file_name(split)
    names = [n for n in archive.namelist() if os.path.basename(n) == wanted]
    if not names:
        raise ValueError(f"{source} holds no file named {wanted!r}")
    return archive.read(names[0])


def split_articles(data: bytes) -> list[tuple[str, bytes]]:
    """(title, text) of every article; the texts concatenate back to `data`."""
    articles: list[tuple[str, list[bytes]]] = []
    preamble: list[bytes] = []
    for line in data.splitlines(keepends=True):
        stripped = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
        if _HEADER.match(stripped):
            articles.append((stripped.strip(" ="), preamble + [line] if not articles else [line]))
            preamble = []
        elif articles:
            articles[-1][1].append(line)
        else:
            preamble.append(line)
    if not articles:
        return [("", b"".join(preamble))] if preamble else []
    return [(title, b"".join(lines)) for title, lines in articles]


class Wikitext103(tfds.core.GeneratorBasedBuilder):
    """WikiText-103 (Merity et al., 2016), one example per article."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Articles in file order."}
    BUILDER_CONFIGS = [TOKENS, RAW]
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="WikiText-103: Wikipedia Good and Featured articles; one example "
            "per article, in file order.",
            features=tfds.features.FeaturesDict({
                "title": tfds.features.Text(),
                "text": tfds.features.Text(),
            }),
            homepage=HOMEPAGE,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        source = find_sources(os.fspath(dl_manager.manual_dir), self.builder_config)
        if source is None:
            raise FileNotFoundError(
                f"{self.builder_config.archive} not found in {dl_manager.manual_dir}")
        return {
            split: self._generate_examples(read_split(source, self.builder_config, split))
            for split in SPLITS
        }

    def _generate_examples(self, data: bytes):
        for index, (title, text) in enumerate(split_articles(data)):
            yield index, {"title": title, "text": text}
