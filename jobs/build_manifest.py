"""Build an mgc manifest from a public dataset's own layout and metadata.

    python jobs/build_manifest.py gtzan data/gtzan --split-dir data/gtzan-splits --output manifests/gtzan.parquet
    python jobs/build_manifest.py gtzan data/gtzan --split random --folds 5 --output gtzan-cv.parquet
    python jobs/build_manifest.py fma fma_metadata --audio s3://bucket/fma_small --subset small --output fma.parquet
    python jobs/build_manifest.py jamendo mtg-jamendo/data/splits --audio s3://bucket/jamendo \\
        --subset genre+moodtheme --split 0 --output jamendo.parquet
    python jobs/build_manifest.py folder my_music --task mood --output mine.csv --check-files

Prints a short summary: tracks, per-split counts, labels, dropped tracks and why.
See manifests/README.md for the schema and the command for each dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or job working dir) first

from mgc.datasets import (  # noqa: E402
    DatasetBuild,
    FinishConfig,
    FmaConfig,
    FolderConfig,
    GtzanConfig,
    JamendoConfig,
    build_fma,
    build_folder,
    build_gtzan,
    build_jamendo,
    finish,
    save,
    summary,
)
from mgc.datasets import fma, folder, jamendo  # noqa: E402
from mgc.config import TASKS  # noqa: E402
from mgc.datasets.splits import DEFAULT_FRACTIONS  # noqa: E402


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--output", required=True,
                        help="manifest to write: .parquet/.csv/.tsv/.jsonl, local or s3://")
    common.add_argument("--check-files", action="store_true",
                        help="drop (and count) tracks whose audio file does not exist")
    common.add_argument("--check-workers", type=int, default=FinishConfig.check_workers,
                        help="parallel existence checks (default: %(default)s)")
    common.add_argument("--folds", type=int, default=0,
                        help="add a 'fold' column for grouped K-fold CV (test rows stay out)")
    common.add_argument("--seed", type=int, default=0, help="seed of random splits and folds")
    common.add_argument("--fractions", type=float, nargs=3, default=DEFAULT_FRACTIONS,
                        metavar=("TRAIN", "VAL", "TEST"), help="random split fractions")

    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="dataset", required=True)

    gtzan_args = sub.add_parser("gtzan", parents=[common], help="ROOT/<genre>/<genre>.000NN.{wav,au}")
    gtzan_args.add_argument("root", help="GTZAN folder (local or s3://)")
    gtzan_args.add_argument("--split", choices=("random", "none"), default="random",
                            help="random: stratified split (ignored with --split-dir)")
    gtzan_args.add_argument("--split-dir", default=None,
                            help="folder with train_filtered.txt, valid_filtered.txt, test_filtered.txt")

    fma_args = sub.add_parser("fma", parents=[common], help="FMA tracks.csv + genres.csv")
    fma_args.add_argument("metadata_dir", help="fma_metadata folder with tracks.csv and genres.csv")
    fma_args.add_argument("--audio", required=True, help="audio root: ROOT/000/000002.mp3")
    fma_args.add_argument("--subset", choices=fma.SUBSETS, default="small")
    fma_args.add_argument("--labels", choices=fma.LABELS, default="top",
                          help="top: genre_top (multiclass); all: genres_all (multilabel)")

    jamendo_args = sub.add_parser("jamendo", parents=[common], help="MTG-Jamendo autotagging TSVs")
    jamendo_args.add_argument("split_dir", help="folder with split-0..split-4, or one split-N folder")
    jamendo_args.add_argument("--audio", required=True, help="audio root: ROOT/<PATH>, e.g. ROOT/48/948.mp3")
    jamendo_args.add_argument("--subset", choices=tuple(jamendo.SUBSETS), default="genre")
    jamendo_args.add_argument("--split", type=int, default=0, help="official split number (default: 0)")
    jamendo_args.add_argument("--audio-suffix", default=".mp3",
                              help="file suffix replacing .mp3 in PATH (.low.mp3 for the low-quality release)")

    folder_args = sub.add_parser("folder", parents=[common], help="ROOT/<label>/... or a flat catalog")
    folder_args.add_argument("root", help="audio folder (local or s3://)")
    folder_args.add_argument("--task", choices=(*TASKS, folder.NO_TASK), default="genre",
                             help="what the sub-folder names are (none: unlabeled catalog)")
    folder_args.add_argument("--split", choices=("random", "none"), default="random",
                             help="random: stratified split of labeled files (a catalog gets none)")
    return top


def build(args: argparse.Namespace) -> DatasetBuild:
    """Run the builder the sub-command names, with its flags as its config."""
    if args.dataset == "gtzan":
        return build_gtzan(GtzanConfig(root=args.root, split_dir=args.split_dir))
    if args.dataset == "fma":
        return build_fma(FmaConfig(metadata_dir=args.metadata_dir, audio_root=args.audio,
                                   subset=args.subset, labels=args.labels))
    if args.dataset == "jamendo":
        return build_jamendo(JamendoConfig(split_dir=args.split_dir, audio_root=args.audio,
                                           subset=args.subset, split=args.split,
                                           audio_suffix=args.audio_suffix))
    return build_folder(FolderConfig(root=args.root, task=args.task))


def finish_config(args: argparse.Namespace) -> FinishConfig:
    """Flags shared by every builder; a random split only where the dataset has none."""
    random_split = args.dataset in ("gtzan", "folder") and args.split == "random"
    if args.dataset == "gtzan" and args.split_dir:
        random_split = False
    return FinishConfig(check_files=args.check_files, check_workers=args.check_workers,
                        random_split=random_split, fractions=tuple(args.fractions),
                        folds=args.folds, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = finish(build(args), finish_config(args))
    if result.manifest.empty:
        print(summary(result, args.dataset), file=sys.stderr)
        print("no tracks left: nothing written", file=sys.stderr)
        return 1
    save(result.manifest, args.output)
    print(summary(result, args.dataset))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
