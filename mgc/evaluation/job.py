"""Evaluate a saved checkpoint on a manifest split: ``metrics.json``, plots and ``report.md``.

Why a separate driver: a checkpoint outlives its training run; it is evaluated again on a
new test set, on another data set's labels, or after a front-end fix. It must then be
judged exactly as it will tag: with the checkpoint's own audio config, label order and
decision thresholds (tuned on the training run's validation split and never re-tuned on
the data being evaluated, which would overstate F1).
"""

from __future__ import annotations

import posixpath
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from mgc.io import storage
from mgc.evaluation.artifacts import write_run_dir
from mgc.models.checkpoint import load_checkpoint
from mgc.config import DataConfig, EvaluateConfig, TaskSpec, label_column
from mgc.stages.decode import failed_tracks, good_tracks, track_dataset
from mgc.io.manifest import read_manifest
from mgc.evaluation.scoring import Evaluation, collect_predictions, metrics_for
from mgc.labels import encode_targets, mask_column, target_column
from mgc.log import get_logger

log = get_logger()

ALL = "all"
"""The metrics key (and ``--split`` value) when every manifest row is evaluated."""


class EvaluationError(RuntimeError):
    """Nothing to evaluate (e.g. no manifest row in the asked split)."""


def default_output(checkpoint: str, split: str | None) -> str:
    """``<checkpoint>/../eval-<split>``: beside the run's own metrics."""
    name = f"eval-{split or ALL}"
    checkpoint = str(checkpoint).rstrip("/")
    if storage.is_local(checkpoint) and "://" not in checkpoint:
        return str(Path(checkpoint).resolve().parent / name)
    return posixpath.join(posixpath.dirname(checkpoint), name)


def unknown_labels(manifest: pd.DataFrame, tasks: dict[str, TaskSpec]) -> dict[str, dict[str, int]]:
    """Per task, labels in the manifest that the checkpoint has no output for, with counts."""
    out = {}
    for task, spec in tasks.items():
        known = set(spec.labels)
        counts = Counter(label for labels in manifest[label_column(task)] for label in labels if label not in known)
        out[task] = dict(counts.most_common())
    return out


def evaluate_checkpoint(
    checkpoint: str,
    manifest: str,
    output: str,
    split: str | None = "test",
    data: DataConfig = DataConfig(),
    top_k: int = 4,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the ``split`` rows of ``manifest``, written to ``output``.

    Every row is evaluated when ``split`` is None (or ``"all"``) or the manifest has no
    ``split`` column; the metrics then sit under ``"all"``. Targets use the checkpoint's
    label vocabularies (labels it does not know are ignored and counted under
    ``unknown_labels``; a track left with no known label does not count for that task),
    tracks are decoded with the checkpoint's audio config on Ray Data (Ray initialised by
    the caller), and multilabel decisions use the checkpoint's saved thresholds,
    unchanged. Writes ``metrics.json`` (``{split: {task: ...}}``, ``skipped``, ``counts``,
    ``checkpoint``, ``model_id``, ...), the plots of :func:`mgc.evaluation.scoring.write_plots` and
    ``report.md`` into ``output`` (local or any fsspec URL). Returns the metrics dict.
    """
    started = time.time()
    split = None if split in (None, "", ALL) else split
    loaded = load_checkpoint(checkpoint)
    tasks = dict(loaded.meta.tasks)
    table = read_manifest(manifest)
    has_split = "split" in table.columns and table["split"].notna().any()
    if split is not None and has_split:
        rows = table[table["split"] == split].reset_index(drop=True)
        if rows.empty:
            present = sorted(str(s) for s in table["split"].dropna().unique())
            raise EvaluationError(f"{manifest} has no rows of split {split!r} (splits present: {present}); "
                                  f"use --split all to evaluate every row")
        key = split
    else:
        if split is not None:
            log.info(f"{manifest} has no split column: evaluating all {len(table)} rows")
        rows, key = table, ALL
    encoded = encode_targets(rows, tasks)
    columns = ["track_id", "uri"] + [c for task in tasks for c in (target_column(task), mask_column(task))]
    decoded = track_dataset(encoded[columns], loaded.meta.audio, data).materialize()
    skipped = failed_tracks(decoded)
    good = good_tracks(decoded).materialize()
    n_good = good.count()
    predictions = collect_predictions(
        loaded.model, good.iter_batches(batch_size=batch_size, batch_format="numpy"), tasks) if n_good else {}
    scores = metrics_for(predictions, tasks, top_k)
    labeled = {task: int(encoded[mask_column(task)].sum()) for task in tasks}
    metrics: dict[str, Any] = {
        key: scores,
        "skipped": skipped[["track_id", "error"]].to_dict("records"),
        "counts": {key: n_good, "skipped": len(skipped), "rows": len(rows),
                   **{f"labeled_{task}": n for task, n in labeled.items()}},
        "checkpoint": str(checkpoint),
        "model_id": loaded.model_id,
        "arch": loaded.meta.arch,
        "manifest": str(manifest),
        "evaluated_split": key,
        "thresholds": {task: None if spec.thresholds is None else list(spec.thresholds)
                       for task, spec in tasks.items()},
        "unknown_labels": unknown_labels(rows, tasks),
        "top_k": top_k,
        "seconds": round(time.time() - started, 1),
    }
    log.info(f"evaluated {n_good} tracks of {key} ({len(skipped)} skipped) with {loaded.model_id}")
    evaluation = Evaluation(tasks=tasks, metrics={key: scores}, predictions={key: predictions})
    write_run_dir(output, metrics, evaluation, [], f"Evaluation of {loaded.model_id} on {key}")
    return metrics


def run_evaluation(cfg: EvaluateConfig) -> tuple[str, dict[str, Any]]:
    """:func:`evaluate_checkpoint` from a config; returns ``(output, metrics)``."""
    if not cfg.checkpoint or not cfg.manifest:
        raise ValueError("--checkpoint and --manifest are required")
    output = cfg.output or default_output(cfg.checkpoint, cfg.split)
    metrics = evaluate_checkpoint(cfg.checkpoint, cfg.manifest, output, cfg.split, cfg.data, cfg.top_k, cfg.batch_size)
    return output, metrics
