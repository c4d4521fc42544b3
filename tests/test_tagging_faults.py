"""Tagging that survives a night: per-track limits, retries that supersede, one writer,
crash isolation, safe names; on real Ray with real files (and a real S3 endpoint)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import copy_tree
from mgc.audio.decode import track_error
from mgc.config import AudioConfig, DataConfig, TagConfig, TaskSpec
from mgc.io.lease import LeaseHeld, read_lease
from mgc.io.storage import StorageError
from mgc.models.checkpoint import CheckpointError, CheckpointMeta, model_id, save_checkpoint
from mgc.models.zoo import build_model
from mgc.tagging.actors import DecodeTagger
from mgc.tagging.job import run_tagging
from mgc.tagging.compact import compact_partition

pytestmark = pytest.mark.slow

GENRE = TaskSpec("multiclass", ("ambient", "techno"))


def make_checkpoint(directory: Path, name: str = "cnn", thresholds=None) -> str:
    import torch

    torch.manual_seed(0)
    tasks = {"genre": GENRE, "mood": TaskSpec("multilabel", ("happy", "sad"), thresholds)}
    save_checkpoint(directory, build_model("cnn", {"genre": 2, "mood": 2}), CheckpointMeta("cnn", AudioConfig(), tasks,
                                                                                           name=name))
    return str(directory)


@pytest.fixture
def catalog_dir(small_demo, tmp_path):
    """Four good demo tracks, a FIFO, /dev/zero, a WAV over the size cap and a missing file."""
    root = copy_tree(small_demo.parent, tmp_path / "demo")
    demo = pd.read_csv(root / small_demo.name)
    rows = [{"track_id": t, "uri": str(root / u)} for t, u in zip(demo.track_id[:4], demo.uri[:4])]
    os.mkfifo(root / "stuck.wav")
    sf.write(root / "big.wav", 0.1 * np.random.default_rng(0).standard_normal(22050 * 12).astype(np.float32), 22050)
    rows += [{"track_id": "fifo", "uri": str(root / "stuck.wav")}, {"track_id": "zero", "uri": "/dev/zero"},
             {"track_id": "big", "uri": str(root / "big.wav")}, {"track_id": "later", "uri": str(root / "later.wav")}]
    pd.DataFrame(rows).to_csv(root / "catalog.csv", index=False)
    return root


def config(root: Path, checkpoint: str, output: Path, **overrides) -> TagConfig:
    data = DataConfig(track_timeout=overrides.pop("track_timeout", 3.0), max_bytes=300_000)
    return TagConfig(manifest=str(root / "catalog.csv"), checkpoint=(checkpoint,), output=str(output),
                     concurrency=1, data=data, **overrides)


def test_limits_make_rows_retries_supersede_and_compaction_keeps_one_row_each(ray_local, catalog_dir, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    output = tmp_path / "tags"
    started = time.time()
    first = run_tagging(config(catalog_dir, checkpoint, output))
    assert time.time() - started < 120, "the FIFO cost its time limit, not the night"
    assert first.tagged == 4
    assert first.failed == {"timeout": 1, "too_large": 2, "missing": 1}
    df = pd.read_parquet(output).set_index("track_id")
    assert df.loc["fifo", "error"].startswith("timeout: fetch and decode took more than 3 s")
    assert df.loc["zero", "error"].startswith("too_large: ") and df.loc["big", "error"].startswith("too_large: ")

    # The missing file arrives; the next run retries the retryable rows (missing, timeout),
    # not the others, and the partition still holds one row per track.
    shutil.copy(pd.read_csv(catalog_dir / "catalog.csv").uri[0], catalog_dir / "later.wav")
    second = run_tagging(config(catalog_dir, checkpoint, output))
    assert second.already_tagged == 6 and second.retried == 2 and second.superseded == 2
    assert second.tagged == 1 and second.failed == {"timeout": 1}
    df = pd.read_parquet(output)
    assert df.track_id.is_unique and len(df) == 8
    assert pd.isna(df.set_index("track_id").loc["later", "error"])

    partition = output / f"model_id={first.model_id}"
    assert len(list(partition.glob("part-*.parquet"))) > 1
    summary = compact_partition(str(partition))
    assert summary.files_after == 1 and summary.files_before > 1
    assert pd.read_parquet(output).sort_values("track_id").reset_index(drop=True).equals(
        df.sort_values("track_id").reset_index(drop=True))
    assert read_lease(str(partition)) is None, "compaction released its lease"


def test_a_second_run_is_refused_while_the_first_writes_and_every_track_appears_once(ray_local, catalog_dir, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    output = tmp_path / "tags"
    first = {}
    runner = threading.Thread(target=lambda: first.update(summary=run_tagging(
        config(catalog_dir, checkpoint, output, track_timeout=10.0))))
    runner.start()
    partition = output / f"model_id=cnn-{model_id(checkpoint).rsplit('-', 1)[1]}"
    deadline = time.time() + 60
    while read_lease(str(partition)) is None and time.time() < deadline:
        time.sleep(0.2)
    with pytest.raises(LeaseHeld, match=r"purpose 'jobs/tag.py cnn-.*another run is writing this partition"):
        run_tagging(config(catalog_dir, checkpoint, output))
    runner.join(timeout=180)
    assert first["summary"].tagged == 4
    df = pd.read_parquet(output)
    assert df.track_id.is_unique and len(df) == 8


def test_a_track_that_kills_its_actor_is_isolated_and_recorded(ray_local, small_demo, tmp_path):
    class Crashing(DecodeTagger):  # defined here: Ray ships it by value
        def __call__(self, batch):
            if "demo-0003" in [str(t) for t in batch["track_id"]]:
                os._exit(1)  # a segfault, as far as Ray can tell
            return super().__call__(batch)

    checkpoint = make_checkpoint(tmp_path / "ckpt")
    output = tmp_path / "tags"
    cfg = TagConfig(manifest=str(small_demo), checkpoint=(checkpoint,), output=str(output), concurrency=1,
                    actor_restarts=0)
    summary = run_tagging(cfg, cpu_actor=Crashing)
    assert summary.failed == {"crashed": 1} and summary.tagged == 15
    df = pd.read_parquet(output).set_index("track_id")
    assert df.index.is_unique and len(df) == 16
    assert df.loc["demo-0003", "error"].startswith("crashed: ")


def test_model_id_covers_thresholds_and_unsafe_names_are_refused(tmp_path):
    a = make_checkpoint(tmp_path / "a", thresholds=(0.5, 0.5))
    b = make_checkpoint(tmp_path / "b", thresholds=(0.3, 0.6))
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    assert model_id(a) != model_id(b), "retuned thresholds are another model set"
    evil = make_checkpoint(tmp_path / "evil", name="a/../../x")
    with pytest.raises(CheckpointError, match="unsafe checkpoint name 'a/../../x'"):
        run_tagging(TagConfig(manifest=str(tmp_path / "absent.csv"), checkpoint=(evil,), output=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists() and not (tmp_path.parent / "x").exists()


def test_a_key_that_keeps_failing_is_a_row_but_a_store_that_is_down_fails_the_job(s3_endpoint, s3_bucket):
    alive = StorageError("storage endpoint kept failing: read ...", uri=f"s3://{s3_bucket}/audio/a.mp3",
                         endpoint=s3_endpoint)
    assert track_error(alive).startswith("storage: ")
    down = StorageError("cannot reach storage endpoint", uri="s3://bucket/a.mp3", endpoint="http://127.0.0.1:9")
    os.environ["AWS_ENDPOINT_URL"], saved = "http://127.0.0.1:9", os.environ["AWS_ENDPOINT_URL"]
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(StorageError):
            track_error(down)
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved
        s3fs.S3FileSystem.clear_instance_cache()


def test_actors_refuse_a_checkpoint_that_is_not_the_planned_one(tmp_path):
    from mgc.tagging.actors import TaggerSpec

    checkpoint = make_checkpoint(tmp_path / "ckpt")
    spec = TaggerSpec(checkpoints=(checkpoint,), model_ids=("cnn-0000000000",), partition=str(tmp_path / "p"))
    with pytest.raises(CheckpointError, match=r"is now cnn-\w+, not the cnn-0000000000 this run planned with"):
        DecodeTagger(spec.to_dict())
    DecodeTagger(TaggerSpec(checkpoints=(checkpoint,), model_ids=(model_id(checkpoint),),
                            partition=str(tmp_path / "p")).to_dict())  # the right one loads


def test_credentials_in_query_strings_never_reach_errors_or_rows():
    from mgc.audio.decode import AudioError
    from mgc.io.storage import redact
    from mgc.tagging.schema import PredictionSchema, build_table

    uri = "s3://bucket/audio/a.mp3?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef"
    assert redact(uri) == "s3://bucket/audio/a.mp3?<redacted>"
    assert redact("https://user:secret@host/a.mp3?sig=1") == "https://***@host/a.mp3?<redacted>"
    assert redact("/music/what?.mp3") == "/music/what?.mp3", "a plain path keeps its name"
    err = AudioError("missing", uri, f"no such object: {uri}")
    assert "deadbeef" not in str(err) and "AKIA" not in str(err)
    table = build_table(PredictionSchema({"genre": GENRE}), ["t"], [uri], [1.0], [0], ["missing: x"],
                        {"genre": np.zeros((0, 2), np.float32)})
    assert table.column("uri").to_pylist() == ["s3://bucket/audio/a.mp3?<redacted>"]


def test_gpu_calls_are_bounded_by_their_windows():
    from mgc.tagging.job import _gpu_rows

    assert _gpu_rows(TagConfig(rows_per_file=1024, max_windows=32, gpu_window_budget=8192)) == 256
    assert _gpu_rows(TagConfig(rows_per_file=1024, gpu_window_budget=8192)) == 819  # 10 windows a track assumed
    assert _gpu_rows(TagConfig(rows_per_file=64, max_windows=8)) == 64
