"""jobs/evaluate.py on real Ray: a saved checkpoint judged on a manifest split, local and S3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import s3fs

from conftest import REPO
from mgc.io import storage
from mgc.audio.track import load_track
from mgc.models.checkpoint import CheckpointMeta, load_checkpoint, read_meta, save_checkpoint
from mgc.config import AudioConfig, TaskSpec
from mgc.evaluation.metrics import task_metrics
from mgc.evaluation.job import EvaluationError, default_output, evaluate_checkpoint
from mgc.audio.logmel import log_mel
from mgc.io.manifest import read_manifest
from mgc.models.zoo import build_model
from mgc.models.inference import predict_tracks

sys.path.insert(0, str(REPO / "jobs"))
import evaluate as evaluate_job  # noqa: E402  (jobs/evaluate.py)

KEYS = {"accuracy", "top_k_accuracy", "f1_macro", "roc_auc", "pr_auc", "per_label", "vote", "n_tracks"}
PNG = b"\x89PNG\r\n\x1a\n"


def make_checkpoint(directory: Path, tasks: dict[str, TaskSpec], seed: int) -> str:
    """A real (untrained) checkpoint: evaluation mechanics do not need a good model."""
    import torch

    torch.manual_seed(seed)
    model = build_model("cnn", {t: len(s.labels) for t, s in tasks.items()})
    save_checkpoint(directory, model, CheckpointMeta("cnn", AudioConfig(), tasks, name="cnn"))
    return str(directory)


def direct_metrics(checkpoint: str, rows: pd.DataFrame, task: str, top_k: int = 4) -> dict:
    """What a user would compute by hand: decode each track with the checkpoint's config,
    score it, build the truth in the checkpoint's label order."""
    loaded = load_checkpoint(checkpoint)
    spec = loaded.meta.tasks[task]
    rows = rows[rows[f"{task}s"].map(lambda labels: any(label in spec.labels for label in labels))]
    mels = [log_mel(load_track(uri, loaded.meta.audio).windows, loaded.meta.audio) for uri in rows.uri]
    probs = predict_tracks(loaded.model, mels, {task: spec.type})[task]
    truth = np.array([[float(label in labels) for label in spec.labels] for labels in rows[f"{task}s"]])
    return task_metrics(truth, probs, spec.type, spec.labels, spec.thresholds, top_k)


@pytest.mark.slow
def test_evaluate_job_writes_metrics_plots_and_report_for_the_test_split(ray_local, small_demo, tmp_path, capsys):
    # Labels deliberately not in sorted order: the checkpoint's order must be used.
    tasks = {"genre": TaskSpec("multiclass", ("techno", "ambient")), "mood": TaskSpec("multiclass", ("sad", "happy"))}
    checkpoint = make_checkpoint(tmp_path / "run" / "checkpoint", tasks, seed=5)

    code = evaluate_job.main(["--checkpoint", checkpoint, "--manifest", str(small_demo), "--split", "test",
                              "--decode-concurrency", "1"])

    output = tmp_path / "run" / "eval-test"  # the default: beside the checkpoint
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex("\n{\n") + 1:])
    assert summary["split"] == "test" and summary["tracks"] == 4 and summary["output"] == str(output)
    assert set(summary["genre"]) == {"accuracy", "top_k_accuracy", "f1_macro", "roc_auc", "pr_auc"}
    metrics = json.loads((output / "metrics.json").read_text())
    manifest = read_manifest(str(small_demo))
    test_rows = manifest[manifest.split == "test"]
    assert len(test_rows) == 4
    assert metrics["counts"]["test"] == len(test_rows) and metrics["counts"]["skipped"] == 0
    assert metrics["skipped"] == [] and metrics["evaluated_split"] == "test"
    assert metrics["model_id"] == load_checkpoint(checkpoint).model_id and metrics["checkpoint"] == checkpoint
    assert set(metrics) >= {"test", "skipped", "counts", "checkpoint", "model_id"}
    assert "train" not in metrics and "validation" not in metrics
    for task in ("genre", "mood"):
        result = metrics["test"][task]
        assert set(result) >= KEYS and result["n_tracks"] == 4
        assert result["labels"] == list(tasks[task].labels)
        assert result["top_k"] == 2  # top-4 capped at the two labels
        direct = direct_metrics(checkpoint, test_rows, task)
        assert result["accuracy"] == direct["accuracy"]
        assert result["confusion_matrix"] == direct["confusion_matrix"]
        assert result["roc_auc"] == pytest.approx(direct["roc_auc"], abs=1e-6)
        for label in tasks[task].labels:
            assert result["per_label"][label] == pytest.approx(direct["per_label"][label], abs=1e-6)

    names = {p.name for p in output.iterdir()}
    for task in ("genre", "mood"):
        assert {f"confusion_{task}_test.png", f"per_class_{task}_test.png", f"roc_pr_{task}_test.png"} <= names
    assert all((output / n).read_bytes()[:8] == PNG for n in names if n.endswith(".png"))
    report = (output / "report.md").read_text()
    assert "### test" in report and "| genre | multiclass | 4 |" in report
    assert "![roc pr genre test](roc_pr_genre_test.png)" in report and metrics["model_id"] in report


@pytest.mark.slow
def test_saved_multilabel_thresholds_are_used_unchanged_and_s3_works(ray_local, s3_endpoint, s3_bucket,
                                                                      small_demo, tmp_path):
    # Extreme thresholds: every track is "happy", none is "sad". Tuning on the evaluated
    # split would move them; F1 must show they were kept. "techno" is unknown to this
    # checkpoint, "rock" never occurs in the demo.
    tasks = {"genre": TaskSpec("multiclass", ("rock", "ambient")),
             "mood": TaskSpec("multilabel", ("happy", "sad"), thresholds=(0.0, 1.01))}
    local = make_checkpoint(tmp_path / "ckpt", tasks, seed=6)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(local + "/", f"{s3_bucket}/runs/x/checkpoint/", recursive=True)
    checkpoint = f"s3://{s3_bucket}/runs/x/checkpoint"

    code = evaluate_job.main(["--checkpoint", checkpoint, "--manifest", str(small_demo), "--split", "test",
                              "--decode-concurrency", "1"])

    assert code == 0
    output = default_output(checkpoint, "test")
    assert output == f"s3://{s3_bucket}/runs/x/eval-test"
    metrics = json.loads(storage.read_bytes(f"{output}/metrics.json"))
    mood = metrics["test"]["mood"]
    assert mood["n_tracks"] == 4 and mood["type"] == "multilabel"
    assert [mood["per_label"][m]["threshold"] for m in ("happy", "sad")] == pytest.approx([0.0, 1.01])
    assert metrics["thresholds"]["mood"] == pytest.approx([0.0, 1.01])
    # happy: all 4 predicted, 2 true -> precision 0.5, recall 1, F1 2/3; sad: never predicted -> F1 0.
    assert mood["per_label"]["happy"]["precision"] == 0.5 and mood["per_label"]["happy"]["recall"] == 1.0
    assert mood["per_label"]["sad"]["f1"] == 0.0
    assert mood["f1_macro"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert mood["accuracy"] == 0.5  # exact match: the happy tracks ({happy} predicted for every track)
    assert read_meta(load_checkpoint(checkpoint).directory).tasks["mood"].thresholds == (0.0, 1.01)

    genre = metrics["test"]["genre"]
    assert genre["n_tracks"] == 2  # the two ambient test tracks; techno is not the checkpoint's
    assert metrics["unknown_labels"]["genre"] == {"techno": 2}
    assert metrics["counts"]["labeled_genre"] == 2 and metrics["counts"]["test"] == 4
    for name in ("report.md", "per_class_mood_test.png", "roc_pr_mood_test.png", "confusion_genre_test.png"):
        assert fs.exists(f"{s3_bucket}/runs/x/eval-test/{name}"), name
    report = storage.read_bytes(f"{output}/report.md").decode()
    assert "genre: techno 2" in report and "| mood | multilabel | 4 |" in report


def test_a_split_the_manifest_lacks_is_refused_before_decoding(small_demo, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", {"genre": TaskSpec("multiclass", ("ambient", "techno"))}, 1)
    manifest = tmp_path / "train_only.csv"
    pd.read_csv(small_demo).assign(split="train", uri=lambda d: str(small_demo.parent) + "/" + d.uri).to_csv(
        manifest, index=False)
    with pytest.raises(EvaluationError, match="no rows of split 'test'.*--split all"):
        evaluate_checkpoint(checkpoint, str(manifest), str(tmp_path / "out"), split="test")
    assert not (tmp_path / "out").exists()


def test_default_output_sits_beside_the_checkpoint(tmp_path):
    assert default_output(str(tmp_path / "run" / "checkpoint"), "test") == str((tmp_path / "run" / "eval-test").resolve())
    assert default_output("s3://b/runs/x/checkpoint/", None) == "s3://b/runs/x/eval-all"
    assert default_output("s3://b/runs/x/checkpoint", "all") == "s3://b/runs/x/eval-all"
