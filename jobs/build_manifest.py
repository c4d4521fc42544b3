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

from mgc.datasets import DATASETS, DatasetBuild, FinishConfig, finish, save, summary  # noqa: E402
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

    for spec in DATASETS.values():
        spec.add_arguments(sub.add_parser(spec.name, parents=[common], help=spec.help))
    return top


def build(args: argparse.Namespace) -> DatasetBuild:
    """Run the builder the sub-command names, with its flags as its config."""
    return DATASETS[args.dataset].build(args)


def finish_config(args: argparse.Namespace) -> FinishConfig:
    """Flags shared by every builder; a random split only where the dataset asks for one."""
    return FinishConfig(check_files=args.check_files, check_workers=args.check_workers,
                        random_split=DATASETS[args.dataset].random_split(args),
                        fractions=tuple(args.fractions), folds=args.folds, seed=args.seed)


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
