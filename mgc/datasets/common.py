"""What every dataset builder shares: the build result, file listing, checks, the summary.

Why one module: each builder only knows its dataset's layout and metadata and returns a
:class:`DatasetBuild`; checking that the audio exists, adding splits and folds, writing
and summarising are the same for all of them, so they live here once.
"""

from __future__ import annotations

import argparse
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from mgc.datasets import splits
from mgc.io import storage
from mgc.io.manifest import is_list_column, write_manifest
from mgc.io.validate import CONTRACT_COLUMNS, LABEL_COLUMNS, validate_manifest
from mgc.labels import label_vocabulary

AUDIO_EXTENSIONS: tuple[str, ...] = (
    "wav", "au", "mp3", "flac", "ogg", "opus", "m4a", "aac", "aif", "aiff", "wma",
)
"""File extensions taken as audio when a builder scans a folder."""

EXAMPLES_SHOWN = 5
"""Dropped tracks named per reason in a summary."""


@dataclass(frozen=True)
class DatasetBuild:
    """A built manifest plus what was left out of it and why.

    ``dropped`` maps a reason to the tracks (ids or paths) it removed, so that a summary
    can say "7 not in the split files" rather than silently losing tracks.
    """

    manifest: pd.DataFrame
    dropped: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def create(
        cls, manifest: pd.DataFrame, dropped: Mapping[str, Sequence[str]] | None = None
    ) -> "DatasetBuild":
        """A build whose ``dropped`` keeps only the reasons that removed something."""
        kept = {reason: tuple(items) for reason, items in (dropped or {}).items() if items}
        return cls(manifest=manifest, dropped=kept)

    def replace(
        self, manifest: pd.DataFrame, dropped: Mapping[str, Sequence[str]] | None = None
    ) -> "DatasetBuild":
        """A new build with ``manifest`` and the extra ``dropped`` reasons added."""
        merged = dict(self.dropped)
        for reason, items in (dropped or {}).items():
            merged[reason] = tuple(merged.get(reason, ())) + tuple(items)
        return DatasetBuild.create(manifest, merged)


@dataclass(frozen=True)
class FinishConfig:
    """Steps applied to any built manifest before it is written (flags of every builder).

    ``random_split`` gives tracks without a split one (stratified, grouped by artist) in
    ``fractions``; ``folds`` > 1 adds a ``fold`` column for grouped K-fold CV.
    """

    check_files: bool = False
    check_workers: int = 32
    random_split: bool = False
    fractions: tuple[float, float, float] = splits.DEFAULT_FRACTIONS
    folds: int = 0
    seed: int = 0


def make_manifest(rows: Iterable[Mapping[str, object]], columns: Sequence[str] = ()) -> pd.DataFrame:
    """A validated manifest frame from row dicts (contract columns first, extras kept).

    ``columns`` lists columns that must exist even when there are no rows.
    """
    frame = pd.DataFrame(list(rows))
    for column in columns:
        if column not in frame.columns:
            frame[column] = pd.Series([None] * len(frame), dtype=object)
    return validate_manifest(frame)


def audio_prefix(root: str) -> str:
    """What every track uri under ``root`` starts with: ``root`` plus one ``/``.

    Local folders are made absolute: a relative uri in a manifest is resolved against
    the manifest's own folder when read (:func:`mgc.io.manifest.read_manifest`), not
    against where the builder ran. URLs (``s3://...``) are kept. Builders then write
    ``prefix + relative_path``, which costs nothing per track on 100k-track datasets.
    """
    root = str(root)
    if storage.is_local(root) and "://" not in root:
        root = storage.filesystem_for(root)[1]
    return root.rstrip("/") + "/"


def list_files(root: str, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[str]:
    """Paths (relative to ``root``, ``/``-separated, sorted) of files with ``extensions``.

    ``root`` is a local folder or any fsspec URL (``s3://bucket/gtzan``); hidden files
    and folders (``.DS_Store``, ``._x.wav``) are skipped.
    """
    fs, base = storage.filesystem_for(root)
    if not fs.isdir(base):
        raise FileNotFoundError(f"{root} is not a folder")
    base = base.rstrip("/")
    wanted = tuple("." + ext.lower().lstrip(".") for ext in extensions)
    found = []
    for path in fs.find(base):
        relative = posixpath.relpath(str(path).replace("\\", "/"), base.replace("\\", "/"))
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if relative.lower().endswith(wanted):
            found.append(relative)
    return sorted(found)


def check_files(build: DatasetBuild, workers: int = 32) -> DatasetBuild:
    """Drop the tracks whose ``uri`` does not exist, checking in parallel threads.

    Existence checks are I/O bound (an HTTP HEAD per object on S3), so threads overlap
    them; a missing file is dropped and counted, never fatal.
    """
    df = build.manifest
    uris = df["uri"].tolist()
    if not uris:
        return build
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(uris)))) as pool:
        present = list(pool.map(_exists, uris))
    missing = [uri for uri, ok in zip(uris, present) if not ok]
    kept = df[present].reset_index(drop=True)
    return build.replace(kept, {"audio file not found": missing})


def _exists(uri: str) -> bool:
    try:
        return storage.exists(uri)
    except (OSError, ValueError):
        return False


def finish(build: DatasetBuild, config: FinishConfig = FinishConfig()) -> DatasetBuild:
    """Apply ``config``: check files, then split, then folds (so both see only real files).

    A manifest without any label (a catalog to tag) gets no random split.
    """
    if config.check_files:
        build = check_files(build, config.check_workers)
    df = build.manifest
    labeled = any(df[column].map(len).gt(0).any() for column in LABEL_COLUMNS)
    if config.random_split and labeled:
        df = splits.assign_splits(df, fractions=config.fractions, seed=config.seed)
    if config.folds:
        df = splits.assign_folds(df, config.folds, seed=config.seed)
    return build.replace(df)


save = write_manifest
"""Write a built manifest (:func:`mgc.io.manifest.write_manifest`; CSV/TSV join every list column with ``|``)."""


def summary(build: DatasetBuild, name: str = "") -> str:
    """A few human-readable lines: tracks, per split, labels per task, folds, drops."""
    df = build.manifest
    lines = [f"{name + ': ' if name else ''}{len(df)} tracks"]
    if "split" in df.columns:
        counts = splits.split_counts(df)
        lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for column in LABEL_COLUMNS:
        vocabulary = label_vocabulary(df[column].tolist())
        if vocabulary:
            labeled = int(df[column].map(len).gt(0).sum())
            lines.append(f"  {column}: {len(vocabulary)} labels on {labeled} tracks")
    for column in df.columns:
        if column not in CONTRACT_COLUMNS and is_list_column(df[column]):
            lines.append(f"  {column}: {len(label_vocabulary(df[column].tolist()))} labels")
    if "artist_id" in df.columns:
        lines.append(f"  artists: {df['artist_id'].nunique(dropna=True)}")
    if splits.FOLD_COLUMN in df.columns:
        folds = df[splits.FOLD_COLUMN].value_counts().sort_index()
        lines.append("  folds: " + ", ".join(f"{k}: {v}" for k, v in folds.items()))
    for reason, items in build.dropped.items():
        shown = ", ".join(items[:EXAMPLES_SHOWN]) + (", ..." if len(items) > EXAMPLES_SHOWN else "")
        lines.append(f"  dropped {len(items)} ({reason}): {shown}")
    return "\n".join(lines)


__all__ = [
    "AUDIO_EXTENSIONS",
    "DatasetBuild",
    "FinishConfig",
    "check_files",
    "finish",
    "audio_prefix",
    "list_files",
    "make_manifest",
    "save",
    "summary",
]


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is built from the command line.

    ``add_arguments`` adds the dataset's own flags to its sub-command; ``build`` runs the
    builder with them; ``random_split`` says whether mgc should add a random split (only
    where the dataset has no official one, or the user asked for it).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace], DatasetBuild]
    random_split: Callable[[argparse.Namespace], bool] = lambda args: False
