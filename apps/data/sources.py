"""Finding, preparing and reading the TFDS builders behind each dataset.

- ``local_text`` is prepared automatically (it needs no download).
- ``enwik8`` / ``wikitext103`` are prepared automatically when their archive is
  in the manual directory; otherwise :class:`DatasetNotPreparedError` names the
  file and the directory.
- TFDS datasets are read with ``download=False`` semantics (never prepared
  here); when they are not prepared, :class:`DatasetNotPreparedError` gives the
  ``tfds build`` command to run.
"""

from __future__ import annotations

import os
import re
import sys

import tensorflow as tf
import tensorflow_datasets as tfds

from apps.data import catalog
from apps.data import enwik8 as enwik8_lib
from apps.data import local_text as local_text_lib
from apps.data import wikitext103 as wikitext103_lib
from apps.data.errors import DatasetNotPreparedError


def resolve_data_dir(data_dir: str | None) -> str:
    """`data_dir`, or TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR")
                              or os.path.join("~", "tensorflow_datasets"))


def default_manual_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "downloads", "manual")


def get_builder(spec: catalog.DatasetSpec, data_dir: str, *,
                local_text_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The (not necessarily prepared) TFDS builder of `spec` in `data_dir`."""
    if spec.name == "local_text":
        if local_text_dir is not None:
            return local_text_lib.LocalText(data_dir=data_dir, directory=local_text_dir)
        return local_text_lib.LocalText(data_dir=data_dir)
    if spec.name == "enwik8":
        return enwik8_lib.Enwik8(data_dir=data_dir)
    if spec.name == "wikitext103":
        return wikitext103_lib.Wikitext103(data_dir=data_dir)
    return tfds.builder(spec.name, data_dir=data_dir, try_gcs=False)


def cache_dir(builder: tfds.core.DatasetBuilder, data_dir: str) -> str:
    """Folder beside the data for derived files: ``<data_dir>/<name>[/<config>]``.

    Built from the caller's `data_dir` (not the builder's, which
    ``tfds.testing.mock_data`` replaces).
    """
    parts = [data_dir, builder.name]
    if builder.builder_config is not None:
        parts.append(builder.builder_config.name)
    return os.path.join(*parts)


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether `builder`'s data is written (quietly, unlike ``builder.is_prepared()``)."""
    return tf.io.gfile.exists(os.path.join(os.fspath(builder.data_path), "dataset_info.json"))


def _not_prepared_message(spec: catalog.DatasetSpec, data_dir: str) -> str:
    # The `tfds` command of TFDS 4.9 does not start without apache-beam; the Python
    # call needs it only where the builder itself does (wiki40b).
    note = f"{spec.prepare_note}; " if spec.prepare_note else ""
    return (f"dataset '{spec.name}' is not prepared in {data_dir}; run "
            f"`tfds build {spec.name} --data_dir={data_dir}` ({note}the tfds command needs "
            f"`pip install apache-beam`), or in Python: tfds.builder('{spec.name}', "
            f"data_dir='{data_dir}').download_and_prepare()")


def ensure_prepared(spec: catalog.DatasetSpec, builder: tfds.core.DatasetBuilder,
                    data_dir: str, *, manual_dir: str | None = None) -> None:
    """Prepares local and manual builders when possible; raises a one-line error otherwise.

    TFDS datasets are not checked here (``tfds.testing.mock_data`` serves them
    without files); :func:`read_split` turns their missing data into the error.
    """
    if spec.source == "tfds" or is_prepared(builder):
        return
    download_config = tfds.download.DownloadConfig(try_download_gcs=False)
    if spec.source == "local":
        root = builder.builder_config.root
        if not os.path.isdir(root):
            raise DatasetNotPreparedError(
                f"local_text directory {root} does not exist; pass an existing folder of "
                "text files as local_text_dir") from None
        try:
            _prepare(builder, download_config)
        except ValueError as error:  # e.g. too few files for the three splits.
            raise DatasetNotPreparedError(str(error)) from None
        return
    manual_dir = os.path.expanduser(manual_dir or default_manual_dir(data_dir))
    if spec.name == "enwik8":
        found = tf.io.gfile.isdir(manual_dir) and enwik8_lib.find_source(manual_dir)
        wanted, url = enwik8_lib.ARCHIVE_NAME, enwik8_lib.URL
    else:
        found = tf.io.gfile.isdir(manual_dir) and wikitext103_lib.find_sources(
            manual_dir, builder.builder_config)
        wanted, url = builder.builder_config.archive, wikitext103_lib.URL
        if builder.builder_config.name == "raw":
            url = wikitext103_lib.RAW_URL
    if not found:
        raise DatasetNotPreparedError(
            f"dataset '{spec.name}' is not prepared in {data_dir} and {wanted} is not in "
            f"{manual_dir}; download {url} into {manual_dir} (or pass manual_dir=...) and run "
            "again") from None
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir,
                                                   try_download_gcs=False)
    _prepare(builder, download_config)


def _prepare(builder: tfds.core.DatasetBuilder, download_config) -> None:
    """Prepares a builder with a line saying so; TFDS's progress bars only on a terminal (elsewhere their
    carriage returns and escape codes are noise in a log)."""
    config = f"/{builder.builder_config.name}" if builder.builder_config else ""
    print(f"preparing {builder.name}{config} in {builder.data_dir} (once; later runs reuse it)", flush=True)
    if not sys.stderr.isatty():
        tfds.disable_progress_bar()
    builder.download_and_prepare(download_config=download_config)


def _check_split(spec: catalog.DatasetSpec, builder: tfds.core.DatasetBuilder,
                 split: str) -> None:
    known = list(builder.info.splits.keys())
    base = re.split(r"[\[+]", split, maxsplit=1)[0].strip()
    if known and base not in known:
        raise ValueError(f"dataset '{spec.name}' has no split {split!r}; available: "
                         f"{', '.join(sorted(known))}")


def read_split(spec: catalog.DatasetSpec, builder: tfds.core.DatasetBuilder, data_dir: str,
               split: str, *, shuffle_files: bool = False, seed: int = 0) -> tf.data.Dataset:
    """The split as a dataset of the spec's feature (text: tf.string; image: uint8 [H, W, C]).

    Without `shuffle_files` the examples come in the stored order, one file at
    a time (deterministic).
    """
    if shuffle_files:
        # Ordered builders (enwik8, wikitext103) are shuffled too when training.
        read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=True,
                                      enable_ordering_guard=False)
    else:
        read_config = tfds.ReadConfig(interleave_cycle_length=1)
    try:
        _check_split(spec, builder, split)
        dataset = builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                     read_config=read_config)
    except AssertionError as error:
        if "could not find data" in str(error):
            raise DatasetNotPreparedError(_not_prepared_message(spec, data_dir)) from None
        raise
    feature = spec.feature
    return dataset.map(lambda example: example[feature],
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
