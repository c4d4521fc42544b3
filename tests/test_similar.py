"""The vector index (`jobs/index.py`), `mgc similar`, and the catalog report, on predictions
partitions written with the real predictions schema (no Ray: they read Parquet)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from mgc.catalog import vectors
from mgc.catalog.index import IndexError_, build_index, load_index
from mgc.catalog.report import write_report
from mgc.catalog.similar import similar, similar_to_track
from mgc.cli import main
from mgc.config import IndexConfig, ReportConfig, TaskSpec
from mgc.io import storage
from mgc.tagging.partition import partition_uri
from mgc.tagging.schema import PredictionSchema, build_table

GENRES = ("ambient", "jazz", "rock", "techno")
MOODS = ("calm", "dark", "happy")
TASKS = {"genre": TaskSpec("multiclass", GENRES), "mood": TaskSpec("multilabel", MOODS)}
DIM = 32


def write_partition(root: str, model_id: str, start: int, count: int, *, failed: int = 0, seed: int = 0,
                    when: datetime | None = None, subclusters: int = 0) -> dict[str, str]:
    """``count`` scored tracks (embeddings clustered by genre, and within a genre around
    ``subclusters`` sounds, as real embeddings are) and ``failed`` error rows as one
    predictions file; returns each scored track's genre."""
    rng = np.random.default_rng(seed)
    centres = vectors.normalise(np.random.default_rng(99).standard_normal((len(GENRES), DIM)))
    genre = rng.integers(0, len(GENRES), count)
    embeddings = centres[genre] + 0.15 * rng.standard_normal((count, DIM)).astype(np.float32)
    if subclusters:
        sounds = np.random.default_rng(98).standard_normal((subclusters, DIM)).astype(np.float32)
        embeddings = centres[genre] + 0.3 * sounds[rng.integers(0, subclusters, count)] \
            + 0.03 * rng.standard_normal((count, DIM)).astype(np.float32)
    genre_probs = np.full((count, len(GENRES)), 0.05, np.float32)
    genre_probs[np.arange(count), genre] = 0.85
    mood_probs = rng.uniform(0, 1, (count, len(MOODS))).astype(np.float32)
    ids = [f"t{start + i:06d}" for i in range(count)] + [f"bad{start + i:06d}" for i in range(failed)]
    errors = [None] * count + ["corrupt: not a FLAC stream"] * (failed // 2) + ["missing: no such file"] * (failed - failed // 2)
    table = build_table(PredictionSchema(TASKS, embedding=True), ids, [f"s3://cat/{t}.mp3" for t in ids],
                        [30.0] * len(ids), [3] * count + [0] * failed, errors,
                        {"genre": genre_probs, "mood": mood_probs}, embeddings, tagged_at=when)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(storage.join(partition_uri(root, model_id), f"part-{start:06d}.parquet"), sink.getvalue())
    return {ids[i]: GENRES[g] for i, g in enumerate(genre)}


def test_exact_index_finds_same_genre_neighbours_adds_only_new_rows_and_cli_answers(tmp_path, capsys):
    preds, out = str(tmp_path / "preds"), str(tmp_path / "index")
    genres = write_partition(preds, "cnn-abc", 0, 300, failed=6)
    first = build_index(IndexConfig(predictions=preds, output=out, batch_rows=64))
    assert (first.kind, first.count, first.added, first.rebuilt) == ("flat", 300, 300, True)

    index = load_index(out)
    result = similar_to_track(index, "t000007", k=5)
    assert [n.rank for n in result.neighbours] == [1, 2, 3, 4, 5]
    assert "t000007" not in [n.track_id for n in result.neighbours], "the query is not its own neighbour"
    assert all(genres[n.track_id] == genres["t000007"] for n in result.neighbours)
    assert all(n.genre == genres[n.track_id] and 0 <= n.distance < 0.5 for n in result.neighbours)
    distances = [n.distance for n in result.neighbours]
    assert distances == sorted(distances)

    # New tracks tagged since: the rerun adds those and only those; a third run has nothing to do.
    write_partition(preds, "cnn-abc", 300, 50, seed=1)
    again = build_index(IndexConfig(predictions=preds, output=out))
    assert (again.count, again.added, again.rebuilt) == (350, 50, False)
    assert build_index(IndexConfig(predictions=preds, output=out)).added == 0
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "index.json", "tracks-350.parquet", "vectors-350.faiss"], "the superseded files are removed"

    capsys.readouterr()  # the builds' log lines (when a test before configured mgc's log)
    assert main(["similar", "t000310", "--index", out, "--top-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model_id"] == "cnn-abc" and len(answer["neighbours"]) == 3
    own = load_index(out).tracks.to_pandas().set_index("track_id").loc["t000310", "genre"]
    assert {n["genre"] for n in answer["neighbours"]} == {own}
    plot = tmp_path / "profiles.png"
    assert main(["similar", "t000001", "--index", out, "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "tracks like t000001" in table and "distance" in table
    assert plot.read_bytes()[:4] == b"\x89PNG"

    # Clear errors: an unknown track, a failed track (never indexed), another model's partition.
    assert main(["similar", "nope", "--index", out]) == 2
    assert "track 'nope' is not in the index" in capsys.readouterr().err
    with pytest.raises(IndexError_, match="not in the index"):
        similar(index, "bad000001")
    write_partition(preds, "resnet-def", 0, 10)
    with pytest.raises(ValueError, match="2 model_id partitions.*--model-id"):
        build_index(IndexConfig(predictions=preds, output=out))
    with pytest.raises(IndexError_, match="built for model_id cnn-abc"):
        build_index(IndexConfig(predictions=preds, output=out, model_id="resnet-def"))
    with pytest.raises(IndexError_, match="records no checkpoints"):
        similar(index, str(REPO / "README.md"))


def test_ivfpq_above_the_threshold_keeps_recall_and_lives_on_s3(tmp_path, s3_bucket):
    preds, out = f"s3://{s3_bucket}/preds", f"s3://{s3_bucket}/index"
    write_partition(preds, "cnn-abc", 0, 3000, subclusters=300)
    cfg = IndexConfig(predictions=preds, output=out, exact_below=1000, train_size=2000, batch_rows=500)
    built = build_index(cfg)
    assert built.kind == "ivfpq" and built.count == 3000
    approx = load_index(out, cfg)
    build_index(IndexConfig(predictions=preds, output=str(tmp_path / "flat")))
    exact = load_index(str(tmp_path / "flat"))
    assert exact.meta.layout.kind == "flat"
    queries = np.stack([vectors.reconstruct(exact.index, exact.meta.layout, p) for p in range(0, 3000, 30)])
    _, truth = vectors.search(exact.index, queries, 10)
    _, found = vectors.search(approx.index, queries, 10)
    truth_ids = exact.tracks.column("track_id").to_numpy(zero_copy_only=False)[truth]
    found_ids = approx.tracks.column("track_id").to_numpy(zero_copy_only=False)[found]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found_ids, truth_ids)])
    assert recall >= 0.9, recall

    # Growth past rebuild_growth x what the lists were laid out for: rebuilt, not extended.
    write_partition(preds, "cnn-abc", 3000, 1000, seed=3, subclusters=300)
    grown = build_index(IndexConfig(**{**cfg.__dict__, "rebuild_growth": 1.2}))
    assert grown.rebuilt and grown.count == 4000


def test_catalog_report_counts_genres_moods_failures_and_days(tmp_path):
    preds = str(tmp_path / "preds")
    day = datetime(2026, 11, 1, 3, tzinfo=timezone.utc)
    first = write_partition(preds, "cnn-abc", 0, 120, failed=4, when=day)
    second = write_partition(preds, "cnn-abc", 120, 80, failed=2, seed=5, when=day + timedelta(days=5))
    done = write_report(ReportConfig(predictions=preds, output=str(tmp_path / "report"), batch_rows=50))
    assert (done.rows, done.failed) == (206, 6)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    expected = {}
    for genre in [*first.values(), *second.values()]:
        expected[genre] = expected.get(genre, 0) + 1
    assert summary["genres"] == expected
    assert summary["failures"] == {"corrupt": 3, "missing": 3}
    assert sum(summary["genre_score_hist"]) == 200 and sum(summary["top_mood_score_hist"]) == 200
    pairs = sum(row["tracks"] for row in summary["mood_genre"])
    assert pairs == sum(n for mood, n in summary["moods"].items() if mood != "(none)")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "# Catalog report: model_id cnn-abc" in report and "| corrupt | 3 |" in report
    for png in ("genres", "mood_genre", "scores", "failures", "tagged_over_time"):
        assert (tmp_path / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png


def test_jobs_run_from_the_command_line(tmp_path):
    preds = str(tmp_path / "preds")
    write_partition(preds, "cnn-abc", 0, 40, failed=1)
    run = subprocess.run([sys.executable, "jobs/index.py", "--predictions", preds, "--output", str(tmp_path / "ix")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout[run.stdout.index("{"):])["count"] == 40
    run = subprocess.run([sys.executable, "jobs/catalog_report.py", "--predictions", preds, "--output",
                          str(tmp_path / "rep")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout[run.stdout.index("{"):])["rows"] == 41
    run = subprocess.run([sys.executable, "jobs/index.py", "--predictions", str(tmp_path / "none"), "--output",
                          str(tmp_path / "ix2")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "0 model_id partitions" in run.stderr


def test_a_run_folder_given_as_checkpoint_names_its_checkpoint_folder(tmp_path):
    from mgc.models.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
    from mgc.config import AudioConfig
    from mgc.models.zoo import build_model

    run = tmp_path / "run"
    save_checkpoint(run / "checkpoint", build_model("cnn", {"genre": 4}), CheckpointMeta("cnn", AudioConfig(),
                                                                                           {"genre": TASKS["genre"]}))
    with pytest.raises(CheckpointError, match=f"training run folder, not a checkpoint: use {run / 'checkpoint'}"):
        load_checkpoint(run)
    assert load_checkpoint(run / "checkpoint").meta.arch == "cnn"
