"""report.md, per-label metrics and the new plots, on small hand-made arrays (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mgc.config import TaskSpec
from mgc.evaluation.metrics import per_label_metrics, task_metrics
from mgc.evaluation.plots import plot_per_class, plot_roc_pr
from mgc.evaluation.report import REPORT_FILE, metric_splits, write_report
from mgc.evaluation.plots import write_plots
from mgc.evaluation.scoring import Evaluation, Predictions, metrics_for

PNG = b"\x89PNG\r\n\x1a\n"
GENRES = ("ambient", "folk", "techno")
MOODS = ("happy", "sad", "calm")


def multiclass_case():
    truth = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1],
                      [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]], dtype=np.float32)
    return truth, probs


def multilabel_case():
    truth = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    probs = np.array([[0.9, 0.2, 0.1], [0.7, 0.6, 0.3], [0.2, 0.8, 0.2],
                      [0.1, 0.3, 0.4], [0.4, 0.1, 0.1], [0.3, 0.35, 0.2]], dtype=np.float32)
    return truth, probs


def predictions(truth, probs) -> Predictions:
    return Predictions(truth=truth, probs=probs, votes=probs)


def test_per_label_scores_are_right_on_a_constructed_case():
    truth, probs = multiclass_case()
    per_label = per_label_metrics(truth, probs, "multiclass", GENRES)
    # Predictions (argmax): ambient, folk, folk, folk, techno, ambient.
    assert per_label["ambient"]["support"] == 2 and per_label["ambient"]["precision"] == 0.5
    assert per_label["ambient"]["recall"] == 0.5 and per_label["ambient"]["f1"] == 0.5
    assert per_label["folk"]["precision"] == pytest.approx(2 / 3) and per_label["folk"]["recall"] == 1.0
    assert per_label["folk"]["f1"] == pytest.approx(0.8)
    assert per_label["techno"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2, "roc_auc": 1.0, "pr_auc": 1.0})
    assert "threshold" not in per_label["techno"]

    result = task_metrics(truth, probs, "multiclass", GENRES, top_k=2)
    assert result["type"] == "multiclass" and result["per_label"] == per_label
    assert result["f1_macro"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    assert result["roc_auc"] == pytest.approx(np.mean([s["roc_auc"] for s in per_label.values()]))


def test_multilabel_per_label_uses_thresholds_and_skips_undefined_aucs():
    truth, probs = multilabel_case()
    thresholds = (0.5, 0.3, 0.99)
    result = task_metrics(truth, probs, "multilabel", MOODS, thresholds=thresholds)
    per_label = result["per_label"]
    assert [per_label[m]["threshold"] for m in MOODS] == pytest.approx(list(thresholds))
    # happy over 0.5: tracks 0, 1 (both true); track 4 is a missed positive.
    assert per_label["happy"]["precision"] == 1.0 and per_label["happy"]["recall"] == pytest.approx(2 / 3)
    # sad over 0.3: tracks 1, 2, 5 (true) and 3 (0.3, false).
    assert per_label["sad"]["precision"] == 0.75 and per_label["sad"]["recall"] == 1.0
    # calm never occurs: no AUC, and it counts 0 in the macro F1 (as sklearn's zero_division=0).
    assert per_label["calm"]["support"] == 0 and per_label["calm"]["roc_auc"] is None
    assert per_label["calm"]["f1"] == 0.0
    assert result["f1_macro"] == pytest.approx(np.mean([s["f1"] for s in per_label.values()]))
    assert result["roc_auc"] == pytest.approx(np.mean([per_label["happy"]["roc_auc"], per_label["sad"]["roc_auc"]]))
    json.dumps(result)  # metrics.json and mgc.json must hold it


@pytest.mark.parametrize("case,task_type", [(multiclass_case, "multiclass"), (multilabel_case, "multilabel")])
def test_plots_write_pngs(case, task_type, tmp_path):
    truth, probs = case()
    labels = GENRES if task_type == "multiclass" else MOODS
    result = task_metrics(truth, probs, task_type, labels)
    for path in (plot_per_class(result, "t", tmp_path / "per_class.png"),
                 plot_roc_pr(truth, probs, labels, "t", tmp_path / "roc_pr.png")):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_roc_pr_with_no_drawable_label_and_many_labels_still_draws(tmp_path):
    truth = np.ones((4, 2), dtype=np.float32)
    assert plot_roc_pr(truth, np.full((4, 2), 0.5), ["a", "b"], "t", tmp_path / "a.png").read_bytes()[:8] == PNG
    rng = np.random.default_rng(0)
    truth = (rng.random((40, 30)) < 0.3).astype(np.float32)
    labels = [f"tag{i}" for i in range(30)]
    assert plot_roc_pr(truth, rng.random((40, 30)), labels, "t", tmp_path / "b.png").read_bytes()[:8] == PNG
    result = task_metrics(truth, rng.random((40, 30)), "multilabel", labels)
    assert plot_per_class(result, "t", tmp_path / "c.png").read_bytes()[:8] == PNG


def training_run(tmp_path):
    """metrics.json of a training run (shape of mgc.training.driver.run_training) and its plots."""
    tasks = {"genre": TaskSpec("multiclass", GENRES), "mood": TaskSpec("multilabel", MOODS, (0.5, 0.3, 0.5))}
    preds = {"genre": predictions(*multiclass_case()), "mood": predictions(*multilabel_case())}
    per_split = {split: metrics_for(preds, tasks, top_k=4) for split in ("validation", "test")}
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_score": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    metrics = {
        **per_split,
        "skipped": [{"track_id": "x", "error": "too_short: 0.50 s < 3.00 s"},
                    {"track_id": "y", "error": "not_audio: junk"}, {"track_id": "z", "error": "too_short: 1 s"}],
        "history": history,
        "counts": {"train": 10, "validation": 6, "test": 6, "skipped": 3},
        "config": {"arch": "cnn", "epochs": 3, "manifest": "data/manifest.csv"},
        "best_epoch": 3,
        "seconds": 42.0,
    }
    evaluation = Evaluation(tasks=tasks, metrics=per_split, predictions={s: preds for s in per_split})
    plots = write_plots(evaluation, history, tmp_path)
    return metrics, plots


def test_write_plots_draws_every_kind_for_every_split_and_task(tmp_path):
    _, plots = training_run(tmp_path)
    expected = {"learning_curves.png"}
    for split in ("validation", "test"):
        expected |= {f"confusion_genre_{split}.png"}
        expected |= {f"{kind}_{task}_{split}.png" for kind in ("per_class", "roc_pr") for task in ("genre", "mood")}
    assert {p.name for p in plots} == expected
    assert all(p.read_bytes()[:8] == PNG for p in plots)


def test_write_plots_without_predictions_skips_roc_pr(tmp_path):
    truth, probs = multiclass_case()
    metrics = {"test": {"genre": task_metrics(truth, probs, "multiclass", GENRES)}}
    plots = write_plots(Evaluation(tasks={"genre": TaskSpec("multiclass", GENRES)}, metrics=metrics), [], tmp_path)
    assert {p.name for p in plots} == {"confusion_genre_test.png", "per_class_genre_test.png"}


def test_report_of_a_training_run_has_summary_tables_and_embedded_plots(tmp_path):
    metrics, plots = training_run(tmp_path)
    path = write_report(tmp_path, json.loads(json.dumps(metrics)), plots, "demo run")
    assert path == tmp_path / REPORT_FILE
    text = path.read_text()
    assert text.startswith("# demo run\n")
    assert "- **architecture**: cnn" in text and "- **best epoch**: 3" in text and "- **epochs**: 3" in text
    assert "- **skipped**: 3 (too_short 2, not_audio 1)" in text
    assert "train 10, validation 6, test 6, skipped 3" in text and "- **seconds**: 42.0" in text
    assert text.index("### validation") < text.index("### test")
    assert ("| task | type | tracks | accuracy | top-3 accuracy | F1 macro | ROC-AUC | PR-AUC | vote accuracy "
            "| vote F1 macro |") in text
    genre = metrics["test"]["genre"]
    row = (f"| genre | multiclass | 6 | {genre['accuracy']:.3f} | {genre['top_k_accuracy']:.3f} | "
           f"{genre['f1_macro']:.3f} | {genre['roc_auc']:.3f} | {genre['pr_auc']:.3f} | "
           f"{genre['vote']['accuracy']:.3f} | {genre['vote']['f1_macro']:.3f} |")
    assert row in text
    assert "| mood | multilabel | 6 |" in text
    assert "<summary>mood (test): per label</summary>" in text and "| calm | 0 | 0.000 |" in text
    for plot in plots:
        assert f"]({plot.name})" in text
        assert (tmp_path / plot.name).is_file()
    assert text.index("learning_curves.png") < text.index("### validation\n\n![")


def test_report_links_plots_relatively_and_skips_missing_ones(tmp_path):
    metrics, plots = training_run(tmp_path / "plots")
    text = write_report(tmp_path, metrics, [*plots, tmp_path / "gone.png"], "t").read_text()
    assert "](plots/confusion_genre_test.png)" in text and "gone.png" not in text


def test_report_of_an_evaluate_job_and_of_nothing(tmp_path):
    truth, probs = multiclass_case()
    metrics = {
        "all": {"genre": task_metrics(truth, probs, "multiclass", GENRES, top_k=4)},
        "skipped": [], "counts": {"all": 6, "skipped": 0}, "checkpoint": "runs/x/checkpoint",
        "model_id": "cnn-0123456789", "arch": "cnn", "evaluated_split": "all",
        "unknown_labels": {"genre": {"polka": 2}}, "seconds": 3.0,
    }
    assert metric_splits(metrics) == ["all"]
    text = write_report(tmp_path, metrics, [], "eval").read_text()
    assert "- **model id**: `cnn-0123456789`" in text and "- **skipped**: 0" in text
    assert "genre: polka 2" in text and "### all" in text and "## Plots" not in text
    empty = write_report(tmp_path / "e", {"skipped": [{"track_id": "a", "error": "missing: x"}], "counts": {}}, [], "e")
    assert "No split was evaluated" in empty.read_text() and "missing 1" in empty.read_text()
