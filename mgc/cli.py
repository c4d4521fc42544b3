"""Command lines built from the config dataclasses.

Why generated: every config field is overridable from the command line under its own name
(``--batch-size`` for ``TrainConfig.batch_size``), so a new field needs no parser edit and
the flags never drift from the dataclasses.
"""

from __future__ import annotations

import argparse
import collections.abc
import sys
import dataclasses
import types
import typing
from typing import Any, Sequence

from mgc.io import storage
from mgc.log import configure_logging
from mgc.config import (AudioConfig, AugmentConfig, CompareConfig, DataConfig, IndexConfig, ReportConfig, TagConfig,
                        TrainConfig)
from mgc.log import get_logger

log = get_logger()

NESTED = {"audio": AudioConfig, "data": DataConfig, "augment": AugmentConfig}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(hint: Any) -> Any:
    """``int | None`` -> ``int``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _parse_mapping(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """Add one flag per field of ``cls`` (and of its nested config dataclasses)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        if field.name in NESTED:
            add_dataclass_arguments(parser, NESTED[field.name])
            continue
        hint = hints[field.name]
        base = _base_type(hint)
        origin = typing.get_origin(base)
        help_default = f"default: {field.default!r}" if field.default is not dataclasses.MISSING else ""
        if base is bool:
            group.add_argument(_flag(field.name), action=argparse.BooleanOptionalAction, default=None, help=help_default)
        elif origin in (tuple, list) or base in (tuple, list):
            element = (typing.get_args(base) or (str,))[0]
            group.add_argument(_flag(field.name), nargs="+", action="extend", default=None,
                               type=element if element in (int, float, str) else str,
                               help=f"one or more, flag repeatable; {help_default}")
        elif origin in (dict, collections.abc.Mapping):
            group.add_argument(_flag(field.name), type=_parse_mapping, action="append", default=None,
                               metavar="KEY=VALUE", help="repeatable")
        else:
            group.add_argument(_flag(field.name), type=base, default=None, help=help_default)


def dataclass_from_args(cls: type, args: argparse.Namespace, base: Any = None) -> Any:
    """Build ``cls`` from parsed flags; flags not given keep ``base``'s (or the default) value."""
    base = base if base is not None else cls()
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in NESTED:
            changes[field.name] = dataclass_from_args(NESTED[field.name], args, getattr(base, field.name))
            continue
        value = getattr(args, field.name, None)
        if value is None:
            continue
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            value = dict(value)
        elif isinstance(value, list):
            value = tuple(value)
        changes[field.name] = value
    return dataclasses.replace(base, **changes)


def config_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with one flag per field of the config dataclass ``cls``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_dataclass_arguments(parser, cls)
    return parser


# The demo has ~60 training tracks of 10 s: more, smaller steps than a real data set needs.
DEMO_PRESET = TrainConfig(epochs=20, batch_size=16)


def demo_aware_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A TrainConfig parser whose jobs fall back to the built-in demo set without --manifest."""
    parser = config_parser(TrainConfig, prog, description)
    parser.add_argument("--demo-dir", default=None,
                        help="where the demo set is generated when no --manifest is given "
                             "(default: <output>/data)")
    return parser


def train_config_from_args(args: argparse.Namespace, output: str = TrainConfig.output) -> TrainConfig:
    """The run's TrainConfig (``output`` unless --output); without --manifest, :data:`DEMO_PRESET`
    on a freshly made demo set.

    Why here: every job that trains (train, compare) must behave the same with no flags.
    """
    from mgc.datasets.demo import make_demo_set

    base = TrainConfig() if args.manifest else DEMO_PRESET
    cfg: TrainConfig = dataclass_from_args(TrainConfig, args, base=dataclasses.replace(base, output=output))
    if cfg.manifest:
        return cfg
    demo_dir = args.demo_dir or storage.join(cfg.output, "data")
    log.info(f"no --manifest: training on the demo set in {demo_dir}")
    return dataclasses.replace(cfg, manifest=str(make_demo_set(demo_dir)))


def train_parser() -> argparse.ArgumentParser:
    parser = demo_aware_parser(
        "jobs/train.py",
        "Train genre and mood taggers on Ray. With no --manifest, trains on the "
        "built-in demo set (generated on the fly) into runs/demo/, with --epochs 20 "
        "--batch-size 16 unless given.",
    )
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="grouped K-fold cross-validation: K runs into <output>/fold-<k>/ and "
                             "<output>/cv.json with each metric's mean and spread (uses the manifest's "
                             "fold column, else makes artist-grouped folds)")
    parser.add_argument("--resume", default=None, metavar="OUTPUT_DIR",
                        help="continue the interrupted run whose --output was OUTPUT_DIR, from its "
                             "latest epoch checkpoint, with its saved config (other flags are ignored)")
    return parser


def compare_parser() -> argparse.ArgumentParser:
    parser = demo_aware_parser(
        "jobs/compare.py",
        "Train several archs (default: all) and the feature baseline on one manifest with the same "
        "splits and budget; write comparison.md / comparison.json (params, train samples/s, metrics). "
        "With no --manifest, compares on the demo set into runs/compare/.",
    )
    add_dataclass_arguments(parser, CompareConfig)
    return parser


def tag_parser() -> argparse.ArgumentParser:
    return config_parser(
        TagConfig,
        "jobs/tag.py",
        "Tag a catalog: genre and mood predictions per track, written as Parquet partitioned "
        "by model_id. Incremental: tracks already tagged by the same model set are skipped.",
    )


def init_ray() -> None:
    """Join the cluster when there is one (``ray job submit``, RAY_ADDRESS), else start local
    Ray; every job starts here, so this also turns on the ``mgc`` log."""
    import ray

    configure_logging()
    if not ray.is_initialized():
        ray.init()


def predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgc predict",
        description="Print the top genres and moods of your own audio files (no Ray needed).",
    )
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ogg, ...; local or s3://)")
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="checkpoint directory; repeat for a genre model and a mood model")
    parser.add_argument("--top-k", type=int, default=3, help="tags shown per task (default: 3)")
    parser.add_argument("--plot", default=None, help="also draw mel-spectrograms and probability bars to this PNG")
    return parser


def index_parser() -> argparse.ArgumentParser:
    return config_parser(
        IndexConfig,
        "jobs/index.py",
        "Build (or extend with the newly tagged tracks) a vector index over the embedding column of "
        "one model_id partition of the predictions: exact below --exact-below tracks, IVF-PQ above.",
    )


def report_parser() -> argparse.ArgumentParser:
    return config_parser(
        ReportConfig,
        "jobs/catalog_report.py",
        "Write report.md and PNGs about one model_id partition of the predictions: genres, moods x "
        "genres, confidence, failures by reason, tracks tagged over time.",
    )


def similar_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgc similar",
        description="The catalog tracks nearest to a catalog track (its track_id) or to an audio file.",
    )
    parser.add_argument("query", help="a track_id of the indexed catalog, or an audio file (local or s3://)")
    parser.add_argument("--index", required=True, help="the index folder jobs/index.py wrote (local or s3://)")
    parser.add_argument("--top-k", type=int, default=10, help="neighbours shown (default: 10)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    parser.add_argument("--plot", default=None, help="also draw the query's and neighbours' tag profiles to this PNG")
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="checkpoints to embed a file with (default: those the index records)")
    parser.add_argument("--nprobe", type=int, default=IndexConfig.nprobe, help="IVF lists probed per query")
    return parser


def _similar(argv: list[str]) -> int:
    from mgc.catalog.index import IndexError_, load_index
    from mgc.catalog.similar import format_result, plot_result, similar, to_json

    args = similar_parser().parse_args(argv)
    try:
        index = load_index(args.index, IndexConfig(nprobe=args.nprobe))
        result = similar(index, args.query, args.top_k, args.checkpoint)
        print(to_json(result) if args.json else format_result(result))
        if args.plot:
            print(f"plot: {plot_result(index, result, args.plot)}", file=sys.stderr if args.json else sys.stdout)
    except (IndexError_, ValueError, OSError) as err:
        print(f"mgc similar: {err}", file=sys.stderr)
        return 2
    return 0


USAGE = ("usage: mgc predict FILE... --checkpoint DIR [--checkpoint DIR] [--top-k K] [--plot out.png]\n"
         "       mgc similar TRACK_ID|FILE --index URI [--top-k K] [--json] [--plot out.png]\n"
         "       (training, tagging, indexing: python jobs/train.py, jobs/tag.py, jobs/index.py)")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mgc`` console script: ``mgc predict FILE... --checkpoint DIR`` and
    ``mgc similar QUERY --index URI``."""
    from mgc.tagging.files import format_table, plot_predictions, predict_files

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "similar":
        return _similar(argv[1:])
    if not argv or argv[0] != "predict":
        print(USAGE)
        return 2
    args = predict_parser().parse_args(argv[1:])
    results = predict_files(args.files, args.checkpoint)
    print(format_table(results, args.top_k))
    if args.plot and any(r.error is None for r in results):
        print(f"plot: {plot_predictions(results, args.plot)}")
    return 1 if all(r.error for r in results) else 0
