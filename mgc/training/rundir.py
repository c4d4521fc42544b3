"""The run directory every training recipe writes: checkpoint, metrics.json, plots, report.md.

Why one function: a CNN trained on Ray, a frozen-embedding probe and the feature baseline
must leave the same artifacts in the same shape (DESIGN section 2's metrics file), so that
`jobs/compare.py`, `jobs/evaluate.py` and people reading ``report.md`` treat them alike.
Everything is staged in a local temporary directory and uploaded at the end, so a run
killed half-way never leaves a ``metrics.json`` beside a stale checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from mgc.io import storage
from mgc.models.checkpoint import CheckpointMeta, save_checkpoint
from mgc.config import TrainConfig
from mgc.evaluation.report import write_report
from mgc.evaluation.scoring import Evaluation, write_plots

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.json"


class TrainingError(RuntimeError):
    """The run cannot train at all (e.g. no decodable training tracks)."""


@dataclass(frozen=True)
class TrainResult:
    """Where the artifacts went and the final metrics.

    ``checkpoint`` is the checkpoint directory of a CNN or probe run, or the
    ``baseline.json`` of an ``--arch features`` run (the baseline is for comparison: it
    writes no weights).
    """

    output: str
    checkpoint: str
    metrics: dict[str, Any]


def final_meta(meta: CheckpointMeta, evaluated: Evaluation) -> CheckpointMeta:
    """The shipped checkpoint's metadata: tuned thresholds and the validation/test metrics."""
    return CheckpointMeta(
        arch=meta.arch,
        audio=meta.audio,
        tasks=evaluated.tasks,
        metrics={split: evaluated.metrics.get(split, {}) for split in ("validation", "test")},
        name=meta.name,
    )


def config_json(cfg: TrainConfig) -> dict[str, Any]:
    """The run's config as plain JSON values (what ``metrics.json`` and compare store)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def run_metrics(cfg: TrainConfig, evaluation: Evaluation, skipped: pd.DataFrame, counts: dict[str, int],
                history: list[dict], best_epoch: Any, started: float, **extra: Any) -> dict[str, Any]:
    """``metrics.json`` of a trained model: per-split metrics, skipped tracks, counts, config."""
    return {
        **evaluation.metrics,
        "skipped": skipped[["track_id", "error"]].to_dict("records"),
        "history": history,
        "counts": {**counts, "skipped": len(skipped)},
        "config": config_json(cfg),
        "best_epoch": best_epoch,
        **extra,
        "seconds": round(time.time() - started, 1),
    }


def write_run_dir(output: str, metrics: dict[str, Any], evaluation: Evaluation, history: list[dict], title: str,
                  model: torch.nn.Module | None = None, meta: CheckpointMeta | None = None,
                  extra: Callable[[Path], Any] | None = None) -> None:
    """Stage and upload a run: ``checkpoint/`` (when ``model`` is given, with ``meta``),
    ``metrics.json``, the plots of :func:`mgc.evaluation.scoring.write_plots`, ``report.md``, and
    whatever ``extra(stage)`` writes beside them."""
    with tempfile.TemporaryDirectory(prefix="mgc-run-") as tmp:
        stage = Path(tmp)
        if model is not None:
            if meta is None:
                raise ValueError("a checkpoint needs its CheckpointMeta")
            save_checkpoint(stage / CHECKPOINT_DIR, model, meta)
        (stage / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
        plots = write_plots(evaluation, history, stage)
        write_report(stage, metrics, plots, title)
        if extra is not None:
            extra(stage)
        storage.upload_dir(stage, output)
