"""Any folder of audio: ``ROOT/<label>/...`` is labeled, a flat ``ROOT`` is a catalog.

Why: the quickest way to bring one's own data is a folder per genre (or mood); a folder
with no sub-folders is a catalog to tag, not to train on. With sub-folders, a file's label
is its first-level folder's name (deeper folders, e.g. ``rock/artist/album/x.mp3``, keep
that label); files directly under ``ROOT`` beside labeled folders stay unlabeled.
``task="none"`` lists everything unlabeled, whatever the nesting (a nested catalog).
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass

from mgc.config import TASKS, label_column
from mgc.datasets.common import AUDIO_EXTENSIONS, DatasetBuild, DatasetSpec, audio_prefix, list_files, make_manifest

NO_TASK = "none"


@dataclass(frozen=True)
class FolderConfig:
    """Which folder, which task its sub-folder names label, which files are audio."""

    root: str
    task: str = "genre"
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS


def build_folder(config: FolderConfig) -> DatasetBuild:
    """One row per audio file; ``track_id`` is its path under ROOT without extension.

    Two files differing only by extension (``a.wav``, ``a.mp3``) get ids with the
    extension kept, so ids stay unique.
    """
    if config.task not in (*TASKS, NO_TASK):
        raise ValueError(f"unknown task {config.task!r}; use one of {(*TASKS, NO_TASK)}")
    prefix = audio_prefix(config.root)
    files = list_files(config.root, config.extensions)
    nested = any("/" in relative for relative in files)
    labeled = nested and config.task != NO_TASK
    stems = [relative.rsplit(".", 1)[0] for relative in files]
    clashing = {stem for stem, count in Counter(stems).items() if count > 1}
    rows = []
    for relative, stem in zip(files, stems):
        row: dict[str, object] = {
            "track_id": relative if stem in clashing else stem,
            "uri": prefix + relative,
        }
        if labeled:
            folder, _, rest = relative.partition("/")
            row[label_column(config.task)] = [folder] if rest else []
        rows.append(row)
    return DatasetBuild.create(make_manifest(rows, ("track_id", "uri")))


__all__ = ["FolderConfig", "NO_TASK", "build_folder"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="audio folder (local or s3://)")
    parser.add_argument("--task", choices=(*TASKS, NO_TASK), default="genre",
                        help="what the sub-folder names are (none: unlabeled catalog)")
    parser.add_argument("--split", choices=("random", "none"), default="random",
                        help="random: stratified split of labeled files (a catalog gets none)")


SPEC = DatasetSpec(
    name="folder", help="ROOT/<label>/... or a flat catalog", add_arguments=_arguments,
    build=lambda args: build_folder(FolderConfig(root=args.root, task=args.task)),
    random_split=lambda args: args.split == "random",
)
