"""MTG-Jamendo: the ``autotagging_<subset>-<split>.tsv`` files of one of its five splits.

Why parsed by hand: each row is ``TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, DURATION`` and
then one tag per remaining tab-separated column, a variable number of them, with CRLF
line ends; a CSV reader would take the header's six columns as the truth. Tags carry a
category prefix (``genre---rock``, ``mood/theme---happy``, ``instrument---piano``) that
decides the manifest column (``genres``, ``moods``, the extra ``instruments``) and is
dropped. The official splits are artist-grouped and are kept as is; ``genre+moodtheme``
unites the genre and mood/theme files so one manifest trains both heads (a track in only
one of them has no labels for the other task, and is masked there in training).
Audio sits at ``ROOT/<PATH>`` (``48/948.mp3``); the low-quality release names files
``48/948.low.mp3`` (``audio_suffix=".low.mp3"``).
"""

from __future__ import annotations

import argparse
import posixpath
import re
from dataclasses import dataclass

from mgc.config import SPLITS
from mgc.io import storage
from mgc.datasets.common import DatasetSpec, DatasetBuild, audio_prefix, make_manifest

SUBSETS: dict[str, tuple[str, ...]] = {
    "genre": ("genre",),
    "moodtheme": ("moodtheme",),
    "top50tags": ("top50tags",),
    "genre+moodtheme": ("genre", "moodtheme"),
}
"""Subset name -> the TSV families it reads."""

TAG_COLUMNS: dict[str, str] = {"genre": "genres", "mood/theme": "moods", "instrument": "instruments"}
"""Tag prefix -> manifest column."""

TAG_SEPARATOR = "---"
METADATA_FIELDS: tuple[str, ...] = ("TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION")


@dataclass(frozen=True)
class JamendoConfig:
    """Which split folder, subset and audio release to use.

    ``split_dir`` is either the folder holding ``split-0`` ... ``split-4`` (pick one
    with ``split``) or one ``split-N`` folder itself.
    """

    split_dir: str
    audio_root: str
    subset: str = "genre"
    split: int = 0
    audio_suffix: str = ".mp3"


def split_folder(split_dir: str, split: int) -> str:
    """The folder holding split ``split``'s TSVs (``split_dir/split-N`` or ``split_dir``)."""
    nested = storage.join(split_dir, f"split-{split}")
    if storage.exists(nested):
        return nested
    name = posixpath.basename(str(split_dir).rstrip("/"))
    other = re.fullmatch(r"split-(\d+)", name)
    if other and int(other[1]) != split:
        raise ValueError(f"{split_dir} is split {other[1]}, not split {split}")
    return split_dir


def read_tsv(uri: str) -> list[dict[str, object]]:
    """One record per row: the metadata fields plus ``tags`` (prefixed tag strings)."""
    text = storage.read_bytes(uri).decode("utf-8-sig")
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{uri} is empty")
    header = [field.strip() for field in lines[0].split("\t")]
    if tuple(header[: len(METADATA_FIELDS)]) != METADATA_FIELDS:
        raise ValueError(f"{uri}: expected columns {METADATA_FIELDS} first, found {header}")
    records = []
    for number, line in enumerate(lines[1:], start=2):
        fields = [field.strip() for field in line.split("\t")]
        if not any(fields):
            continue
        if len(fields) < len(METADATA_FIELDS):
            raise ValueError(f"{uri} line {number}: {len(fields)} fields, expected at least 5")
        record: dict[str, object] = dict(zip(METADATA_FIELDS, fields))
        record["tags"] = [tag for tag in fields[len(METADATA_FIELDS):] if tag]
        records.append(record)
    return records


def split_tag(tag: str) -> tuple[str, str]:
    """``genre---rock`` -> (``genres``, ``rock``); an unknown prefix is a ValueError."""
    prefix, separator, name = tag.partition(TAG_SEPARATOR)
    if not separator or prefix not in TAG_COLUMNS or not name:
        raise ValueError(f"tag {tag!r} has no known prefix ({', '.join(TAG_COLUMNS)})")
    return TAG_COLUMNS[prefix], name


def build_jamendo(config: JamendoConfig) -> DatasetBuild:
    """The manifest of one MTG-Jamendo subset and split (train/validation/test rows).

    A track listed with different splits by two files (only possible when subsets are
    united) is dropped and counted, never put on both sides.
    """
    if config.subset not in SUBSETS:
        raise ValueError(f"unknown subset {config.subset!r}; use one of {', '.join(SUBSETS)}")
    folder = split_folder(config.split_dir, config.split)
    prefix = audio_prefix(config.audio_root)
    tracks: dict[str, dict[str, object]] = {}
    conflicting: set[str] = set()
    tag_columns: set[str] = set()
    for family in SUBSETS[config.subset]:
        for split in SPLITS:
            uri = storage.join(folder, f"autotagging_{family}-{split}.tsv")
            for record in read_tsv(uri):
                track_id = str(record["TRACK_ID"])
                row = tracks.get(track_id)
                if row is None:
                    row = tracks[track_id] = _row(record, split, prefix, config.audio_suffix)
                if row["split"] != split:
                    conflicting.add(track_id)
                for tag in record["tags"]:  # type: ignore[union-attr]
                    column, name = split_tag(str(tag))
                    tag_columns.add(column)
                    labels = row.setdefault(column, [])
                    if name not in labels:
                        labels.append(name)
    extra = sorted(tag_columns - {"genres", "moods"})
    rows = []
    for track_id, row in tracks.items():
        if track_id in conflicting:
            continue
        for column in extra:
            row.setdefault(column, [])
        rows.append(row)
    columns = ("track_id", "uri", "split", "genres", "moods", "artist_id", "duration_s", "album_id")
    manifest = make_manifest(rows, columns + tuple(extra))
    return DatasetBuild.create(manifest, {"in different splits across subsets": sorted(conflicting)})


def _row(record: dict[str, object], split: str, prefix: str, suffix: str) -> dict[str, object]:
    """The manifest row of a TSV record, labels still to be added."""
    path = str(record["PATH"])
    if suffix != ".mp3" and path.endswith(".mp3"):
        path = path[: -len(".mp3")] + suffix
    return {
        "track_id": record["TRACK_ID"],
        "uri": prefix + path,
        "split": split,
        "genres": [],
        "moods": [],
        "artist_id": record["ARTIST_ID"] or None,
        "duration_s": float(record["DURATION"]) if record["DURATION"] else None,
        "album_id": record["ALBUM_ID"] or None,
    }


__all__ = [
    "JamendoConfig",
    "SUBSETS",
    "TAG_COLUMNS",
    "build_jamendo",
    "read_tsv",
    "split_folder",
    "split_tag",
]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("split_dir", help="folder with split-0..split-4, or one split-N folder")
    parser.add_argument("--audio", required=True, help="audio root: ROOT/<PATH>, e.g. ROOT/48/948.mp3")
    parser.add_argument("--subset", choices=tuple(SUBSETS), default="genre")
    parser.add_argument("--split", type=int, default=0, help="official split number (default: 0)")
    parser.add_argument("--audio-suffix", default=".mp3",
                        help="file suffix replacing .mp3 in PATH (.low.mp3 for the low-quality release)")


SPEC = DatasetSpec(
    name="jamendo", help="MTG-Jamendo autotagging TSVs", add_arguments=_arguments,
    build=lambda args: build_jamendo(JamendoConfig(split_dir=args.split_dir, audio_root=args.audio,
                                                   subset=args.subset, split=args.split,
                                                   audio_suffix=args.audio_suffix)),
)
