"""GTZAN: ``ROOT/<genre>/<genre>.000NN.{wav,au}``, ten genres of 100 30-second clips.

Why a split directory: GTZAN has repeated tracks, distorted clips and many clips per
artist, and random splits overstate accuracy (docs/architecture.md, "Quality bar"). The fault-filtered split
(Kereliuk, Sturm & Larsen; files ``train_filtered.txt``, ``valid_filtered.txt``,
``test_filtered.txt`` with lines like ``blues/blues.00012.wav``, 930 tracks) removes the
faults and keeps artists apart; with it, tracks it does not list are dropped and counted.
GTZAN ships no artist ids, so without that split the split is random (stratified,
track-level) and made by :func:`mgc.datasets.common.finish`.
"""

from __future__ import annotations

import argparse
import posixpath
import re
from dataclasses import dataclass

from mgc.io import storage
from mgc.datasets.common import DatasetSpec, DatasetBuild, audio_prefix, list_files, make_manifest

SPLIT_FILES: dict[str, str] = {
    "train": "train_filtered.txt",
    "validation": "valid_filtered.txt",
    "test": "test_filtered.txt",
}
"""Split name -> file of the fault-filtered split."""

MISPLACED = "not ROOT/<genre>/<genre>.NNNNN.<ext>"
DUPLICATE = "same clip in another format (first extension kept)"
UNLISTED = "not in the split files"
ABSENT = "listed in the split files, not under ROOT"
"""Reasons a clip is dropped (keys of :attr:`DatasetBuild.dropped`)."""

_CLIP = re.compile(r"^(?P<genre>[A-Za-z0-9_-]+)\.(?P<number>\d+)\.(?P<ext>[A-Za-z0-9]+)$")


@dataclass(frozen=True)
class GtzanConfig:
    """Where GTZAN is and which split to apply.

    ``extensions`` are accepted in preference order: a clip present as both ``.wav``
    and ``.au`` is listed once, as the first.
    """

    root: str
    split_dir: str | None = None
    extensions: tuple[str, ...] = ("wav", "au")


def read_split_files(split_dir: str) -> dict[str, str]:
    """Clip id (``blues.00012``) -> split, from the three filtered-split files.

    Raises ValueError when one clip is listed in two files (the split would leak).
    """
    assignment: dict[str, str] = {}
    conflicts: list[str] = []
    for split, name in SPLIT_FILES.items():
        text = storage.read_bytes(storage.join(split_dir, name)).decode("utf-8-sig")
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            clip = _clip_id(posixpath.basename(line.replace("\\", "/")))
            if clip in assignment and assignment[clip] != split:
                conflicts.append(clip)
            assignment[clip] = split
    if conflicts:
        raise ValueError(f"clips listed in two split files of {split_dir}: {conflicts[:10]}")
    return assignment


def build_gtzan(config: GtzanConfig) -> DatasetBuild:
    """The GTZAN manifest: one row per clip, ``genres`` = its folder, ``split`` if given."""
    prefix = audio_prefix(config.root)
    preference = {ext.lower(): rank for rank, ext in enumerate(config.extensions)}
    clips: dict[str, tuple[int, str, str]] = {}  # id -> (preference, genre, relative path)
    misplaced: list[str] = []
    duplicates: list[str] = []
    for relative in list_files(config.root, config.extensions):
        parts = relative.split("/")
        match = _CLIP.match(parts[-1])
        if len(parts) != 2 or match is None or match["genre"] != parts[0]:
            misplaced.append(relative)
            continue
        clip = _clip_id(parts[-1])
        candidate = (preference[match["ext"].lower()], parts[0], relative)
        if clip in clips:
            duplicates.append(max(candidate, clips[clip])[2])
            candidate = min(candidate, clips[clip])
        clips[clip] = candidate

    assignment = read_split_files(config.split_dir) if config.split_dir else None
    rows = []
    unlisted: list[str] = []
    for clip, (_, genre, relative) in sorted(clips.items()):
        row = {"track_id": clip, "uri": prefix + relative, "genres": [genre]}
        if assignment is not None:
            if clip not in assignment:
                unlisted.append(clip)
                continue
            row["split"] = assignment[clip]
        rows.append(row)
    columns = ("track_id", "uri", "genres") + (("split",) if assignment is not None else ())
    dropped = {MISPLACED: misplaced, DUPLICATE: duplicates, UNLISTED: unlisted}
    if assignment is not None:
        dropped[ABSENT] = sorted(set(assignment) - set(clips))
    return DatasetBuild.create(make_manifest(rows, columns), dropped)


def _clip_id(name: str) -> str:
    """``blues.00012.wav`` -> ``blues.00012`` (the id both audio and split files share)."""
    stem, _, _ = name.rpartition(".")
    return stem or name


__all__ = ["ABSENT", "DUPLICATE", "GtzanConfig", "MISPLACED", "UNLISTED", "SPLIT_FILES", "build_gtzan", "read_split_files"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="GTZAN folder (local or s3://)")
    parser.add_argument("--split", choices=("random", "none"), default="random",
                        help="random: stratified split (ignored with --split-dir)")
    parser.add_argument("--split-dir", default=None,
                        help="folder with train_filtered.txt, valid_filtered.txt, test_filtered.txt")


SPEC = DatasetSpec(
    name="gtzan", help="ROOT/<genre>/<genre>.000NN.{wav,au}", add_arguments=_arguments,
    build=lambda args: build_gtzan(GtzanConfig(root=args.root, split_dir=args.split_dir)),
    random_split=lambda args: args.split == "random" and not args.split_dir,
)
