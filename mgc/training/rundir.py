"""What every training recipe returns and records: its result, its metrics, its config.

Why one place: a CNN trained on Ray, a frozen-embedding probe and the feature baseline
must report in the same shape (docs/architecture.md, "Data contracts": the metrics file),
so that `jobs/compare.py` and people reading ``report.md`` treat them alike; the files
themselves are written by :func:`mgc.evaluation.artifacts.write_run_dir`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mgc.models.checkpoint import CheckpointMeta
from mgc.config import TrainConfig
from mgc.evaluation.scoring import Evaluation
from mgc.io.jsonio import plain



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
    return plain(dataclasses.asdict(cfg))


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
