"""End-to-end training on real Ray: S3 in and out, bad files, DDP, real music."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import s3fs

from conftest import BAD_TRACK_REASONS, add_bad_tracks, copy_tree
from mgc.io import storage
from mgc.audio.track import load_track
from mgc.models.checkpoint import load_checkpoint
from mgc.config import AugmentConfig, DataConfig, TrainConfig
from mgc.audio.logmel import log_mel
from mgc.models.inference import predict_tracks
from mgc.training.driver import run_training

pytestmark = pytest.mark.slow


def quick_config(manifest: str, output: str, **overrides) -> TrainConfig:
    base = dict(manifest=manifest, output=output, arch="cnn", epochs=2, batch_size=8,
                data=DataConfig(decode_concurrency=2))
    return TrainConfig(**{**base, **overrides})


def predict_file(checkpoint_uri: str, audio_uri: str) -> dict[str, np.ndarray]:
    """What a user does with a checkpoint: load it, decode a file with its config, score it."""
    loaded = load_checkpoint(checkpoint_uri)
    windows = load_track(audio_uri, loaded.meta.audio).windows
    task_types = {t: s.type for t, s in loaded.meta.tasks.items()}
    return predict_tracks(loaded.model, [log_mel(windows, loaded.meta.audio)], task_types)


def test_train_from_s3_with_bad_files_writes_checkpoint_to_s3(ray_local, s3_endpoint, s3_bucket, small_demo, tmp_path):
    local = add_bad_tracks(copy_tree(small_demo.parent, tmp_path / "demo") / small_demo.name)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(str(local.parent) + "/", f"{s3_bucket}/data/", recursive=True)
    assert fs.exists(f"{s3_bucket}/data/bad/text.mp3")

    output = f"s3://{s3_bucket}/runs/exp1"
    result = run_training(quick_config(f"s3://{s3_bucket}/data/manifest.csv", output))

    assert result.checkpoint == f"{output}/checkpoint"
    for name in ("checkpoint/model.pt", "checkpoint/mgc.json", "metrics.json", "confusion_genre_test.png"):
        assert fs.exists(f"{s3_bucket}/runs/exp1/{name}"), name
    assert fs.ls(f"{s3_bucket}/runs/exp1/ray_results"), "Ray Train's checkpoints go to S3 too"

    metrics = json.loads(storage.read_bytes(f"{output}/metrics.json"))
    reasons = {row["track_id"]: row["error"].split(":")[0] for row in metrics["skipped"]}
    assert reasons == BAD_TRACK_REASONS
    assert metrics["counts"]["train"] == 8 and metrics["counts"]["skipped"] == 5
    for task in ("genre", "mood"):
        assert metrics["test"][task]["n_tracks"] == 4
        assert set(metrics["test"][task]) >= {"accuracy", "top_k_accuracy", "f1_macro", "roc_auc", "pr_auc"}

    probs = predict_file(result.checkpoint, f"s3://{s3_bucket}/data/audio/techno/" + fs.ls(f"{s3_bucket}/data/audio/techno")[0].rsplit("/", 1)[1])
    assert probs["genre"].shape == (1, 2) and np.isclose(probs["genre"].sum(), 1.0, atol=1e-5)


def test_ddp_two_cpu_workers_checkpoint_loads_and_predicts(ray_local, small_demo, tmp_path):
    augment = AugmentConfig(spec_augment=True, mixup_alpha=0.3, gain_db=3.0)  # every option through real DDP
    result = run_training(quick_config(str(small_demo), str(tmp_path / "run"), num_workers=2, cpus_per_worker=1.0,
                                       augment=augment, freeze_backbone_epochs=1, backbone_lr_scale=0.5,
                                       layer_lr_decay=0.3))

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all(h["train_samples_per_s"] > 0 for h in metrics["history"]), "throughput over both workers"
    assert metrics["config"]["num_workers"] == 2
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.meta.tasks["genre"].labels == ("ambient", "techno")
    assert loaded.meta.tasks["mood"].type == "multiclass"
    manifest = pd.read_csv(small_demo)
    probs = predict_file(result.checkpoint, str(small_demo.parent / manifest.uri[0]))
    assert probs["mood"].shape == (1, 2)
    assert np.all((probs["mood"] >= 0) & (probs["mood"] <= 1))


def test_real_music_decodes_and_training_lowers_the_loss(ray_local, gtzan_mini_manifest, tmp_path):
    manifest = gtzan_mini_manifest
    result = run_training(quick_config(manifest, str(tmp_path / "run"), epochs=5, batch_size=12, lr=3e-3))

    metrics = result.metrics
    assert metrics["skipped"] == [], "every real GTZAN clip decodes"
    assert metrics["counts"] == {"train": 60, "validation": 20, "test": 20, "skipped": 0}
    losses = [h["train_loss"] for h in metrics["history"]]
    assert min(losses[-2:]) < 0.85 * losses[0], losses
