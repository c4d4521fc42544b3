"""Feature baseline (``--arch features``): same manifest, splits, skips and metrics as the CNN."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import BAD_TRACK_REASONS, add_bad_tracks, copy_tree
from mgc.training.baseline import (
    BASELINE_FILE,
    BaselineResult,
    TaskModel,
    feature_names,
    fit_feature_baseline,
    fit_task,
    track_features,
)
from mgc.config import AudioConfig, DataConfig, TaskSpec, TrainConfig
from mgc.evaluation.metrics import task_metrics, tune_thresholds
from mgc.evaluation.plots import write_plots
from mgc.evaluation.scoring import Predictions, metrics_for
from mgc.training.driver import prepare_table

MULTICLASS_KEYS = {"accuracy", "top_k_accuracy", "f1_macro", "roc_auc", "pr_auc", "confusion_matrix"}


def baseline_config(manifest: str, **overrides) -> TrainConfig:
    base = dict(manifest=manifest, output="unused", arch="features", data=DataConfig(decode_concurrency=2))
    return TrainConfig(**{**base, **overrides})


def run_baseline(cfg: TrainConfig) -> BaselineResult:
    table, specs = prepare_table(cfg)
    return fit_feature_baseline(cfg, table, specs)


# ------------------------------------------------------------------ no Ray needed


def test_feature_vector_is_named_float32_and_finite():
    cfg = AudioConfig()
    names = feature_names(cfg)
    assert len(names) == 89 and len(set(names)) == 89
    assert names[0] == "mfcc_01_mean" and names[-1] == "tempo"
    t = np.arange(2 * cfg.window_samples, dtype=np.float32) / cfg.sample_rate
    clicks = (np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0.9)).astype(np.float32)
    vector = track_features(clicks.reshape(2, -1), cfg)
    assert vector.dtype == np.float32 and vector.shape == (89,)
    assert np.isfinite(vector).all()
    assert vector[names.index("tempo")] > 0
    # A lower sample rate has fewer contrast bands below Nyquist: names and vector agree.
    low = AudioConfig(sample_rate=8000)
    assert len(track_features(np.zeros((1, low.window_samples), np.float32) + 0.1, low)) == len(feature_names(low)) < 89


def test_classes_unseen_in_training_get_zero_probability():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    spec = TaskSpec("multiclass", ("a", "b", "c", "d"))
    targets = np.zeros((12, 4), np.float32)
    targets[:6, 3] = 1  # only "b" and "d" in training
    targets[6:, 1] = 1
    x[6:, 0] += 5
    model = fit_task(x, targets, spec)
    probs = model.predict_proba(x)
    assert probs.shape == (12, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.all(probs[:, [0, 2]] == 0)
    assert (probs.argmax(axis=1) == targets.argmax(axis=1)).all()
    assert model.predict_proba(x[:0]).shape == (0, 4)


def test_multilabel_tags_one_model_each_constant_when_single_valued():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    targets = np.zeros((20, 3), np.float32)
    targets[:, 0] = x[:, 0] > 0  # learnable
    targets[:, 1] = 1.0  # always on: nothing to learn, its training rate
    model = fit_task(x, targets, TaskSpec("multilabel", ("x", "always", "never")))
    assert isinstance(model, TaskModel) and model.estimators[1] is None and model.estimators[2] is None
    probs = model.predict_proba(x)
    assert np.all(probs[:, 1] == 1.0) and np.all(probs[:, 2] == 0.0)
    assert ((probs[:, 0] > 0.5) == (targets[:, 0] > 0)).mean() >= 0.9


# ------------------------------------------------------------------ on real Ray


@pytest.fixture(scope="module")
def demo_run(ray_local, small_demo, tmp_path_factory):
    local = add_bad_tracks(copy_tree(small_demo.parent, tmp_path_factory.mktemp("baseline") / "demo") / small_demo.name)
    cfg = baseline_config(str(local))
    return cfg, run_baseline(cfg)


@pytest.mark.slow
def test_demo_baseline_metrics_and_skipped_tracks(demo_run, tmp_path):
    cfg, result = demo_run
    for split in ("validation", "test"):
        for task in ("genre", "mood"):
            metrics = result.metrics[split][task]
            assert set(metrics) >= MULTICLASS_KEYS, (split, task)
            assert metrics["n_tracks"] == 4 and metrics["labels"] == list(result.tasks[task].labels)
            assert np.asarray(metrics["confusion_matrix"]).sum() == 4
    reasons = dict(zip(result.skipped["track_id"], result.skipped["error"].str.split(":").str[0]))
    assert reasons == BAD_TRACK_REASONS
    assert list(result.skipped.columns) == ["track_id", "uri", "error"]
    assert result.counts == {"train": 8, "validation": 4, "test": 4, "skipped": 5}
    assert result.model.feature_names == feature_names(cfg.audio)
    print(f"\n[demo baseline] {result.seconds} test accuracy "
          f"genre {result.metrics['test']['genre']['accuracy']} mood {result.metrics['test']['mood']['accuracy']}")

    document = json.loads(json.dumps(result.metrics_json()))
    assert document["test"]["genre"]["accuracy"] == result.metrics["test"]["genre"]["accuracy"]
    assert document["counts"] == result.counts and len(document["skipped"]) == 5
    plots = write_plots(result.evaluation, [], tmp_path / "plots")
    assert {p.name for p in plots} == {f"{kind}_{t}_{s}.png" for kind in ("confusion", "per_class", "roc_pr")
                                       for t in ("genre", "mood") for s in ("validation", "test")}

    written = json.loads(open(result.save(str(tmp_path))).read())
    assert (tmp_path / BASELINE_FILE).exists() and not any(p.suffix in (".pkl", ".pickle", ".joblib", ".pt") for p in tmp_path.rglob("*"))
    assert written["arch"] == "features" and len(written["features"]) == 89
    assert written["metrics"]["test"]["genre"]["accuracy"] == result.metrics["test"]["genre"]["accuracy"]
    assert {row["track_id"] for row in written["skipped"]} == set(BAD_TRACK_REASONS)


@pytest.mark.slow
def test_feature_baseline_and_cnn_share_one_evaluation(demo_run):
    """The numbers are mgc.evaluation.scoring.metrics_for's on the baseline's track-level predictions."""
    cfg, result = demo_run
    for split, per_task in result.predictions.items():
        assert all(isinstance(p, Predictions) for p in per_task.values())
        assert result.metrics[split] == metrics_for(per_task, result.tasks, cfg.top_k)
        p, spec = per_task["genre"], result.tasks["genre"]
        direct = task_metrics(p.truth, p.probs, spec.type, spec.labels, spec.thresholds, cfg.top_k)
        assert {k: result.metrics[split]["genre"][k] for k in direct} == direct
        assert p.probs.shape == (4, len(spec.labels)) and np.allclose(p.probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_multilabel_thresholds_tuned_on_validation(ray_local, small_demo):
    cfg = baseline_config(str(small_demo), tasks=("mood",), task_types={"mood": "multilabel"})
    result = run_baseline(cfg)
    spec = result.tasks["mood"]
    assert spec.type == "multilabel"
    validation = result.predictions["validation"]["mood"]
    assert spec.thresholds == tuple(float(t) for t in tune_thresholds(validation.truth, validation.probs))
    for split in ("validation", "test"):
        metrics = result.metrics[split]["mood"]
        assert set(metrics) >= {"roc_auc", "pr_auc", "f1_macro", "f1_micro", "top_k_accuracy"}
        assert "confusion_matrix" not in metrics
        assert result.metrics[split] == metrics_for(result.predictions[split], result.tasks, cfg.top_k)


@pytest.mark.slow
def test_gtzan_mini_baseline_well_above_chance(ray_local, gtzan_mini_manifest):
    result = run_baseline(baseline_config(gtzan_mini_manifest))
    assert result.skipped.empty and result.counts == {"train": 60, "validation": 20, "test": 20, "skipped": 0}
    test = result.metrics["test"]["genre"]
    print(f"\n[gtzan-mini baseline] {result.seconds} validation accuracy "
          f"{result.metrics['validation']['genre']['accuracy']} test accuracy {test['accuracy']} "
          f"top-{test['top_k']} {test['top_k_accuracy']} f1 {test['f1_macro']:.3f}")
    assert test["n_tracks"] == 20
    assert test["accuracy"] >= 0.3, test  # 10 genres: chance is 0.1


@pytest.mark.slow
def test_arch_features_runs_through_the_training_job_and_writes_the_same_artifacts(ray_local, small_demo, tmp_path):
    from mgc.config import DataConfig, TrainConfig
    from mgc.training.driver import run_training

    output = tmp_path / "run"
    result = run_training(TrainConfig(manifest=str(small_demo), output=str(output), arch="features",
                                      data=DataConfig(decode_concurrency=2)))
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics["test"]) == {"genre", "mood"} and "accuracy" in metrics["test"]["genre"]
    assert metrics["config"]["arch"] == "features"
    assert result.checkpoint.endswith("baseline.json") and (output / "baseline.json").exists()
    assert (output / "confusion_genre_test.png").exists()
