"""`jobs/train.py --folds K`: K grouped runs, one summary with mean and spread."""

from __future__ import annotations

import json

import pytest

from mgc.training.crossval import run_cross_validation, summarise
from mgc.config import DataConfig, TrainConfig


def test_summary_gives_mean_and_spread_per_metric():
    folds = [{"validation": {"genre": {"accuracy": 0.5, "roc_auc": None}}},
             {"validation": {"genre": {"accuracy": 1.0, "roc_auc": 0.8}}}]
    summary = summarise(folds)
    assert summary["validation"]["genre"]["accuracy"] == {"mean": 0.75, "std": 0.25, "values": [0.5, 1.0]}
    assert summary["validation"]["genre"]["roc_auc"]["values"] == [0.8], "missing values are skipped"


@pytest.mark.slow
def test_two_fold_cross_validation_runs_each_fold_and_writes_cv_json(ray_local, small_demo, tmp_path):
    # The feature baseline keeps this test quick; CV drives any --arch through run_training alike.
    cfg = TrainConfig(manifest=str(small_demo), output=str(tmp_path / "cv"), arch="features",
                      data=DataConfig(decode_concurrency=2))
    summary = run_cross_validation(cfg, folds=2)
    assert len(summary["runs"]) == 2
    for fold in (0, 1):
        metrics = json.loads((tmp_path / "cv" / f"fold-{fold}" / "metrics.json").read_text())
        assert metrics["config"]["fold"] == fold
    accuracy = summary["validation"]["genre"]["accuracy"]
    assert len(accuracy["values"]) == 2 and 0 <= accuracy["mean"] <= 1 and accuracy["std"] >= 0
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["folds"] == 2
