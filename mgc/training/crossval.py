"""Grouped K-fold cross-validation: K training runs, one report of mean and spread.

Why: on small data sets (GTZAN has 1,000 tracks) one validation split is noisy; the seed
projects reported a single split. Folds come from the manifest's ``fold`` column
(`jobs/build_manifest.py --folds K`) or are made here, grouped by artist and stratified.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from mgc.io import storage
from mgc.config import TrainConfig
from mgc.io.manifest import read_manifest, write_manifest
from mgc.datasets.splits import FOLD_COLUMN, assign_folds
from mgc.training.driver import TrainResult, absolute_output, run_training
from mgc.log import get_logger

log = get_logger()

CV_FILE = "cv.json"
FOLDS_MANIFEST = "folds.parquet"
SUMMARISED = ("accuracy", "top_k_accuracy", "f1_macro", "roc_auc", "pr_auc")


def summarise(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{split: {task: {metric: {mean, std, values}}}}`` over the folds' metrics.json."""
    out: dict = {}
    for split in ("validation", "test"):
        tasks = sorted({task for m in per_fold for task in m.get(split, {})})
        for task in tasks:
            for metric in SUMMARISED:
                values = [m[split][task][metric] for m in per_fold
                          if m.get(split, {}).get(task, {}).get(metric) is not None]
                if values:
                    out.setdefault(split, {}).setdefault(task, {})[metric] = {
                        "mean": float(np.mean(values)), "std": float(np.std(values)), "values": values,
                    }
    return out


def run_cross_validation(cfg: TrainConfig, folds: int) -> dict[str, Any]:
    """Train once per fold into ``<output>/fold-<k>/`` and write ``<output>/cv.json``."""
    if folds < 2:
        raise ValueError("cross-validation needs --folds 2 or more")
    cfg = absolute_output(cfg)
    manifest = read_manifest(cfg.manifest)
    if FOLD_COLUMN not in manifest.columns:
        manifest = assign_folds(manifest, folds, seed=cfg.seed)
        fold_manifest = storage.join(cfg.output, FOLDS_MANIFEST)
        write_manifest(manifest, fold_manifest)
        cfg = dataclasses.replace(cfg, manifest=fold_manifest)
    present = sorted({int(f) for f in manifest[FOLD_COLUMN].astype(int) if int(f) >= 0})
    if present != list(range(folds)):
        raise ValueError(f"the manifest's folds are {present}, not 0..{folds - 1}")
    results: list[TrainResult] = []
    for fold in range(folds):
        log.info(f"cross-validation fold {fold + 1}/{folds}")
        results.append(run_training(dataclasses.replace(
            cfg, fold=fold, output=storage.join(cfg.output, f"fold-{fold}"))))
    summary = {"folds": folds, **summarise([r.metrics for r in results]),
               "runs": [r.output for r in results]}
    storage.write_text(storage.join(cfg.output, CV_FILE), json.dumps(summary, indent=2))
    return summary
