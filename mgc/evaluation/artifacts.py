"""The run directory: checkpoint, ``metrics.json``, plots and ``report.md``, written whole.

Why one function: training runs (a CNN, a probe, the feature baseline) and evaluation
runs leave the same artifacts in the same shape. Everything is staged in a local
temporary directory and uploaded at the end, so a run killed half-way never leaves a
``metrics.json`` beside a stale checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from mgc.evaluation.plots import write_plots
from mgc.evaluation.report import write_report
from mgc.evaluation.scoring import Evaluation
from mgc.io import storage
from mgc.io.jsonio import dumps
from mgc.models.checkpoint import CheckpointMeta, save_checkpoint

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.json"


def write_run_dir(output: str, metrics: dict[str, Any], evaluation: Evaluation, history: list[dict], title: str,
                  model: torch.nn.Module | None = None, meta: CheckpointMeta | None = None,
                  extra: Callable[[Path], Any] | None = None) -> None:
    """Stage and upload a run: ``checkpoint/`` (when ``model`` is given, with ``meta``),
    ``metrics.json``, the plots of :func:`mgc.evaluation.scoring.write_plots`, ``report.md``, and
    whatever ``extra(stage)`` writes beside them (local path or any fsspec URL)."""
    with tempfile.TemporaryDirectory(prefix="mgc-run-") as tmp:
        stage = Path(tmp)
        if model is not None:
            if meta is None:
                raise ValueError("a checkpoint needs its CheckpointMeta")
            save_checkpoint(stage / CHECKPOINT_DIR, model, meta)
        (stage / METRICS_FILE).write_text(dumps(metrics, indent=2))
        plots = write_plots(evaluation, history, stage)
        write_report(stage, metrics, plots, title)
        if extra is not None:
            extra(stage)
        storage.upload_dir(stage, output)
