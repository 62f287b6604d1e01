"""`local_text`: a TFDS builder over real text already on this machine.

It needs no download. By default it reads the Python standard library sources
of the running interpreter (``sysconfig.get_paths()["stdlib"]``, every ``*.py``
file, ``site-packages``/``dist-packages``/``__pycache__`` and hidden folders
skipped); it is what ``make demo`` trains on.

Examples are whole files: ``{"text": <the file's exact bytes>, "path": <path
relative to the root, POSIX style>}``. The text is kept as raw bytes (not
decoded), so byte-level models see exactly the bytes on disk.

Split: deterministic, by a stable hash of the relative path
(:func:`split_for_path`): SHA-256 of the path, modulo 100: 0-89 ``train``,
90-94 ``validation``, 95-99 ``test``. A file keeps its split whatever other
files the directory holds.

Other directories (any directory of text files) are read through a builder
config; the simplest way is the constructor keywords::

    builder = LocalText(data_dir=DIR, directory="/my/texts", glob="**/*.txt")
    builder.download_and_prepare()

which is what ``make_dataset("local_text", ..., local_text_dir="/my/texts")``
does. ``local_text_config(directory, glob=..., max_files=..., max_bytes=...)``
returns the config itself (its name is derived from the absolute directory,
glob, limits and the names, sizes and modification times of the files, so each
directory gets its own sub-directory in ``data_dir/local_text/``, and one whose
files changed is prepared again instead of read stale). Files that look binary (a NUL byte in their first
8 KiB) are skipped. ``max_files`` / ``max_bytes`` keep a deterministic subset
(files taken in hash order until the limit).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import sys
import sysconfig

import tensorflow_datasets as tfds

SPLIT_NAMES = ("train", "validation", "test")
# Percent of the hash space given to train and validation; test gets the rest.
TRAIN_PERCENT = 90
VALIDATION_PERCENT = 5

DEFAULT_CONFIG_NAME = f"stdlib_py{sys.version_info.major}{sys.version_info.minor}"
DEFAULT_GLOB = "**/*.py"
DEFAULT_CUSTOM_GLOB = "**/*"
DEFAULT_EXCLUDE = ("site-packages", "dist-packages", "__pycache__")


def stdlib_directory() -> str:
    """The standard library directory of the running interpreter."""
    return sysconfig.get_paths()["stdlib"]


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_for_path(relative_path: str) -> str:
    """The split ('train'/'validation'/'test') a file goes to, from its relative path."""
    bucket = _stable_hash(pathlib.PurePath(relative_path).as_posix()) % 100
    if bucket < TRAIN_PERCENT:
        return "train"
    if bucket < TRAIN_PERCENT + VALIDATION_PERCENT:
        return "validation"
    return "test"


@dataclasses.dataclass(eq=False)
class LocalTextConfig(tfds.core.BuilderConfig):
    """Which files `local_text` reads.

    Attributes:
      directory: root folder; None means the standard library of this interpreter.
      glob: pattern relative to the root (pathlib syntax, ``**`` recurses).
      exclude: folder or file names skipped wherever they occur in a path.
      max_files: keep at most this many files (deterministic subset), or None.
      max_bytes: keep files until their total size would pass this, or None.
    """

    directory: str | None = None
    glob: str = DEFAULT_GLOB
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    max_files: int | None = None
    max_bytes: int | None = None

    @property
    def root(self) -> str:
        return os.path.abspath(os.path.expanduser(self.directory or stdlib_directory()))


def local_text_config(directory: str | None = None, *, glob: str | None = None,
                      max_files: int | None = None, max_bytes: int | None = None,
                      exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> LocalTextConfig:
    """A config for `directory` (None: the default stdlib config, possibly limited)."""
    if directory is None and glob is None and max_files is None and max_bytes is None:
        return LocalText.builder_configs[DEFAULT_CONFIG_NAME]
    if directory is None:
        root, default_glob, stem = stdlib_directory(), DEFAULT_GLOB, DEFAULT_CONFIG_NAME
    else:
        root = os.path.abspath(os.path.expanduser(directory))
        default_glob = DEFAULT_CUSTOM_GLOB
        stem = re.sub(r"[^a-z0-9]+", "_", os.path.basename(root.rstrip("/")).lower()).strip("_")
        stem = stem[:32] or "root"
    glob = glob or default_glob
    key = repr((root, glob, tuple(exclude), max_files, max_bytes))
    if directory is not None:  # a directory can change between runs; the stdlib of an interpreter does not
        key += contents_fingerprint(root, glob, tuple(exclude))
    name = f"{stem}_{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    return LocalTextConfig(
        name=name, directory=root, glob=glob, exclude=tuple(exclude), max_files=max_files,
        max_bytes=max_bytes,
        description=f"Files {glob} under {root} (max_files={max_files}, max_bytes={max_bytes}).")


def _looks_binary(path: pathlib.Path) -> bool:
    with open(path, "rb") as f:
        return b"\x00" in f.read(8192)


def _matching_files(root: pathlib.Path, glob: str, exclude: tuple[str, ...]):
    """(relative path, path) of the files under `root` matching `glob`, excluded and hidden parts skipped."""
    excluded = set(exclude)
    for path in root.glob(glob):
        relative = path.relative_to(root)
        if not any(part in excluded or part.startswith(".") for part in relative.parts) and path.is_file():
            yield relative, path


def contents_fingerprint(root: str, glob: str, exclude: tuple[str, ...]) -> str:
    """A digest of the names, sizes and modification times of the files a config would read: it is part of a
    directory's config name, so that a directory whose files changed is prepared again, never read stale."""
    digest = hashlib.sha256()
    if os.path.isdir(root):
        for relative, path in sorted(_matching_files(pathlib.Path(root), glob, exclude)):
            stat = path.stat()
            line = f"{relative.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def list_files(config: LocalTextConfig) -> list[tuple[str, str]]:
    """(relative POSIX path, absolute path) of the files `config` selects, sorted by path."""
    root = pathlib.Path(config.root)
    if not root.is_dir():
        raise FileNotFoundError(f"local_text directory {root} does not exist")
    found = [(relative.as_posix(), str(path)) for relative, path in _matching_files(root, config.glob, config.exclude)
             if not _looks_binary(path)]
    if config.max_files is not None or config.max_bytes is not None:
        found.sort(key=lambda item: (_stable_hash(item[0]), item[0]))
        kept, total = [], 0
        for relative, path in found:
            if config.max_files is not None and len(kept) >= config.max_files:
                break
            size = os.path.getsize(path)
            if config.max_bytes is not None and total + size > config.max_bytes:
                continue
            kept.append((relative, path))
            total += size
        found = kept
    return sorted(found)


class LocalText(tfds.core.GeneratorBasedBuilder):
    """Real local text (by default this interpreter's standard library), no download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: whole files, hash split 90/5/5."}
    BUILDER_CONFIGS = [
        LocalTextConfig(
            name=DEFAULT_CONFIG_NAME,
            description="The *.py files of this interpreter's standard library "
            "(site-packages skipped).",
        )
    ]

    def __init__(self, *, directory: str | None = None, glob: str | None = None,
                 max_files: int | None = None, max_bytes: int | None = None, config=None,
                 **kwargs):
        if any(value is not None for value in (directory, glob, max_files, max_bytes)):
            if config is not None:
                raise ValueError("pass either config or directory/glob/max_files/max_bytes, not both")
            config = local_text_config(directory, glob=glob, max_files=max_files, max_bytes=max_bytes)
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Real local text that needs no download: whole files as raw bytes, split "
                "90/5/5 by a hash of the relative path. Root: "
                f"{self.builder_config.root}, glob: {self.builder_config.glob}."),
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "path": tfds.features.Text(),
            }),
            homepage="https://docs.python.org/3/library/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        files = list_files(self.builder_config)
        by_split = {name: [] for name in SPLIT_NAMES}
        for relative, path in files:
            by_split[split_for_path(relative)].append((relative, path))
        empty = [name for name, members in by_split.items() if not members]
        if empty:
            raise ValueError(
                f"local_text: {len(files)} files matching {self.builder_config.glob!r} under "
                f"{self.builder_config.root} leave split(s) {', '.join(empty)} empty "
                "(the split is 90/5/5 by a hash of the path); add more files")
        return {name: self._generate_examples(members) for name, members in by_split.items()}

    def _generate_examples(self, files):
        for relative, path in files:
            with open(path, "rb") as f:
                yield relative, {"text": f.read(), "path": relative}
