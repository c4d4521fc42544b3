"""jobs/compare.py: several archs and the feature baseline on one manifest, one table."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from conftest import SHARED

from mgc.config import CompareConfig, DataConfig, TrainConfig
from mgc.log import configure_logging
from mgc.models.checkpoint import read_meta
from mgc.models.zoo import build_model, count_parameters
from mgc.training.compare import ComparisonError, archs_to_compare, markdown_table, run_comparison, steady_samples_per_s

ROOT = Path(__file__).resolve().parents[1]


def test_arch_list_defaults_to_every_arch_plus_the_baseline_and_refuses_unknown_names():
    every = archs_to_compare(CompareConfig())
    assert every[0] == "cnn" and every[-1] == "features" and "inception_v3" in every and len(every) == 17
    assert archs_to_compare(CompareConfig(archs=("resnet18", "cnn"), baseline=False)) == ["resnet18", "cnn"]
    with pytest.raises(ValueError, match="resnet9"):
        archs_to_compare(CompareConfig(archs=("resnet9",)))


def test_an_unknown_report_split_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="report-split"):
        run_comparison(TrainConfig(manifest=str(tmp_path / "absent.csv"), output=str(tmp_path / "out")),
                       CompareConfig(report_split="dev"))
    assert not (tmp_path / "out").exists()


def test_only_a_run_of_exactly_this_config_is_reused(tmp_path):
    from mgc.training.compare import _previous_metrics
    from mgc.training.rundir import config_json as _config_json

    cfg = TrainConfig(manifest="m.csv", output=str(tmp_path), arch="cnn")
    assert _previous_metrics(cfg) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"config": _config_json(cfg), "test": {}}))
    assert _previous_metrics(cfg) == {"config": _config_json(cfg), "test": {}}
    older = _config_json(cfg)
    del older["precise_bn_batches"]  # written by an mgc from before that field (and its behaviour)
    (tmp_path / "metrics.json").write_text(json.dumps({"config": older}))
    assert _previous_metrics(cfg) is None
    assert _previous_metrics(dataclasses.replace(cfg, epochs=cfg.epochs + 1)) is None


def test_throughput_skips_the_warm_up_epoch_and_the_table_marks_missing_values():
    history = [{"train_samples_per_s": 5.0}, {"train_samples_per_s": 40.0}, {"train_samples_per_s": 44.0},
               {"train_samples_per_s": 42.0}]
    assert steady_samples_per_s(history) == 42.0
    assert steady_samples_per_s(history[:1]) == 5.0 and steady_samples_per_s([]) is None
    rows = [{"arch": "cnn", "params": 101_000, "train_samples_per_s": 42.0, "best_epoch": 3, "seconds": 20.0,
             "error": None, "genre_accuracy": 0.75, "genre_vote_accuracy": 0.5, "genre_roc_auc": None},
            {"arch": "vgg19_bn", "params": None, "train_samples_per_s": None, "best_epoch": None, "seconds": None,
             "error": "TrainingFailedError: out of memory"},
            {"arch": "cnn", "params": None, "train_samples_per_s": None, "best_epoch": None, "seconds": None,
             "error": "WorkerGroupError: Training failed due to worker errors:\nTraceback (most recent call last):\n"
                      "  File x\nValueError: the compact 'cnn' has no | pretrained weights\n"}]
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| arch | params | train samples/s") and "genre vote acc" in table[0]
    assert table[2].startswith("| cnn | 0.10 M | 42.0 | 3 | 20 | 0.750 | 0.500 | - |")
    assert "failed: TrainingFailedError: out of memory" in table[3]
    assert ("| failed: WorkerGroupError: Training failed due to worker errors: ... "
            "ValueError: the compact 'cnn' has no / pretrained weights |") in table[4], "one line, root cause kept"
    assert len(table) == 5


@pytest.mark.slow
def test_comparison_trains_each_arch_on_the_same_tracks_resumes_and_survives_a_failing_arch(
        ray_local, small_demo, tmp_path, capsys):
    configure_logging()  # as the jobs do: mgc's progress on stdout
    # A user's local torchvision weights: they fit resnet18; the compact cnn has none and must fail alone.
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    base = TrainConfig(manifest=str(small_demo), output=str(tmp_path / "cmp"), epochs=2, batch_size=8,
                       weights_file=str(weights), max_failures=0, data=DataConfig(decode_concurrency=2),
                       freeze_backbone_epochs=1, layer_lr_decay=0.5,
                       embedding_cache=str(tmp_path / "embeddings"))

    efficientat = SHARED / "models" / "efficientat" / "mn04_as_mAP_432.pt"
    summary = run_comparison(base, CompareConfig(archs=("resnet18", "mn04"), probe_archs=("mn04",),
                                                 weights={"mn04": str(efficientat)}))
    rows = {r["arch"]: r for r in summary["rows"]}
    assert list(rows) == ["resnet18", "mn04", "mn04 probe", "features"]
    # The pretrained rows: their own front end and weights, fine-tuned on Ray Train (the
    # backbone frozen for epoch 1, per-layer rates after) and probed, on the same test tracks.
    for name, folder in (("mn04", "mn04"), ("mn04 probe", "mn04-probe")):
        row = rows.pop(name)
        assert row["error"] is None and row["genre_accuracy"] is not None, row
        run = json.loads((tmp_path / "cmp" / folder / "metrics.json").read_text())
        assert run["config"]["audio"]["frontend"] == "efficientat" and run["test"]["genre"]["n_tracks"] == 4
        assert run["config"]["weights_file"] == str(efficientat)
        assert read_meta(tmp_path / "cmp" / folder / "checkpoint").audio.sample_rate == 32000
    tuned = json.loads((tmp_path / "cmp" / "mn04" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in tuned] == [1, 2] and all(h["train_loss"] > 0 for h in tuned)
    resnet, features = rows["resnet18"], rows["features"]
    assert resnet["params"] == count_parameters(build_model("resnet18", {"genre": 2, "mood": 2}))
    assert features["params"] == 89 and features["train_samples_per_s"] is None
    assert resnet["train_samples_per_s"] > 0 and resnet["best_epoch"] in (1, 2) and resnet["error"] is None
    for row in rows.values():  # both scored on the same test tracks by the same metrics code
        assert 0.0 <= row["genre_accuracy"] <= 1.0 and 0.0 <= row["mood_accuracy"] <= 1.0
        assert row["genre_vote_accuracy"] is not None and row["genre_roc_auc"] is not None
    test_counts = {arch: json.loads((tmp_path / "cmp" / arch / "metrics.json").read_text())["test"]["genre"]["n_tracks"]
                   for arch in rows}
    assert test_counts == {"resnet18": 4, "features": 4}
    assert (tmp_path / "cmp" / "resnet18" / "checkpoint" / "model.pt").exists()
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert f"| resnet18 | {resnet['params'] / 1e6:.2f} M |" in table and "| features | 89 features |" in table

    first_metrics = (tmp_path / "cmp" / "resnet18" / "metrics.json").read_text()
    capsys.readouterr()
    with pytest.raises(ComparisonError, match="cnn"):
        run_comparison(base, CompareConfig(archs=("resnet18", "cnn"), baseline=False))
    assert "resnet18 already trained with this config" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "resnet18" / "metrics.json").read_text() == first_metrics, "not retrained"
    rows = {r["arch"]: r for r in json.loads((tmp_path / "cmp" / "comparison.json").read_text())["rows"]}
    assert rows["resnet18"]["genre_accuracy"] == resnet["genre_accuracy"]
    assert "genre_accuracy" not in rows["cnn"], "a failed arch gets no scores"
    assert "pretrained weights" in rows["cnn"]["error"], rows["cnn"]["error"]
    assert "| cnn | - | - | - | - | failed:" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert pd.read_json(tmp_path / "cmp" / "comparison.json", typ="series")["split"] == "test"


def test_compare_job_refuses_a_single_arch_flag():
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "compare.py"), "--arch", "cnn"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--archs" in done.stderr
