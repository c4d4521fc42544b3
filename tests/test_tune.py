"""A 2-trial Ray Tune search over the real training loop ends with a best config."""

from __future__ import annotations

import json

import pytest

from mgc.config import DataConfig, SearchConfig, TrainConfig
from mgc.training.tune import run_search

pytestmark = pytest.mark.slow


def test_two_trial_search_ends_with_a_best_config(ray_local, small_demo, tmp_path):
    base = TrainConfig(manifest=str(small_demo), output=str(tmp_path / "tune"), epochs=1, batch_size=8,
                       data=DataConfig(decode_concurrency=2))
    search = SearchConfig(num_samples=2, search_lr=(1e-3, 3e-3), search_arch=("cnn",), search_batch_size=(8,),
                          search_augment=("none", "specaugment"), grace_period=1, max_concurrent_trials=1)
    summary = run_search(base, search)
    assert summary["trials"] == 2 and summary["errors"] == 0
    best = summary["best_config"]
    assert best["arch"] == "cnn" and best["lr"] in (1e-3, 3e-3) and best["augment"] in ("none", "specaugment")
    assert 0.0 <= summary["best_val_score"] <= 1.0
    assert json.loads((tmp_path / "tune" / "best_config.json").read_text())["best_config"] == best
