"""The vector index: exact (flat) against IVF-PQ, on synthetic embeddings, same run.

Data: ``n`` unit vectors of ``--dim`` dimensions drawn around 2,000 seeded cluster centres
(real audio embeddings cluster by sound; uniform random vectors would have no neighbours
worth finding), and 1,000 queries from the same mixture that are not in the index.

Per size and kind, in a fresh interpreter (so its peak RSS is its own): build time, peak
RSS growth over the interpreter with the vectors already in memory, and query latency
p50/p99 (one query per call, as `mgc similar` asks), through the library's own
:func:`mgc.catalog.vectors.new_index` / :func:`mgc.catalog.vectors.search`. Recall@10 of
IVF-PQ is measured against the flat index's answers for the same queries.

Run from the repository root: ``python -m benchmarks.index_benchmark [--sizes 10000
100000 1000000] [--output index_bench.json]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.benchmark import peak_rss_mb, reset_peak_rss, rss_mb
from mgc.catalog import vectors
from mgc.config import IndexConfig
from mgc.io.jsonio import dumps

CENTRES = 2000
QUERIES = 1000
LATENCY_QUERIES = 300
K = 10


def clustered(n: int, dim: int, seed: int, spread: float = 0.6) -> np.ndarray:
    """``n`` unit vectors around ``CENTRES`` fixed centres (the centres depend on ``dim`` only)."""
    centres = vectors.normalise(np.random.default_rng(1234).standard_normal((CENTRES, dim), dtype=np.float32))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        which = rng.integers(0, CENTRES, stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        out[start:stop] = centres[which] + noise
    return vectors.normalise(out)


def measure(kind: str, n: int, dim: int, answers_path: str) -> dict:
    """Build ``kind`` over ``n`` vectors, time one-query searches; save the top-k positions."""
    data = clustered(n, dim, seed=1)
    queries = clustered(QUERIES, dim, seed=2)
    cfg = IndexConfig(kind=kind)
    before = rss_mb()
    reset_peak_rss()
    started = time.perf_counter()
    sample = data[np.random.default_rng(0).choice(n, min(n, cfg.train_size), replace=False)] if kind != vectors.FLAT else None
    index, layout = vectors.new_index(kind, dim, cfg, sample, count=n)
    index.add(data)
    build_s = time.perf_counter() - started
    vectors.set_search_params(index, layout, cfg)
    _, positions = vectors.search(index, queries, K)
    np.save(answers_path, positions)
    latencies = []
    for query in queries[:LATENCY_QUERIES]:
        tick = time.perf_counter()
        vectors.search(index, query[None, :], K)
        latencies.append((time.perf_counter() - tick) * 1000)
    batch_tick = time.perf_counter()
    vectors.search(index, queries, K)
    batch_s = time.perf_counter() - batch_tick
    return {"kind": kind, "n": n, "dim": dim, "layout": layout.to_dict(), "build_s": round(build_s, 2),
            "peak_rss_growth_mb": round(peak_rss_mb() - before, 1), "index_bytes": len(vectors.to_bytes(index)),
            "query_p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "query_p99_ms": round(float(np.percentile(latencies, 99)), 3),
            "batch_queries_per_s": round(QUERIES / batch_s, 1)}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def run_one(kind: str, n: int, dim: int, answers: Path, timeout: float) -> dict:
    code = ("import json, sys; from benchmarks.index_benchmark import measure; "
            f"print(json.dumps(measure({kind!r}, {n}, {dim}, {str(answers)!r})))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        return {"kind": kind, "n": n, "status": "timeout"}
    if done.returncode != 0:
        return {"kind": kind, "n": n, "status": "failed", "stderr": done.stderr[-2000:]}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "status": "ok"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--output", default="index_bench.json")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            results = {}
            for kind in vectors.KINDS:
                answers = Path(tmp) / f"{kind}-{n}.npy"
                results[kind] = run_one(kind, n, args.dim, answers, args.timeout)
                print(json.dumps(results[kind]), flush=True)
            if all(r["status"] == "ok" for r in results.values()):
                truth = np.load(Path(tmp) / f"{vectors.FLAT}-{n}.npy")
                results[vectors.IVFPQ]["recall_at_10"] = round(
                    recall_at_k(np.load(Path(tmp) / f"{vectors.IVFPQ}-{n}.npy"), truth), 4)
                results[vectors.IVFPQ]["p50_speedup_vs_flat"] = round(
                    results[vectors.FLAT]["query_p50_ms"] / results[vectors.IVFPQ]["query_p50_ms"], 2)
            rows.extend(results.values())
    out = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
           "queries": QUERIES, "k": K, "rows": rows}
    Path(args.output).write_text(dumps(out, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
