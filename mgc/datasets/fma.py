"""FMA (Free Music Archive): ``fma_metadata/tracks.csv`` + ``genres.csv`` and mp3 folders.

Why this shape: ``tracks.csv`` has two header rows (``('track', 'genre_top')``,
``('set', 'split')``, ...), so it is read as pandas reads it in FMA's own code
(``index_col=0, header=[0, 1]``). FMA's official split is artist-grouped
(``training``/``validation``/``test``) and is kept as is. Subsets are nested: a track's
``('set', 'subset')`` names the smallest subset holding it, so ``medium`` includes
``small``; ``large`` and ``full`` hold the same tracks (full-length audio in ``full``).
Audio lives at ``ROOT/{tid // 1000:03d}/{tid:06d}.mp3``.
"""

from __future__ import annotations

import argparse
import io
import math
import re
from dataclasses import dataclass

import pandas as pd

from mgc.io import storage
from mgc.datasets.common import DatasetSpec, DatasetBuild, audio_prefix, make_manifest

SUBSETS: tuple[str, ...] = ("small", "medium", "large", "full")
"""Subsets, each containing the ones before it (``full`` = ``large``'s tracks, untrimmed)."""

LABELS: tuple[str, ...] = ("top", "all")
"""``top``: the one top-level genre (multiclass); ``all``: every genre and its parents."""

SPLIT_NAMES: dict[str, str] = {"training": "train", "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class FmaConfig:
    """Which FMA metadata, audio, subset and labels to use."""

    metadata_dir: str
    audio_root: str
    subset: str = "small"
    labels: str = "top"


def read_tracks(metadata_dir: str) -> pd.DataFrame:
    """``tracks.csv`` with its two header rows, indexed by the integer track id."""
    data = storage.read_bytes(storage.join(metadata_dir, "tracks.csv"))
    return pd.read_csv(io.BytesIO(data), index_col=0, header=[0, 1], low_memory=False)


def read_genres(metadata_dir: str) -> dict[int, str]:
    """Genre id -> title, from ``genres.csv``."""
    data = storage.read_bytes(storage.join(metadata_dir, "genres.csv"))
    genres = pd.read_csv(io.BytesIO(data))
    return {int(gid): str(title) for gid, title in zip(genres["genre_id"], genres["title"])}


def audio_path(track_id: int) -> str:
    """Path of a track's mp3 under the audio root: ``000/000002.mp3``."""
    return f"{track_id // 1000:03d}/{track_id:06d}.mp3"


def build_fma(config: FmaConfig) -> DatasetBuild:
    """The FMA manifest of ``config.subset`` with ``top`` or ``all`` genre labels.

    Tracks without a label of the requested kind (many ``large`` tracks have no
    ``genre_top``) are dropped and counted: they cannot be trained or evaluated on.
    """
    if config.subset not in SUBSETS:
        raise ValueError(f"unknown FMA subset {config.subset!r}; use one of {SUBSETS}")
    if config.labels not in LABELS:
        raise ValueError(f"unknown FMA labels {config.labels!r}; use one of {LABELS}")
    tracks = read_tracks(config.metadata_dir)
    titles = read_genres(config.metadata_dir) if config.labels == "all" else {}
    allowed = set(SUBSETS[: SUBSETS.index(config.subset) + 1])
    prefix = audio_prefix(config.audio_root)

    rows = []
    unlabeled: list[str] = []
    for tid, subset, split, genre_top, genres_all, artist, duration in zip(
        tracks.index.tolist(),
        tracks[("set", "subset")].tolist(),
        tracks[("set", "split")].tolist(),
        tracks[("track", "genre_top")].tolist(),
        tracks[("track", "genres_all")].tolist(),
        tracks[("artist", "id")].tolist(),
        _column(tracks, ("track", "duration")),
    ):
        if config.subset != "full" and subset not in allowed:
            continue
        track_id = f"{int(tid):06d}"
        if config.labels == "top":
            labels = [str(genre_top)] if isinstance(genre_top, str) and genre_top else []
        else:
            labels = _genre_titles(genres_all, titles, track_id)
        if not labels:
            unlabeled.append(track_id)
            continue
        rows.append(
            {
                "track_id": track_id,
                "uri": prefix + audio_path(int(tid)),
                "split": SPLIT_NAMES.get(str(split).strip().lower()),
                "genres": labels,
                "artist_id": None if _missing(artist) else str(int(artist)),
                "duration_s": None if _missing(duration) else float(duration),
            }
        )
    reason = "no genre_top" if config.labels == "top" else "no genres_all"
    manifest = make_manifest(rows, ("track_id", "uri", "split", "genres", "artist_id", "duration_s"))
    return DatasetBuild.create(manifest, {reason: unlabeled})


def _column(tracks: pd.DataFrame, name: tuple[str, str]) -> list[object]:
    return tracks[name].tolist() if name in tracks.columns else [None] * len(tracks)


def _genre_titles(cell: object, titles: dict[int, str], track_id: str) -> list[str]:
    """``"[21, 38]"`` -> ``["Hip-Hop", "Experimental"]``; unknown ids are an error."""
    if not isinstance(cell, str):
        return []
    ids = [int(number) for number in re.findall(r"\d+", cell)]
    unknown = [gid for gid in ids if gid not in titles]
    if unknown:
        raise ValueError(f"track {track_id}: genre ids {unknown} are not in genres.csv")
    return [titles[gid] for gid in ids]


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


__all__ = ["FmaConfig", "LABELS", "SUBSETS", "audio_path", "build_fma", "read_genres", "read_tracks"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metadata_dir", help="fma_metadata folder with tracks.csv and genres.csv")
    parser.add_argument("--audio", required=True, help="audio root: ROOT/000/000002.mp3")
    parser.add_argument("--subset", choices=SUBSETS, default="small")
    parser.add_argument("--labels", choices=LABELS, default="top",
                        help="top: genre_top (multiclass); all: genres_all (multilabel)")


SPEC = DatasetSpec(
    name="fma", help="FMA tracks.csv + genres.csv", add_arguments=_arguments,
    build=lambda args: build_fma(FmaConfig(metadata_dir=args.metadata_dir, audio_root=args.audio,
                                           subset=args.subset, labels=args.labels)),
)
