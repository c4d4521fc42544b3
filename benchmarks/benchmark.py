"""Performance figures (README "Performance"): mgc against the per-file librosa loop, same run.

Why ratios: this machine is shared and its timings are noisy, so every claim is a ratio
of two measurements taken in the same run on the same files - never an absolute number
compared across runs. The baseline is the honest way the seed projects tag audio:

    y, sr = librosa.load(path, sr=22050, mono=True)                  # per file
    mels = [power_to_db(melspectrogram(y=w, ...)) for w in windows]  # per 3 s window
    probs = model(mels).mean(0)                                      # per file

Phases (each in a fresh subprocess, so each has its own threads and peak memory; the
parent samples the RSS and CPU time of every phase's whole process tree, Ray included):

``decode``   decode + log-mel on one core (numpy/BLAS/torch limited to 1 thread): the
             librosa loop and mgc's decoder (:class:`mgc.stages.decode.DecodeMel`, the Ray actors'
             callable) alternate file by file, so load from other users hits both alike;
             also the largest |dB| difference between their log-mels.
``scaling``  local Ray with N CPUs: the Ray Data decode stage (:func:`mgc.stages.decode.track_dataset`
             + ``materialize``) with 1 and then N decode actors, in rounds. Each actor's
             rate runs from its first batch's start to its last batch's end (its own
             timestamps), summed over the actors: actor start-up is excluded, the
             competition for the cores is not (wall time including start-up is reported too).
``tag``      :func:`mgc.tagging.job.run_tagging` (what ``jobs/tag.py`` runs) per architecture
             on a catalog of the same files; throughput once every actor has written a
             file (catalog scale), and including start-up.
``loop``     the per-file tagging loop with the same checkpoint, with torch's and BLAS's
             default threads (one per core) and with 1 (the faster, probed on the first
             tracks, is the baseline).
             ``tag`` and ``loop`` alternate in rounds and the best of each is kept.
``train``    optimizer steps of each architecture on random mels (one process; CPU, and
             CUDA when present).

Run it as ``python jobs/benchmark.py [--quick] [--output bench.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from mgc.io.jsonio import dumps

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GTZAN = REPO.parent / "shared" / "data" / "gtzan-mini"
HEADS = {"genre": 10, "mood": 8}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1", "VECLIB_MAXIMUM_THREADS": "1"}


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; ``--quick`` shrinks every count so the whole run takes ~1 minute."""

    quick: bool = False
    output: str | None = "bench.json"
    gtzan: str = str(DEFAULT_GTZAN)
    # Real clips (gtzan-mini: 22.05 kHz mono WAV, 15-20 s) and generated 30 s 44.1 kHz
    # stereo MP3s; the decode and tagging phases use all of them.
    real_tracks: int = 40
    generated_tracks: int = 24
    # Passes over the files in the single-core decode phase (interleaved per file).
    decode_repeats: int = 2
    # The scaling phase lists every file this many times (more work per actor start-up).
    scaling_copies: int = 4
    # Times the 1-actor and N-actor scaling runs are repeated (alternating); best of each.
    scaling_rounds: int = 3
    # run_tagging's catalog lists every file this many times (the per-file loop, whose
    # rate does not depend on the catalog's size, tags each file once).
    tagging_copies: int = 3
    # run_tagging and the loop alternate this many times; the best of each is kept.
    tagging_rounds: int = 2
    # torch threads the per-file loop is run with (each; the faster is the baseline).
    # None: the machine's CPU count (torch's default) and 1.
    loop_threads: tuple[int, ...] | None = None
    # Tracks the loop is timed on with each thread count before the full run.
    loop_probe_tracks: int = 16
    archs: tuple[str, ...] = ("resnet18", "cnn")
    train_batch: int = 32
    train_steps: int = 3
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    workdir: str | None = None
    keep_workdir: bool = False

    @classmethod
    def quick_config(cls, **overrides: Any) -> "BenchConfig":
        base = dict(quick=True, real_tracks=4, generated_tracks=2, decode_repeats=1, scaling_copies=2,
                    scaling_rounds=1, tagging_copies=2, tagging_rounds=1, archs=("cnn",), train_batch=4,
                    train_steps=1,
                    loop_threads=(1,), loop_probe_tracks=2)
        return cls(**{**base, **overrides})


# --- test data ---------------------------------------------------------------------


def generate_mp3(source: Path, out: Path, seconds: float = 30.0, sr: int = 44100, seed: int = 0) -> Path:
    """A 30 s 44.1 kHz stereo MP3 made from a real clip (upsampled, looped to length, the
    right channel a delayed, quieter copy plus a little noise)."""
    import soundfile as sf
    import soxr

    y, sr_in = sf.read(source, dtype="float32", always_2d=True)
    mono = soxr.resample(y.mean(axis=1), sr_in, sr)
    n = int(seconds * sr)
    mono = np.resize(mono, n).astype(np.float32)
    right = 0.8 * np.roll(mono, int(0.007 * sr)) + 0.002 * np.random.default_rng(seed).standard_normal(n)
    stereo = np.stack([mono, right.astype(np.float32)], axis=1)
    stereo *= 0.9 / max(1e-6, float(np.abs(stereo).max()))
    sf.write(out, stereo, sr, format="MP3")
    return out


def prepare_files(cfg: BenchConfig, workdir: Path) -> list[str]:
    """The benchmark's audio files: real clips and generated MP3s, interleaved."""
    clips = sorted(Path(cfg.gtzan).glob("*/*.wav"))
    if not clips:
        raise FileNotFoundError(f"no gtzan-mini clips under {cfg.gtzan}")
    by_genre: dict[str, list[Path]] = {}
    for clip in clips:
        by_genre.setdefault(clip.parent.name, []).append(clip)
    # Round-robin over genres so a small selection still spans them.
    ordered = [c for group in zip(*by_genre.values()) for c in group] or clips
    real = [ordered[i % len(ordered)] for i in range(cfg.real_tracks)]
    gen_dir = workdir / "generated"
    gen_dir.mkdir(parents=True, exist_ok=True)
    generated = [generate_mp3(ordered[(7 * i + 3) % len(ordered)], gen_dir / f"gen{i:03d}.mp3", seed=i)
                 for i in range(cfg.generated_tracks)]
    files: list[str] = []
    for i in range(max(len(real), len(generated))):
        files += [str(real[i])] if i < len(real) else []
        files += [str(generated[i])] if i < len(generated) else []
    return files


def write_catalog(files: list[str], copies: int, path: Path) -> Path:
    import pandas as pd

    rows = [{"track_id": f"t{c}-{i:04d}", "uri": uri} for c in range(copies) for i, uri in enumerate(files)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_checkpoints(archs: Iterable[str], root: Path) -> dict[str, str]:
    """An untrained checkpoint per architecture (throughput does not depend on the weights)."""
    import torch

    from mgc.models.checkpoint import CheckpointMeta, save_checkpoint
    from mgc.config import ARCH_AUDIO, AudioConfig, TaskSpec
    from mgc.models.zoo import build_model

    tasks = {"genre": TaskSpec("multiclass", tuple(f"g{i}" for i in range(HEADS["genre"]))),
             "mood": TaskSpec("multilabel", tuple(f"m{i}" for i in range(HEADS["mood"])))}
    out = {}
    for arch in archs:
        torch.manual_seed(0)
        model = build_model(arch, {t: len(s.labels) for t, s in tasks.items()}).eval()
        audio = ARCH_AUDIO.get(arch, AudioConfig())  # a pretrained audio arch's own front end
        out[arch] = str(save_checkpoint(root / arch, model, CheckpointMeta(arch, audio, tasks, name=arch)))
    return out


# --- the baseline: one file at a time with librosa ---------------------------------------


def librosa_log_mels(path: str, cfg) -> np.ndarray:
    """The per-file way: ``librosa.load`` then melspectrogram + power_to_db per 3 s window
    (for a front end librosa lacks, EfficientAT's: mgc's own, one window at a time)."""
    import librosa

    from mgc.config import LIBROSA_DB
    from mgc.audio.logmel import log_mel

    y, sr = librosa.load(path, sr=cfg.sample_rate, mono=True)
    width = cfg.window_samples
    if cfg.frontend != LIBROSA_DB:
        mels = [log_mel(y[k * width : (k + 1) * width], cfg) for k in range(len(y) // width)]
        return np.stack(mels) if mels else np.zeros((0, cfg.n_mels, cfg.frames_per_window), np.float32)
    mels = [
        librosa.power_to_db(
            librosa.feature.melspectrogram(y=y[k * width : (k + 1) * width], sr=sr, n_fft=cfg.n_fft,
                                           hop_length=cfg.hop_length, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                           fmax=cfg.fmax, power=2.0),
            ref=1.0, amin=cfg.amin, top_db=cfg.top_db)
        for k in range(len(y) // width)
    ]
    return np.stack(mels).astype(np.float32) if mels else np.zeros((0, cfg.n_mels, cfg.frames_per_window), np.float32)


# --- memory -----------------------------------------------------------------------------


def _status_kb(pid: int | str, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            match = re.search(field_name + r":\s+(\d+)", handle.read())
        return int(match.group(1)) if match else 0
    except OSError:
        return 0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def rss_mb(pid: int | str = "self") -> float:
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak RSS since start or the last :func:`reset_peak_rss` (VmHWM). Not ``ru_maxrss``:
    on Linux a child inherits that from its parent's memory at fork time."""
    return _status_kb(pid, "VmHWM") / 1024


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                kids += [int(k) for k in handle.read().split()]
        except OSError:
            continue
    return kids


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    seen: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += _children(pid)
    return seen


def tree_rss_mb(root: int) -> float:
    """RSS summed over ``root`` and all its descendants (shared pages, e.g. Ray's object
    store, count in every process that maps them: an upper bound)."""
    return sum(rss_mb(pid) for pid in tree_pids(root))


class TreeSampler:
    """Samples a process tree in a background thread: total RSS and each process's CPU time."""

    def __init__(self, root: int, interval_s: float = 0.25) -> None:
        self.root, self.interval_s = root, interval_s
        self.samples: list[tuple[float, float, dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree_pids(self.root)
            self.samples.append((time.time(), sum(rss_mb(p) for p in pids), {p: _cpu_seconds(p) for p in pids}))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = -math.inf, end: float = math.inf) -> float:
        inside = [mb for t, mb, _ in self.samples if start <= t <= end]
        return max(inside) if inside else float("nan")

    def cpu_seconds(self, start: float, end: float) -> float:
        """CPU seconds the whole tree used between ``start`` and ``end`` (processes that
        end inside the window count up to their last sample)."""
        before = [cpu for t, _, cpu in self.samples if t <= start]
        base = before[-1] if before else {}
        last: dict[int, float] = {}
        for t, _, cpu in self.samples:
            if start < t <= end:
                last.update(cpu)
        return sum(max(0.0, c - base.get(pid, 0.0)) for pid, c in last.items())


# --- phase: single-core decode + log-mel ----------------------------------------------


def phase_decode(spec: dict) -> dict:
    from mgc.config import AudioConfig
    from mgc.stages.decode import DecodeMel

    cfg = AudioConfig()
    files = spec["files"]
    decoder = DecodeMel(cfg.to_dict())

    def mgc_one(path: str) -> np.ndarray:
        values, _, error = decoder.decode(path)
        if error:
            raise RuntimeError(f"{path}: {error}")
        return values

    def librosa_one(path: str) -> np.ndarray:
        return librosa_log_mels(path, cfg)

    # Warm-up: imports, FFT plans, filterbank caches, numba JIT in librosa.
    librosa_one(files[0])
    mgc_one(files[0])

    # Agreement: the largest |dB| difference over every window of every file.
    max_db = 0.0
    windows = 0
    for path in files:
        a, b = librosa_one(path), mgc_one(path)
        if a.shape != b.shape:
            raise AssertionError(f"{path}: librosa {a.shape} vs mgc {b.shape}")
        max_db = max(max_db, float(np.abs(a - b).max()) if a.size else 0.0)
        windows += len(a)

    # Timing: alternate file by file (and which goes first), best-effort fair under load.
    wall = {"librosa": 0.0, "mgc": 0.0}
    cpu = {"librosa": 0.0, "mgc": 0.0}
    for repeat in range(spec["repeats"]):
        for i, path in enumerate(files):
            order = (("librosa", librosa_one), ("mgc", mgc_one))
            for name, fn in order if (i + repeat) % 2 == 0 else order[::-1]:
                started, cpu_started = time.perf_counter(), time.process_time()
                fn(path)
                wall[name] += time.perf_counter() - started
                cpu[name] += time.process_time() - cpu_started

    # Peak memory of each, one pass each (VmHWM reset in between).
    memory = {}
    for name, fn in (("librosa", librosa_one), ("mgc", mgc_one)):
        base = rss_mb()
        reset_peak_rss()
        for path in files:
            fn(path)
        memory[name] = {"peak_rss_mb": peak_rss_mb(), "growth_mb": peak_rss_mb() - base}

    n = len(files) * spec["repeats"]
    return {
        "tracks": len(files), "windows": windows, "repeats": spec["repeats"],
        "librosa_tracks_per_s": n / wall["librosa"], "mgc_tracks_per_s": n / wall["mgc"],
        "librosa_tracks_per_cpu_s": n / cpu["librosa"], "mgc_tracks_per_cpu_s": n / cpu["mgc"],
        "max_abs_db_diff": max_db, "memory": memory,
    }


# --- phase: Ray (decode scaling, run_tagging) --------------------------------------------


def _timed_decoder():
    """:class:`mgc.stages.decode.DecodeMel` that also reports when each batch started and ended."""
    from mgc.stages.decode import DecodeMel

    class TimedDecodeMel(DecodeMel):
        def __call__(self, batch):
            started = time.time()
            out = super().__call__(batch)
            n = len(batch["uri"])
            out["bench_t0"] = np.full(n, started)
            out["bench_t1"] = np.full(n, time.time())
            out["bench_pid"] = np.full(n, os.getpid())
            return out

    return TimedDecodeMel


def _decode_run(table, actors: int) -> dict:
    from mgc.config import AudioConfig, DataConfig
    from mgc.stages.decode import track_dataset

    started = time.time()
    dataset = track_dataset(table, AudioConfig(), DataConfig(decode_concurrency=actors), decoder=_timed_decoder())
    done = dataset.materialize()
    wall = time.time() - started
    stamps = done.select_columns(["bench_t0", "bench_t1", "bench_pid", "error"]).to_pandas()
    errors = int(stamps["error"].map(lambda e: isinstance(e, str)).sum())
    # Each actor's own rate, from its first batch's start to its last batch's end: start-up
    # (which differs per actor) is excluded, the competition for the cores is not.
    per_actor = stamps.groupby("bench_pid").agg(t0=("bench_t0", "min"), t1=("bench_t1", "max"),
                                                 n=("bench_t0", "size"))
    rate = float((per_actor.n / (per_actor.t1 - per_actor.t0).clip(lower=1e-9)).sum())
    return {
        "actors": actors, "tracks": len(stamps), "errors": errors, "wall_s": wall,
        "window_s": float(stamps.bench_t1.max() - stamps.bench_t0.min()),
        "tracks_per_s": rate, "actor_pids": len(per_actor), "start": started, "end": time.time(),
        "actor_start_spread_s": float(per_actor.t0.max() - per_actor.t0.min()),
    }


def _files_by_time(output: Path) -> list[tuple[float, int]]:
    """``(tagged_at, rows)`` of every predictions file, oldest first (one file per actor call)."""
    import pyarrow.parquet as pq

    out = []
    for path in output.glob("*/part-*.parquet"):
        stamps = pq.read_table(path, columns=["tagged_at"]).column("tagged_at").to_pylist()
        if stamps:
            out.append((stamps[0].timestamp(), len(stamps)))
    return sorted(out)


def _steady_rate(files: list[tuple[float, int]], actors: int) -> float:
    """Tracks/s once every actor is running: from the end of the ``actors``-th file (by then
    each actor has finished a call, start-up behind it) to the last file."""
    if len(files) <= actors:
        return float("nan")
    start = files[actors - 1][0]
    return sum(rows for _, rows in files[actors:]) / max(1e-9, files[-1][0] - start)


def _init_ray(cpus: int) -> None:
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)


def _steady_cpu_rate(files: list[tuple[float, int]], actors: int, sampler: "TreeSampler") -> float:
    """Tracks per CPU-second of the whole Ray process tree, over the same window as
    :func:`_steady_rate` (start-up excluded, Ray's own processes included)."""
    if len(files) <= actors:
        return float("nan")
    cpu = sampler.cpu_seconds(files[actors - 1][0], files[-1][0])
    return sum(rows for _, rows in files[actors:]) / cpu if cpu > 0 else float("nan")


def phase_scaling(spec: dict) -> dict:
    """The decode stage's scaling runs; then, in the same Ray session, the first ``tag``
    round when ``spec["tag"]`` is given (one Ray start-up fewer)."""
    import pandas as pd
    import ray

    _init_ray(spec["cpus"])
    try:
        table = pd.read_csv(spec["scaling_catalog"], dtype=str)
        runs = []
        for _ in range(spec["rounds"]):
            for actors in sorted({1, spec["cpus"]}):
                # Let Ray settle first: after a run it starts replacement idle workers,
                # whose imports would compete with the next run's actors.
                time.sleep(spec.get("settle_s", 0.0))
                runs.append(_decode_run(table, actors))
        tagging = _tag_all(spec["tag"]) if spec.get("tag") else {}
    finally:
        ray.shutdown()
    return {"runs": runs, "tagging": tagging}


def phase_tag(spec: dict) -> dict:
    import ray

    _init_ray(spec["cpus"])
    try:
        return {"tagging": _tag_all(spec)}
    finally:
        ray.shutdown()


def _tag_all(spec: dict) -> dict:
    from mgc.config import TagConfig
    from mgc.tagging.job import run_tagging

    tagging = {}
    for arch, checkpoint in spec["checkpoints"].items():
        output = Path(spec["workdir"]) / f"tags-{arch}-{spec['round']}"
        shutil.rmtree(output, ignore_errors=True)
        cfg = TagConfig(manifest=spec["tagging_catalog"], checkpoint=(checkpoint,), output=str(output),
                        **({"rows_per_file": spec["rows_per_file"]} if spec.get("rows_per_file") else {}))
        started = time.time()
        summary = run_tagging(cfg)
        ended = time.time()
        files = _files_by_time(output)
        tagging[arch] = {"tracks": summary.tagged + sum(summary.failed.values()), "failed": summary.failed,
                         "seconds": summary.seconds, "output": str(output), "start": started, "end": ended,
                         "first_file_s": (files[0][0] - started) if files else float("nan"),
                         "steady_tracks_per_s": _steady_rate(files, spec["cpus"]), "files": files}
    return tagging


# --- phase: the per-file tagging loop -----------------------------------------------------


def phase_loop(spec: dict) -> dict:
    """The per-file loop over the tagging catalog with the faster of the thread counts
    (probed on the first tracks: torch's default of one thread per core can be several
    times slower than one thread when other processes load the machine)."""
    import pandas as pd
    import torch

    from mgc.models.checkpoint import load_checkpoint
    from mgc.models.zoo import probabilities

    catalog = pd.read_csv(spec["tagging_catalog"], dtype=str)
    load_started = time.perf_counter()
    loaded = load_checkpoint(spec["checkpoint"])  # model loading counts, as mgc's actors' does
    load_s = time.perf_counter() - load_started
    cfg, model = loaded.meta.audio, loaded.model

    def tag(rows: Iterable[tuple[str, str]]) -> list[dict]:
        out = []
        with torch.inference_mode():
            for track_id, uri in rows:
                logits = model(torch.from_numpy(librosa_log_mels(uri, cfg)))
                row = {"track_id": track_id}
                for task, task_spec in loaded.meta.tasks.items():
                    probs = probabilities(logits[task], task_spec.type).mean(dim=0).numpy()
                    row.update({f"{task}_{label}": float(p) for label, p in zip(task_spec.labels, probs)})
                out.append(row)
        return out

    pairs = list(zip(catalog.track_id, catalog.uri))[: spec.get("tracks") or None]
    probe = pairs[: spec["probe_tracks"]]
    tag(probe[:1])  # warm-up
    def threads_limited(threads: int):
        """torch and numpy's BLAS (librosa's mel matmul) both at ``threads``."""
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        return threadpool_limits(threads)

    probe_rates, probe_cpu = {}, {}
    for threads in spec["threads"]:
        with threads_limited(threads):
            started, cpu_started = time.perf_counter(), time.process_time()
            tag(probe)
            probe_rates[threads] = len(probe) / (time.perf_counter() - started)
            probe_cpu[threads] = len(probe) / max(1e-9, time.process_time() - cpu_started)
    best = max(probe_rates, key=probe_rates.get)
    reset_peak_rss()
    with threads_limited(best):
        started, cpu_started = time.perf_counter(), time.process_time()
        rows = tag(pairs)
        seconds = time.perf_counter() - started + load_s
        cpu_seconds = time.process_time() - cpu_started
    pd.DataFrame(rows).to_csv(Path(spec["workdir"]) / f"loop-{spec['arch']}.csv", index=False)  # same each round
    return {"tracks": len(rows), "seconds": seconds, "cpu_seconds": cpu_seconds, "threads": best,
            "model_load_s": load_s, "probe_tracks": len(probe),
            "probe_tracks_per_s": {str(t): r for t, r in probe_rates.items()},
            "probe_tracks_per_cpu_s": {str(t): r for t, r in probe_cpu.items()},
            "peak_rss_mb": peak_rss_mb()}


# --- phase: training throughput ---------------------------------------------------------


def phase_train(spec: dict) -> dict:
    import torch

    from mgc.config import ARCH_AUDIO, AudioConfig
    from mgc.models.zoo import build_model

    results = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for arch in spec["archs"]:
            torch.manual_seed(0)
            model = build_model(arch, HEADS).to(device).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            batch = spec["batch"]
            audio = ARCH_AUDIO.get(arch, AudioConfig())  # its own front end's window shape
            x = torch.randn(batch, audio.n_mels, audio.frames_per_window, device=device) * 20 - 40
            genre = torch.randint(0, HEADS["genre"], (batch,), device=device)
            mood = (torch.rand(batch, HEADS["mood"], device=device) > 0.5).float()

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits["genre"], genre)
                loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(logits["mood"], mood)
                loss.backward()
                opt.step()

            step()  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            reset_peak_rss()
            started = time.perf_counter()
            for _ in range(spec["steps"]):
                step()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            results[f"{arch}_{device}"] = {
                "samples_per_s": spec["steps"] * batch / seconds, "batch": batch, "steps": spec["steps"],
                "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(),
            }
    return {"runs": results, "note": "one process, random 3 s mels of each arch's front end ([batch, 128, 130]; "
                                "EfficientAT archs [batch, 128, 300]), AdamW, genre + mood heads"}


PHASES: dict[str, Callable[[dict], dict]] = {
    "decode": phase_decode, "scaling": phase_scaling, "tag": phase_tag, "loop": phase_loop, "train": phase_train,
}


# --- orchestration ----------------------------------------------------------------------


def run_phase(name: str, spec: dict, workdir: Path, env: dict[str, str] | None = None,
              timeout: float = 900) -> tuple[dict, TreeSampler]:
    """Run one phase in a fresh interpreter; return its result and the RSS samples of its tree."""
    spec_path = workdir / f"spec-{name}-{time.time_ns()}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(spec))
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO), child_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    child_env.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    command = [sys.executable, "-m", "benchmarks.benchmark", "--phase", name, str(spec_path), str(out_path)]
    started = time.time()
    with subprocess.Popen(command, env=child_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        with TreeSampler(proc.pid) as sampler:
            try:
                log, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                log, _ = proc.communicate()
                raise RuntimeError(f"benchmark phase {name} timed out after {timeout} s:\n{log[-3000:]}")
    if proc.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"benchmark phase {name} failed (exit {proc.returncode}):\n{log[-5000:]}")
    result = json.loads(out_path.read_text())
    result["phase_seconds"] = round(time.time() - started, 1)
    return result, sampler


def _loop_vs_mgc_agreement(workdir: Path, arch: str, tags_dir: str) -> float:
    """Largest |probability| difference between the loop's and run_tagging's predictions."""
    import pandas as pd

    loop = pd.read_csv(workdir / f"loop-{arch}.csv").set_index("track_id")
    mgc = pd.read_parquet(tags_dir).set_index("track_id")
    columns = [c for c in loop.columns if c in mgc.columns]
    joined = loop[columns].join(mgc[columns], rsuffix="_mgc", how="inner")
    if joined.empty:
        return float("nan")
    return float(max((joined[c] - joined[f"{c}_mgc"]).abs().max() for c in columns))


def run_benchmark(cfg: BenchConfig) -> dict:
    """Every phase; returns the JSON-ready result (ratios at the top level)."""
    wall_started = time.time()
    workdir = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="mgc-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        files = prepare_files(cfg, workdir)
        checkpoints = make_checkpoints(cfg.archs, workdir / "checkpoints")
        scaling_catalog = write_catalog(files, cfg.scaling_copies, workdir / "scaling.csv")
        tagging_catalog = write_catalog(files, cfg.tagging_copies, workdir / "catalog.csv")
        n = cfg.cpus
        load_before = os.getloadavg()

        log(f"decode + log-mel, one core: {len(files)} files x {cfg.decode_repeats}")
        decode, decode_mem = run_phase("decode", {"files": files, "repeats": cfg.decode_repeats}, workdir,
                                       env=ONE_THREAD)

        threads = sorted(set(cfg.loop_threads or (n, 1)), reverse=True)
        tag_runs: dict[str, list[dict]] = {arch: [] for arch in cfg.archs}
        loop_runs: dict[str, list[dict]] = {arch: [] for arch in cfg.archs}
        scaling: dict = {}
        scaling_mem: TreeSampler | None = None
        for round_ in range(cfg.tagging_rounds):  # tag and loop alternate: both meet the same load
            tag_spec = {"cpus": n, "tagging_catalog": str(tagging_catalog), "checkpoints": checkpoints,
                        "workdir": str(workdir), "round": round_}
            if round_ == 0:
                log(f"Ray Data decode stage: 1 -> {n} actors, {len(files) * cfg.scaling_copies} tracks, "
                    f"{cfg.scaling_rounds} rounds; then run_tagging (jobs/tag.py's path), "
                    f"{', '.join(cfg.archs)}: {len(files) * cfg.tagging_copies} tracks")
                scaling, scaling_mem = run_phase("scaling", {
                    "cpus": n, "rounds": cfg.scaling_rounds, "scaling_catalog": str(scaling_catalog),
                    "settle_s": 0.0 if cfg.quick else 4.0, "tag": tag_spec}, workdir)
                result, tag_mem = scaling, scaling_mem
            else:
                log(f"run_tagging, {', '.join(cfg.archs)}: round {round_ + 1}/{cfg.tagging_rounds}")
                result, tag_mem = run_phase("tag", tag_spec, workdir)
            for arch, run in result["tagging"].items():
                run["peak_tree_rss_mb"] = tag_mem.peak(run["start"], run["end"])
                run["cpu_seconds"] = tag_mem.cpu_seconds(run["start"], run["end"])
                run["steady_tracks_per_cpu_s"] = _steady_cpu_rate(run.pop("files"), n, tag_mem)
                tag_runs[arch].append(run)
            for arch in cfg.archs:
                log(f"per-file loop, {arch} (torch threads: faster of {threads}), round {round_ + 1}")
                loop, _ = run_phase("loop", {
                    "checkpoint": checkpoints[arch], "tagging_catalog": str(tagging_catalog), "threads": threads,
                    "probe_tracks": min(cfg.loop_probe_tracks, len(files)), "tracks": len(files), "arch": arch,
                    "workdir": str(workdir), "round": round_}, workdir)
                loop_runs[arch].append(loop)

        log(f"training steps: {', '.join(cfg.archs)}")
        train, _ = run_phase("train", {"archs": list(cfg.archs), "batch": cfg.train_batch,
                                       "steps": cfg.train_steps}, workdir)

        result = summarise(cfg, files, decode, decode_mem, scaling, scaling_mem, tag_runs, loop_runs, train, workdir)
        result["machine"] = {
            "cpus": n, "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_model": _cpu_model(),
        }
        result["benchmark_seconds"] = round(time.time() - wall_started, 1)
        return result
    finally:
        if not cfg.keep_workdir and not cfg.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"model name\s*:\s*(.+)", text)
        return match.group(1).strip() if match else platform.processor()
    except OSError:
        return platform.processor()


def summarise(cfg: BenchConfig, files: list[str], decode: dict, decode_mem: TreeSampler, scaling_result: dict,
              scaling_mem: TreeSampler, tag_runs: dict, loop_runs: dict, train: dict, workdir: Path) -> dict:
    n = cfg.cpus
    runs = scaling_result["runs"]
    best = {k: max((r for r in runs if r["actors"] == k), key=lambda r: r["tracks_per_s"]) for k in {1, n}}
    best_wall = {k: min((r for r in runs if r["actors"] == k), key=lambda r: r["wall_s"]) for k in {1, n}}
    tracks = best[1]["tracks"]
    efficiency = best[n]["tracks_per_s"] / best[1]["tracks_per_s"] / n
    efficiency_window = (min(r["window_s"] for r in runs if r["actors"] == 1)
                         / min(r["window_s"] for r in runs if r["actors"] == n)) / n
    efficiency_wall = (best_wall[1]["wall_s"] / best_wall[n]["wall_s"]) / n
    scaling = {
        "tracks": tracks, "rounds": cfg.scaling_rounds,
        "tracks_per_s_1": best[1]["tracks_per_s"], f"tracks_per_s_{n}": best[n]["tracks_per_s"],
        "efficiency_first_to_last_batch": efficiency_window,
        "efficiency_wall_incl_startup": efficiency_wall,
        "wall_s_1": best_wall[1]["wall_s"], f"wall_s_{n}": best_wall[n]["wall_s"],
        "peak_tree_rss_mb": {str(k): scaling_mem.peak(best_wall[k]["start"], best_wall[k]["end"]) for k in {1, n}},
        "errors": sum(r["errors"] for r in runs),
        "runs": [{k: v for k, v in r.items() if k not in ("start", "end")} for r in runs],
        "note": "tracks/s = sum over actors of each actor's tracks / (its last batch end - its first batch "
                "start); best of the rounds for each actor count",
    }

    tagging = {}
    for arch in cfg.archs:
        def rate(r: dict) -> float:
            return r["steady_tracks_per_s"] if math.isfinite(r["steady_tracks_per_s"]) else r["tracks"] / r["seconds"]

        run = max(tag_runs[arch], key=rate)  # best of the rounds, each side
        mgc_tps = rate(run)
        mgc_tps_total = max(r["tracks"] / r["seconds"] for r in tag_runs[arch])
        loop = max(loop_runs[arch], key=lambda r: r["tracks"] / r["seconds"])
        loop_tps = loop["tracks"] / loop["seconds"]
        mgc_cpu = max(r["steady_tracks_per_cpu_s"] if math.isfinite(r["steady_tracks_per_cpu_s"])
                      else r["tracks"] / max(1e-9, r["cpu_seconds"]) for r in tag_runs[arch])
        loop_cpu = max(max([r["tracks"] / max(1e-9, r["cpu_seconds"])] + list(r["probe_tracks_per_cpu_s"].values()))
                       for r in loop_runs[arch])
        tagging[arch] = {
            "tracks": run["tracks"], "failed": run["failed"], "rounds": len(tag_runs[arch]),
            "mgc_tracks_per_s": mgc_tps, "mgc_tracks_per_s_per_core": mgc_tps / n,
            "mgc_tracks_per_s_incl_startup": mgc_tps_total,
            "mgc_seconds_incl_startup": run["seconds"],
            "mgc_seconds_to_first_file": run["first_file_s"],
            "mgc_tracks_per_s_rounds": [rate(r) for r in tag_runs[arch]],
            "loop_tracks_per_s": loop_tps, "loop_torch_threads": loop["threads"],
            "loop_tracks_per_s_rounds": [r["tracks"] / r["seconds"] for r in loop_runs[arch]],
            "loop_probe_tracks_per_s_by_threads": loop["probe_tracks_per_s"],
            "speedup_vs_loop": mgc_tps / loop_tps,
            "speedup_vs_loop_incl_startup": mgc_tps_total / loop_tps,
            "max_abs_prob_diff_vs_loop": _loop_vs_mgc_agreement(workdir, arch, run["output"]),
            "mgc_tracks_per_cpu_s": mgc_cpu, "loop_tracks_per_cpu_s": loop_cpu,
            "cpu_efficiency_vs_loop": mgc_cpu / loop_cpu,
            "mgc_peak_tree_rss_mb": max(r["peak_tree_rss_mb"] for r in tag_runs[arch]),
            "loop_peak_rss_mb": max(r["peak_rss_mb"] for r in loop_runs[arch]),
        }
    headline_arch = cfg.archs[0]
    decode_speedup = decode["mgc_tracks_per_s"] / decode["librosa_tracks_per_s"]
    return {
        "decode_mel_speedup_vs_librosa": decode_speedup,
        "ray_decode_scaling_efficiency": efficiency,
        "tagging_speedup_vs_loop": tagging[headline_arch]["speedup_vs_loop"],
        "tagging_speedup_arch": headline_arch,
        "tagging_speedup_vs_loop_by_arch": {a: t["speedup_vs_loop"] for a, t in tagging.items()},
        "quick": cfg.quick,
        "files": {"real": cfg.real_tracks, "generated_mp3": cfg.generated_tracks, "total": len(files)},
        "decode": {**decode, "peak_tree_rss_mb": decode_mem.peak()},
        "scaling": scaling,
        "tagging": tagging,
        "training": train,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("workdir", "keep_workdir")},
    }


def table(result: dict) -> str:
    """The Markdown table of a result (what README shows)."""
    n = result["machine"]["cpus"]
    d, s = result["decode"], result["scaling"]
    rows = [
        ("Decode + log-mel, 1 core (tracks/s)", f"librosa loop {d['librosa_tracks_per_s']:.1f}",
         f"mgc {d['mgc_tracks_per_s']:.1f}", f"**{result['decode_mel_speedup_vs_librosa']:.2f}x**"),
        ("Same, per CPU-second (tracks)", f"{d['librosa_tracks_per_cpu_s']:.1f}", f"{d['mgc_tracks_per_cpu_s']:.1f}",
         f"{d['mgc_tracks_per_cpu_s'] / d['librosa_tracks_per_cpu_s']:.2f}x"),
        ("Log-mel agreement (max abs dB diff, all windows)", "", "", f"{d['max_abs_db_diff']:.1e} dB"),
        ("Decode + log-mel peak RSS growth (MB)", f"{d['memory']['librosa']['growth_mb']:.0f}",
         f"{d['memory']['mgc']['growth_mb']:.0f}", ""),
        (f"Ray Data decode stage, 1 -> {n} actors (tracks/s)", f"1 actor {s['tracks_per_s_1']:.1f}",
         f"{n} actors {s[f'tracks_per_s_{n}']:.1f}",
         f"**efficiency {result['ray_decode_scaling_efficiency']:.2f}** "
         f"({s['efficiency_wall_incl_startup']:.2f} on wall time incl. actor start-up)"),
    ]
    for arch, t in result["tagging"].items():
        rows += [
            (f"Tagging end to end, {arch} (tracks/s)",
             f"loop {t['loop_tracks_per_s']:.2f} (torch {t['loop_torch_threads']} thr)",
             f"run_tagging {t['mgc_tracks_per_s']:.2f} ({t['mgc_tracks_per_s_per_core']:.2f}/core)",
             f"**{t['speedup_vs_loop']:.2f}x** (max prob diff {t['max_abs_prob_diff_vs_loop']:.0e})"),
            (f"Same, incl. Ray start-up ({t['tracks']} tracks)", "",
             f"{t['mgc_tracks_per_s_incl_startup']:.2f} (first file after {t['mgc_seconds_to_first_file']:.0f} s)",
             f"{t['speedup_vs_loop_incl_startup']:.2f}x"),
            (f"Same, per CPU-second, {arch} (tracks)", f"{t['loop_tracks_per_cpu_s']:.2f}",
             f"{t['mgc_tracks_per_cpu_s']:.2f} (all Ray processes)", f"{t['cpu_efficiency_vs_loop']:.2f}x"),
            (f"Tagging peak RSS, {arch} (MB)", f"{t['loop_peak_rss_mb']:.0f}",
             f"{t['mgc_peak_tree_rss_mb']:.0f} (Ray process tree)", ""),
        ]
    for key, t in result["training"]["runs"].items():
        arch, device = key.rsplit("_", 1)
        rows.append((f"Training {arch}, {device}, batch {t['batch']} (samples/s)", "",
                     f"{t['samples_per_s']:.1f} ({t['threads']} threads)", f"peak RSS {t['peak_rss_mb']:.0f} MB"))
    m = result.get("machine", {})
    if m:
        rows.append(("Machine", f"{m['cpus']} CPUs, {m.get('cpu_model', '')}",
                     f"load avg {m['loadavg_before'][0]:.1f} before, {m['loadavg_after'][0]:.1f} after",
                     f"{result.get('benchmark_seconds', 0):.0f} s"))
    lines = ["| Measure | Baseline | mgc | Ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {r} |" for a, b, c, r in rows]
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/benchmark.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a handful of files, cnn only: about a minute")
    p.add_argument("--output", default="bench.json", help="JSON result file (default: bench.json)")
    p.add_argument("--gtzan", default=None, help=f"folder of real clips (default: {DEFAULT_GTZAN})")
    p.add_argument("--archs", nargs="+", default=None, help="architectures to tag and train with")
    p.add_argument("--cpus", type=int, default=None, help="CPUs for Ray (default: all)")
    p.add_argument("--workdir", default=None, help="keep the generated files and outputs here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {k: v for k, v in {"output": args.output, "gtzan": args.gtzan, "cpus": args.cpus,
                                   "workdir": args.workdir}.items() if v is not None}
    if args.archs:
        overrides["archs"] = tuple(args.archs)
    cfg = BenchConfig.quick_config(**overrides) if args.quick else BenchConfig(**overrides)
    result = run_benchmark(cfg)
    text = table(result)
    result["table_markdown"] = text
    print(text, flush=True)
    if cfg.output:
        Path(cfg.output).write_text(dumps(result, indent=2) + "\n")
        log(f"wrote {cfg.output}")
    return 0


def _phase_main(argv: list[str]) -> int:
    name, spec_path, out_path = argv
    result = PHASES[name](json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--phase":
        sys.exit(_phase_main(sys.argv[2:]))
    sys.exit(main())
