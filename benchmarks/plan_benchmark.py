"""Planning a catalog tagging run: today's pandas path against the Arrow one, same run.

Planning is what the Ray driver does before any track is tagged: read the catalog, list
the tracks the model set already has in its predictions partition, keep the rest.

``today``  ``mgc.io.manifest.read_manifest`` (pandas, every cell normalised in Python),
           the done ids as a Python ``set`` from the partition's ``track_id`` column,
           ``manifest.loc[~manifest.track_id.isin(done)]`` (what ``run_tagging`` did).
``arrow``  what ``run_tagging`` does now: :func:`mgc.tagging.job.read_validated_catalog`
           (Arrow, validated vectorised) + :func:`mgc.tagging.plan.partition_rows` +
           :func:`mgc.tagging.job.plan` (retryable rows kept to do; an Arrow anti-join).

Data: per size a synthetic Parquet catalog (``track_id`` ``t0000001``, ``uri``
``s3://bucket/audio/000/t0000001.mp3``, ``duration_s``) and one predictions partition of
``--done`` rows (the real predictions schema: ids of every second catalog track, uris,
``tagged_at``, 18 float32 tag columns, lists, ~1% ``error`` rows) in files of 50k rows,
beside a ``.tmp-*`` file and a ``_lease.json`` that are not rows.

Each measurement runs in a fresh interpreter that imports the same modules for both paths;
its peak RSS (VmHWM, reset after the imports) and its RSS after the imports are recorded,
with the wall seconds and the number of tracks to do (which must agree between the paths).
A measurement that runs past ``--timeout`` or dies is recorded as ``timeout``/``failed``.
Claims are the ratios of the two paths in one run (docs/architecture.md, "Quality bar").

Run from the repository root: ``python -m benchmarks.plan_benchmark [--sizes 100000
1000000 5000000] [--done 1000000] [--output plan_bench.json]``. No Ray needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.benchmark import peak_rss_mb, reset_peak_rss, rss_mb
from mgc.io.jsonio import dumps

REPO = Path(__file__).resolve().parents[1]
PATHS = ("today", "arrow")
ROWS_PER_FILE = 50_000
GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
MOODS = ("happy", "sad", "calm", "energetic", "dark", "romantic", "epic", "relaxing")


# --- synthetic data --------------------------------------------------------------------


def track_ids(numbers: np.ndarray, width: int):
    """``t`` + zero-padded numbers, as an Arrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise("t", digits, "")


def track_uris(numbers: np.ndarray, ids):
    """``s3://bucket/audio/<3 digits>/<id>.mp3`` (a thousand tracks a folder)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    folder = pc.utf8_lpad(pc.cast(pa.array((numbers // 1000) % 1000, pa.int64()), pa.string()), 3, "0")
    return pc.binary_join_element_wise("s3://bucket/audio/", folder, "/", ids, ".mp3", "")


def id_width(sizes: list[int], done: int) -> int:
    return max(7, len(str(max([*sizes, 2 * done]))))


def write_catalog(path: Path, size: int, width: int, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    numbers = np.arange(size, dtype=np.int64)
    ids = track_ids(numbers, width)
    durations = np.random.default_rng(seed).uniform(30, 400, size)
    pq.write_table(pa.table({"track_id": ids, "uri": track_uris(numbers, ids), "duration_s": durations}), path)
    return path


def write_partition(folder: Path, done: int, width: int, seed: int = 0) -> Path:
    """``done`` predictions rows (every second catalog track) in files of ROWS_PER_FILE."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mgc.config import TaskSpec
    from mgc.tagging.schema import PredictionSchema

    schema = PredictionSchema({"genre": TaskSpec("multiclass", GENRES), "mood": TaskSpec("multilabel", MOODS)})
    arrow_schema = schema.arrow()
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stamp = np.datetime64("2025-01-01T00:00:00", "us").astype(np.int64)
    for start in range(0, done, ROWS_PER_FILE):
        n = min(ROWS_PER_FILE, done - start)
        numbers = 2 * np.arange(start, start + n, dtype=np.int64)
        ids = track_ids(numbers, width)
        failed = rng.random(n) < 0.01
        genre = np.array(GENRES)[rng.integers(0, len(GENRES), n)]
        columns = {
            "track_id": ids,
            "uri": track_uris(numbers, ids),
            "tagged_at": pa.array(stamp + rng.integers(0, 86_400_000_000, n), pa.timestamp("us", tz="UTC")),
            "duration_s": pa.array(rng.uniform(30, 400, n).astype(np.float32)),
            "n_segments": pa.array(rng.integers(10, 130, n).astype(np.int32)),
            "genre": pa.array(genre),
            "genre_score": pa.array(rng.random(n, dtype=np.float32)),
            "genres": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), pa.array(genre)),
            "moods": pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string())),
            "error": pa.array(np.where(failed, "decode: not an audio file", None).tolist(), pa.string()),
        }
        for task in schema.tasks:
            for name in schema.tag_columns(task):
                columns[name] = pa.array(rng.random(n, dtype=np.float32))
        table = pa.table({field.name: columns[field.name] for field in arrow_schema}).cast(arrow_schema)
        pq.write_table(table, folder / f"part-{start // ROWS_PER_FILE:05d}.parquet")
    (folder / ".tmp-x").write_bytes(b"half a file")
    (folder / "_lease.json").write_text("{}\n")
    return folder


# --- one measurement (a child process) --------------------------------------------------


def measure(path: str, catalog: str, partition: str) -> dict:
    """Plan once by ``path`` (``today`` or ``arrow``) in this process; time and peak RSS."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from mgc.io import storage
    from mgc.config import TagConfig
    from mgc.io.manifest import read_manifest
    from mgc.tagging.job import plan, read_validated_catalog
    from mgc.tagging.plan import partition_rows

    base = rss_mb()
    peak_reset = reset_peak_rss()
    started = time.perf_counter()
    if path == "today":
        manifest = read_manifest(catalog)
        done: set = set()
        if storage.exists(partition):
            filesystem, folder = storage.pyarrow_filesystem(partition)
            dataset = pads.dataset(folder, filesystem=filesystem, format="parquet", ignore_prefixes=[".", "_"])
            done = set(dataset.to_table(columns=["track_id"]).column("track_id").to_pylist())
        todo = manifest.loc[~manifest.track_id.isin(done)]
        rows, done_rows, todo_rows = len(manifest), len(done), len(todo)
    elif path == "arrow":
        table = read_validated_catalog(TagConfig(manifest=catalog))
        done_table = partition_rows(partition)
        todo, _, _ = plan(table, done_table)
        rows, done_rows, todo_rows = table.num_rows, done_table.num_rows, todo.num_rows
    else:
        raise ValueError(f"unknown path {path!r}; use one of {PATHS}")
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    ids = todo["track_id"]  # after the measurement: a check that both paths keep the same tracks
    first_last = [ids.min(), ids.max()] if path == "today" else list(pc.min_max(ids).as_py().values())
    return {"status": "ok", "seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1),
            "rss_after_imports_mb": round(base, 1), "peak_reset": peak_reset,
            "catalog_rows": rows, "done_rows": done_rows, "todo": todo_rows,
            "todo_first_last": [str(x) for x in first_last] if todo_rows else [None, None]}


def run_measurement(path: str, catalog: Path, partition: Path, workdir: Path, timeout: float) -> dict:
    """:func:`measure` in a fresh interpreter; ``timeout``/``failed`` instead of raising."""
    result_path = workdir / f"result-{path}-{time.time_ns()}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    command = [sys.executable, "-m", "benchmarks.plan_benchmark", "--measure", path,
               str(catalog), str(partition), str(result_path)]
    started = time.time()
    try:
        run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": None, "timeout_s": timeout}
    if run.returncode != 0 or not result_path.exists():
        tail = (run.stdout + run.stderr)[-2000:]
        return {"status": "failed", "seconds": None, "returncode": run.returncode, "log_tail": tail,
                "wall_s": round(time.time() - started, 1)}
    return json.loads(result_path.read_text())


# --- the run ----------------------------------------------------------------------------


def ratio(a: dict, b: dict, key: str) -> float | None:
    if a.get("status") != "ok" or b.get("status") != "ok" or not b[key]:
        return None
    return round(a[key] / b[key], 2)


def run_benchmark(sizes: list[int], done: int, timeout: float, workdir: Path) -> dict:
    width = id_width(sizes, done)
    started, load_at_start = time.time(), list(os.getloadavg())  # a shared machine: say how busy it was
    log(f"writing a predictions partition of {done} rows")
    partition = write_partition(workdir / "predictions" / "model_id=bench", done, width)
    rows = []
    for size in sizes:
        catalog = write_catalog(workdir / f"catalog-{size}.parquet", size, width)
        measured = {}
        for path in PATHS:
            log(f"{size} tracks: {path}")
            measured[path] = run_measurement(path, catalog, partition, workdir, timeout)
            log(f"  {describe(measured[path])}")
        today, arrow = measured["today"], measured["arrow"]
        agree = None
        if today["status"] == arrow["status"] == "ok":
            agree = [today[k] for k in ("todo", "todo_first_last")] == [arrow[k] for k in ("todo", "todo_first_last")]
        rows.append({"catalog_rows": size, "done_rows": done, "today": today, "arrow": arrow,
                     "todo_agree": agree, "time_ratio_today_over_arrow": ratio(today, arrow, "seconds"),
                     "memory_ratio_today_over_arrow": ratio(today, arrow, "peak_rss_mb")})
        catalog.unlink()
    return {"benchmark": "plan", "sizes": sizes, "done": done, "timeout_s": timeout, "rows": rows,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "load_average_start": load_at_start,
                        "load_average_end": list(os.getloadavg())},
            "seconds": round(time.time() - started, 1)}


def describe(result: dict) -> str:
    if result["status"] != "ok":
        return result["status"]
    return f"{result['seconds']:.2f} s / {result['peak_rss_mb']:.0f} MB (todo {result['todo']})"


def table(result: dict) -> str:
    lines = ["| Catalog rows | Done rows | To do | Today s / MB | Arrow s / MB | Time ratio | Memory ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        todo = row["arrow"].get("todo", row["today"].get("todo", "?"))
        if row["todo_agree"] is False:
            todo = f"{row['today']['todo']} vs {row['arrow']['todo']} (DISAGREE)"
        cells = [f"{row['catalog_rows']:,}", f"{row['done_rows']:,}", f"{todo:,}" if isinstance(todo, int) else todo,
                 describe_cell(row["today"]), describe_cell(row["arrow"]),
                 times(row["time_ratio_today_over_arrow"]), times(row["memory_ratio_today_over_arrow"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_cell(result: dict) -> str:
    return f"{result['seconds']:.2f} s / {result['peak_rss_mb']:,.0f} MB" if result["status"] == "ok" else result["status"]


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def log(message: str) -> None:
    print(f"[plan-bench] {message}", flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plan_benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 5_000_000], help="catalog sizes")
    p.add_argument("--done", type=int, default=1_000_000, help="rows already in the predictions partition")
    p.add_argument("--output", default="plan_bench.json", help="JSON result file (default: plan_bench.json)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement (default: 600)")
    p.add_argument("--workdir", default=None, help="keep the generated files here (default: a temporary folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="mgc-plan-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_benchmark(args.sizes, args.done, args.timeout, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["table_markdown"] = table(result)
    print(result["table_markdown"], flush=True)
    if args.output:
        Path(args.output).write_text(dumps(result, indent=2) + "\n")
        log(f"wrote {args.output}")
    return 0


def _measure_main(argv: list[str]) -> int:
    path, catalog, partition, out = argv
    Path(out).write_text(dumps(measure(path, catalog, partition)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        sys.exit(_measure_main(sys.argv[2:]))
    sys.exit(main())
