"""Catalog tagging on real Ray: S3, bad files, several checkpoints, incremental, crash-safe."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import s3fs

from conftest import BAD_TRACK_REASONS, REPO, add_bad_tracks, copy_tree
from mgc.models.checkpoint import CheckpointMeta, save_checkpoint
from mgc.config import AudioConfig, DataConfig, TagConfig, TaskSpec
from mgc.io.manifest import read_manifest, write_manifest
from mgc.models.zoo import build_model
from mgc.tagging.job import run_tagging

pytestmark = pytest.mark.slow

GENRE = TaskSpec("multiclass", ("ambient", "techno"))
MOOD = TaskSpec("multiclass", ("happy", "sad"))
COLUMNS = ["track_id", "uri", "tagged_at", "duration_s", "n_segments", "genre", "genre_score", "genres",
           "moods", "genre_ambient", "genre_techno", "mood_happy", "mood_sad", "error", "model_id"]


def make_checkpoint(directory: Path, tasks: dict[str, TaskSpec], seed: int) -> str:
    """A real (untrained) checkpoint: tagging mechanics do not need a good model."""
    import torch

    torch.manual_seed(seed)
    model = build_model("cnn", {t: len(s.labels) for t, s in tasks.items()})
    save_checkpoint(directory, model, CheckpointMeta("cnn", AudioConfig(), tasks, name="cnn"))
    return str(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "genre": make_checkpoint(root / "genre", {"genre": GENRE}, 1),
        "mood": make_checkpoint(root / "mood", {"mood": MOOD}, 2),
        "both": make_checkpoint(root / "both", {"genre": GENRE, "mood": MOOD}, 3),
    }


def catalog(manifest: Path, out: Path, copies: int = 1, relative: bool = False) -> Path:
    """An unlabeled catalog manifest (parquet) of the demo audio, each file listed ``copies``
    times; ``relative`` keeps uris relative to ``out``'s folder (a catalog to upload beside its audio)."""
    df = read_manifest(str(manifest))[["track_id", "uri"]]
    if relative:
        df = df.assign(uri=[os.path.relpath(uri, out.parent) for uri in df.uri])
    frames = [df.assign(track_id=df.track_id + f"-{i}") for i in range(copies)] if copies > 1 else [df]
    write_manifest(pd.concat(frames, ignore_index=True), str(out))
    return out


def quick(manifest: str, checkpoints: list[str], output: str, **overrides) -> TagConfig:
    return TagConfig(manifest=manifest, checkpoint=tuple(checkpoints), output=output, rows_per_file=8,
                     data=DataConfig(decode_batch_size=4), **overrides)


def test_s3_catalog_with_bad_files_one_row_per_track_schema_as_designed(
        ray_local, s3_endpoint, s3_bucket, small_demo, checkpoints, tmp_path):
    local = add_bad_tracks(copy_tree(small_demo.parent, tmp_path / "demo") / small_demo.name)
    catalog(local, local.parent / "catalog.parquet", relative=True)  # the audio is read from S3 too
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.put(str(local.parent) + "/", f"{s3_bucket}/cat/", recursive=True)

    output = f"s3://{s3_bucket}/predictions"
    summary = run_tagging(quick(f"s3://{s3_bucket}/cat/catalog.parquet", [checkpoints["genre"], checkpoints["mood"]], output))
    assert summary.tagged == 16 and summary.failed == {"empty": 1, "not_audio": 1, "too_short": 1, "silent": 1, "missing": 1}

    df = pd.read_parquet(output)  # plain pandas, through s3fs and AWS_ENDPOINT_URL
    assert list(df.columns) == COLUMNS
    assert len(df) == 21 and df.track_id.is_unique
    assert set(df.model_id) == {summary.model_id} and "--" in summary.model_id
    bad = df[df.track_id.isin(BAD_TRACK_REASONS)].set_index("track_id")
    assert {t: e.split(":")[0] for t, e in bad.error.items()} == BAD_TRACK_REASONS
    assert bad[["genre", "genre_score", "genre_ambient", "mood_sad"]].isna().all().all()
    assert bad.genres.isna().all() and bad.moods.isna().all()
    good = df[~df.track_id.isin(BAD_TRACK_REASONS)]
    assert good.error.isna().all() and good[["genre_ambient", "genre_techno", "mood_happy"]].notna().all().all()
    np.testing.assert_allclose(good.genre_ambient + good.genre_techno, 1.0, atol=1e-5)
    assert (good.genre_score == good[["genre_ambient", "genre_techno"]].max(axis=1)).all()
    assert (good.n_segments == 1).all() and np.allclose(good.duration_s, 4.0, atol=0.05)
    assert str(good.tagged_at.dt.tz) == "UTC"

    table = pa.parquet.read_table(fs.ls(f"{s3_bucket}/predictions/model_id={summary.model_id}")[0], filesystem=fs)
    assert table.schema.field("genre_techno").type == pa.float32()
    assert table.schema.field("genres").type == pa.list_(pa.string())


def test_two_checkpoints_incremental_rerun_and_new_model_id(ray_local, small_demo, checkpoints, tmp_path):
    manifest = str(catalog(small_demo, tmp_path / "catalog.csv"))
    output = str(tmp_path / "predictions")
    pair = [checkpoints["genre"], checkpoints["mood"]]

    first = run_tagging(quick(manifest, pair, output, embeddings=True))
    assert (first.tagged, first.already_tagged) == (16, 0)
    df = pd.read_parquet(output)
    assert len(df) == 16 and df[["genre", "mood_happy"]].notna().all().all()
    assert {len(e) for e in df.embedding} == {256}, "two cnn backbones: 128 + 128"

    again = run_tagging(quick(manifest, pair, output))
    assert (again.tagged, again.already_tagged) == (0, 16)
    assert len(pd.read_parquet(output)) == 16

    other = run_tagging(quick(manifest, [checkpoints["both"]], output))
    assert other.model_id != first.model_id and other.tagged == 16
    df = pd.read_parquet(output)
    assert df.groupby("model_id", observed=True).track_id.nunique().to_dict() == {first.model_id: 16, other.model_id: 16}

    retag = run_tagging(quick(manifest, [checkpoints["both"]], output, retag=True, limit=5))
    assert retag.tagged == 5
    assert (pd.read_parquet(output).model_id == other.model_id).sum() == 5, "--retag replaces the partition"


def test_sigkill_mid_run_then_rerun_leaves_every_track_exactly_once(small_demo, checkpoints, tmp_path):
    manifest = catalog(small_demo, tmp_path / "catalog.csv", copies=6)  # 96 tracks
    output = tmp_path / "predictions"
    command = [sys.executable, "jobs/tag.py", "--manifest", str(manifest), "--checkpoint", checkpoints["both"],
               "--output", str(output), "--rows-per-file", "4", "--decode-batch-size", "4"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        deadline = time.time() + 180
        while not list(output.glob("*/part-*.parquet")):
            assert job.poll() is None and time.time() < deadline, "tagging ended before writing anything"
            time.sleep(0.05)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    partial = pd.read_parquet(output)  # whatever is there is readable
    assert 0 < len(partial) < 96, "the kill must land mid-run"
    assert partial.track_id.is_unique

    (partition,) = output.glob("model_id=*")
    leftover = partition / ".tmp-killed-writer"  # what a writer killed between write and rename leaves
    leftover.write_bytes(b"half a parquet file")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not leftover.exists() and "stale temporary file" in rerun.stdout
    final = pd.read_parquet(output)
    assert len(final) == 96 and final.track_id.is_unique
    # Ray workers orphaned by the kill may still finish the file they were writing: the
    # rerun sees at least what was readable right after the kill, never a partial file.
    already = int(re.search(r'"already_tagged": (\d+)', rerun.stdout).group(1))
    assert len(partial) <= already < 96


README_SECTION = "## Query the predictions with pandas"


def readme_snippets() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


def test_readme_pandas_snippets_run_against_a_real_output(ray_local, small_demo, checkpoints, tmp_path):
    local = add_bad_tracks(copy_tree(small_demo.parent, tmp_path / "demo") / small_demo.name)
    output = str(tmp_path / "tags")
    run_tagging(quick(str(local), [checkpoints["both"]], output))
    code = readme_snippets()
    assert "read_parquet" in code and "mood_happy" in code
    namespace: dict = {}
    exec(compile(code.replace('"runs/tags"', repr(output)), "README.md", "exec"), namespace)
    assert len(namespace["df"]) == 21
    assert namespace["failures"].to_dict() == {"empty": 1, "missing": 1, "not_audio": 1, "silent": 1, "too_short": 1}
