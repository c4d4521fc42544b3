"""Batch tagging: a catalog manifest -> genre and mood predictions in Parquet.

Why it is shaped like this:
- decoding reuses the training pipeline's decoder (:func:`mgc.stages.decode.track_dataset`), so a
  track is windowed and featurised exactly as the model saw its training data;
- tagging actors write their own output files, each whole or not at all (atomic rename
  locally, one PUT on object stores), named by a hash of the tracks inside, so a killed
  run leaves only complete files and a retried batch overwrites itself;
- a rerun first lists the track ids already in the ``model_id=`` partition and skips
  them, which makes runs incremental and resumable without duplicate rows;
- on CPU only, one kind of actor decodes, featurises and scores its own tracks
  (:class:`DecodeTagger`, one per CPU, one torch thread each): the model is most of the
  cost, so splitting decoding and scoring into separate actors would leave the decode
  actors idle and the model on one core. With GPUs, CPU actors decode raw windows and
  GPU actors compute the mels on the device and score in bf16 (:class:`Tagger`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import torch

from mgc.io import storage
from mgc.models.checkpoint import CheckpointMeta, load_checkpoint, local_copy, model_id, read_meta
from mgc.config import DataConfig, TagConfig
from mgc.stages.decode import ERROR, MEL, WINDOWS, DecodeMel, track_dataset
from mgc.audio.logmel import log_mel, torch_frontend
from mgc.io.manifest import read_manifest
from mgc.models.zoo import TaggerModel
from mgc.models.inference import EMBEDDING, predict_tracks
from mgc.tagging.schema import PARTITION, PredictionSchema, build_table, combined_tasks
from mgc.log import get_logger

log = get_logger()


@dataclass(frozen=True)
class TagSummary:
    """What a run did."""

    output: str
    model_id: str
    already_tagged: int
    tagged: int
    failed: dict[str, int]
    seconds: float

    @property
    def tracks_per_s(self) -> float:
        return (self.tagged + sum(self.failed.values())) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output, "model_id": self.model_id, "already_tagged": self.already_tagged,
            "tagged": self.tagged, "failed": self.failed, "seconds": round(self.seconds, 2),
            "tracks_per_s": round(self.tracks_per_s, 2),
        }


def run_model_id(checkpoint_dirs: list[str], metas: list[CheckpointMeta]) -> str:
    """The id of a run's model set: the checkpoints' ids joined in the given order."""
    return "--".join(model_id(d, m) for d, m in zip(checkpoint_dirs, metas))


def partition_uri(output: str, run_id: str) -> str:
    return storage.join(output, f"{PARTITION}={run_id}")


def tagged_track_ids(output: str, run_id: str) -> set[str]:
    """Track ids already written for ``run_id`` (files being written are hidden: ``.tmp-*``)."""
    uri = partition_uri(output, run_id)
    if not storage.exists(uri):
        return set()
    filesystem, path = storage.pyarrow_filesystem(uri)
    dataset = pads.dataset(path, filesystem=filesystem, format="parquet", ignore_prefixes=[".", "_"])
    return set(dataset.to_table(columns=["track_id"]).column("track_id").to_pylist())


def file_name(track_ids: list[str]) -> str:
    """Deterministic per batch: a retried batch rewrites the same file, never a second one."""
    digest = hashlib.sha256("\n".join(sorted(track_ids)).encode()).hexdigest()[:24]
    return f"part-{digest}.parquet"


class _Float32(torch.nn.Module):
    """Run a module in float32 even inside an autocast region (the mel front end: its
    dB values must not pass through bf16 matmuls)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.inner(x.float())


class Tagger:
    """Ray Data actor: score decoded tracks with every checkpoint, write one Parquet file.

    Returns one small row per track (id and error) for the run's summary, plus the
    seconds this call spent scoring (``busy_s``, on the call's first row) so that the
    run can report how busy its accelerator was. On CUDA the models run under bf16
    autocast (the mel front end stays float32); on CPU everything is float32.
    """

    def __init__(self, checkpoints: list[str], partition: str, embeddings: bool, top_k: int,
                 batch_size: int, use_gpu: bool):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.loaded = [load_checkpoint(uri, self.device) for uri in checkpoints]
        self.models: list[torch.nn.Module] = [c.model for c in self.loaded]
        self.schema = PredictionSchema(combined_tasks([c.meta.tasks for c in self.loaded]), embeddings)
        self.frontend = _Float32(torch_frontend(self.loaded[0].meta.audio).to(self.device))
        self.partition = partition
        self.top_k = top_k
        self.batch_size = batch_size

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _score(self, inputs: list[np.ndarray], raw: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        probs: dict[str, np.ndarray] = {}
        embeddings = []
        with self._autocast():
            for checkpoint, model in zip(self.loaded, self.models):
                types = {task: spec.type for task, spec in checkpoint.meta.tasks.items()}
                scores = predict_tracks(model, inputs, types, self.batch_size, self.device,
                                        frontend=self.frontend if raw else None, embeddings=self.schema.embedding)
                embeddings.extend([scores.pop(EMBEDDING)] if self.schema.embedding else [])
                probs.update(scores)
        return probs, (np.concatenate(embeddings, axis=1) if embeddings else None)

    def _empty_scores(self) -> dict[str, np.ndarray]:
        return {task: np.zeros((0, len(spec.labels)), np.float32) for task, spec in self.schema.tasks.items()}

    def _write(self, batch: dict[str, np.ndarray], errors: list[str | None], probs: dict[str, np.ndarray],
               embeddings: np.ndarray | None, busy_s: float) -> dict[str, np.ndarray]:
        """Write the batch's Parquet file (whole or not at all); return the summary rows."""
        ids = [str(t) for t in batch["track_id"]]
        table = build_table(self.schema, ids, [str(u) for u in batch["uri"]], batch["duration_s"],
                            batch["n_segments"], errors, probs, embeddings, self.top_k)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        storage.write_bytes(storage.join(self.partition, file_name(ids)), sink.getvalue())
        busy = np.zeros(len(ids), dtype=np.float64)
        busy[:1] = busy_s
        return {"track_id": np.array(ids, dtype=object), ERROR: np.array(errors, dtype=object), "busy_s": busy}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        raw = WINDOWS in batch
        values = batch[WINDOWS if raw else MEL]
        # An all-null error column comes back from Arrow as NaN floats: only strings are errors.
        errors = [e if isinstance(e, str) else None for e in batch[ERROR]]
        good = [np.asarray(values[i]) for i, e in enumerate(errors) if e is None]
        if good:
            probs, embeddings = self._score(good, raw)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        else:
            probs, embeddings = self._empty_scores(), None
        return self._write(batch, errors, probs, embeddings, time.perf_counter() - started)


# Windows per forward pass on CPU, at most: measured on one core, 8-16 windows of
# [128, 130] run 1.5-2x faster per window than 64 (the activations stay in cache).
CPU_MAX_BATCH = 16


def optimized_for_cpu(model: TaggerModel, example: torch.Tensor, rtol: float = 1e-3) -> torch.nn.Module:
    """``model`` with its backbone prepared for CPU inference, else ``model`` itself.

    torch.fx's ``optimize_for_inference`` folds each BatchNorm into its convolution and
    runs the convolutions on oneDNN: ~1.5x eager speed for resnet18 and ~4x for the
    compact cnn on one core, the same outputs up to float rounding. It is checked on
    ``example`` (a batch of log-mels) and skipped for a backbone that does not trace or
    whose output differs by more than ``rtol`` of its scale.
    """
    try:
        import torch.fx.experimental.optimization as fx_optimization

        fast = copy.deepcopy(model).eval()
        # torch.fx prints the generated code of a graph that fails to run: not our log's business.
        with contextlib.redirect_stderr(io.StringIO()):
            fast.backbone = fx_optimization.optimize_for_inference(fast.backbone)
            with torch.inference_mode():
                expected, got = model.embed(example), fast.embed(example)
        scale = max(1.0, float(expected.abs().max()))
        if got.shape != expected.shape or not float((got - expected).abs().max()) <= rtol * scale:
            return model
        return fast
    except Exception:  # noqa: BLE001 - an optimisation, never a reason to fail
        return model


class DecodeTagger:
    """Ray Data actor for CPU-only runs: decode, featurise and score its own tracks.

    Tracks are decoded one at a time (:class:`mgc.stages.decode.DecodeMel`, the training decoder)
    and scored as soon as a forward pass worth of windows is waiting, so an actor holds
    about one model batch of mels, not a whole file's worth. Models run through
    :func:`optimized_for_cpu`, ``min(batch_size, CPU_MAX_BATCH)`` windows per pass. The
    output file and the summary rows are exactly the :class:`Tagger`'s.
    """

    def __init__(self, checkpoints: list[str], partition: str, embeddings: bool, top_k: int,
                 batch_size: int, torch_threads: int = 1):
        torch.set_num_threads(max(1, int(torch_threads)))
        self.tagger = Tagger(checkpoints, partition, embeddings, top_k, min(batch_size, CPU_MAX_BATCH),
                             use_gpu=False)
        audio = self.tagger.loaded[0].meta.audio
        self.decoder = DecodeMel(audio.to_dict(), MEL)
        noise = np.random.default_rng(0).standard_normal((2, audio.window_samples)).astype(np.float32)
        example = torch.from_numpy(log_mel(0.1 * noise, audio))
        self.tagger.models = [optimized_for_cpu(m, example) for m in self.tagger.models]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tagger = self.tagger
        errors: list[str | None] = []
        durations: list[float] = []
        segments: list[int] = []
        parts: list[tuple[dict[str, np.ndarray], np.ndarray | None]] = []
        waiting: list[np.ndarray] = []
        busy = 0.0

        def score_waiting() -> None:
            nonlocal busy
            if waiting:
                started = time.perf_counter()
                parts.append(tagger._score(waiting, raw=False))
                busy += time.perf_counter() - started
                waiting.clear()

        for uri in batch["uri"]:
            mel, duration, error = self.decoder.decode(str(uri))
            errors.append(error)
            durations.append(duration)
            segments.append(len(mel))
            if error is None:
                waiting.append(mel)
                if sum(len(m) for m in waiting) >= tagger.batch_size:
                    score_waiting()
        score_waiting()
        if parts:
            probs = {task: np.concatenate([p[task] for p, _ in parts]) for task in parts[0][0]}
            embeddings = np.concatenate([e for _, e in parts]) if parts[0][1] is not None else None
        else:
            probs, embeddings = tagger._empty_scores(), None
        decoded = {"track_id": batch["track_id"], "uri": batch["uri"],
                   "duration_s": np.array(durations, dtype=np.float32),
                   "n_segments": np.array(segments, dtype=np.int32)}
        return tagger._write(decoded, errors, probs, embeddings, busy)


def _tagger_concurrency(cfg: TagConfig) -> int:
    if cfg.concurrency:
        return cfg.concurrency
    if cfg.use_gpu:
        return max(1, int(ray.cluster_resources().get("GPU", 1)))
    return 1


def _decode_config(cfg: TagConfig, taggers: int) -> DataConfig:
    """Leave the tagging actors their CPUs: decode actors get the rest (at least one)."""
    if cfg.data.decode_concurrency or cfg.use_gpu:
        return cfg.data
    cpus = ray.cluster_resources().get("CPU", 1.0) - taggers * cfg.tagger_num_cpus
    spare = max(1, int(cpus // max(cfg.data.decode_num_cpus, 1e-3)))
    return DataConfig(spare, cfg.data.decode_num_cpus, cfg.data.decode_batch_size)


def _cpu_actors(cfg: TagConfig) -> int:
    """CPU-only runs: ``--concurrency`` actors, else one per ``tagger_num_cpus`` CPUs."""
    if cfg.concurrency:
        return cfg.concurrency
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int(cpus // max(cfg.tagger_num_cpus, 1e-3)))


def _rows_per_call(cfg: TagConfig, tracks: int, actors: int) -> int:
    """Tracks per actor call (and output file): ``rows_per_file`` at most, and small
    enough that every actor gets several calls (load balance on small catalogs)."""
    return max(1, min(cfg.rows_per_file, math.ceil(tracks / (4 * actors))))


def _tag_on_cpu(cfg: TagConfig, todo, partition: str):
    """Fused CPU path: each actor decodes, featurises and scores its own tracks."""
    actors = _cpu_actors(cfg)
    rows = _rows_per_call(cfg, len(todo), actors)
    blocks = [todo.iloc[start : start + rows] for start in range(0, len(todo), rows)]
    return ray.data.from_pandas(blocks).map_batches(
        DecodeTagger,
        fn_constructor_kwargs={
            "checkpoints": list(cfg.checkpoint), "partition": partition, "embeddings": cfg.embeddings,
            "top_k": cfg.top_k, "batch_size": cfg.batch_size,
            "torch_threads": max(1, int(cfg.tagger_num_cpus)),
        },
        batch_size=rows,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cfg.tagger_num_cpus,
    )


def _tag_with_gpus(cfg: TagConfig, todo, audio, partition: str):
    """CPU actors decode raw windows; GPU actors compute the mels and score."""
    taggers = _tagger_concurrency(cfg)
    decoded = track_dataset(todo, audio, _decode_config(cfg, taggers), WINDOWS)
    return decoded.map_batches(
        Tagger,
        fn_constructor_kwargs={
            "checkpoints": list(cfg.checkpoint), "partition": partition, "embeddings": cfg.embeddings,
            "top_k": cfg.top_k, "batch_size": cfg.batch_size, "use_gpu": True,
        },
        batch_size=cfg.rows_per_file,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=taggers),
        num_cpus=cfg.tagger_num_cpus,
        num_gpus=1,
    )


def run_tagging(cfg: TagConfig) -> TagSummary:
    """Tag every track of ``cfg.manifest`` not yet tagged by this model set."""
    if not cfg.checkpoint:
        raise ValueError("give at least one --checkpoint")
    started = time.time()
    with contextlib.ExitStack() as stack:  # remote checkpoints: temporary copies, removed after reading
        local_dirs = [stack.enter_context(local_copy(uri)) for uri in cfg.checkpoint]
        metas = [read_meta(directory) for directory in local_dirs]
        run_id = run_model_id([str(d) for d in local_dirs], metas)
    audio = metas[0].audio
    if any(m.audio != audio for m in metas[1:]):
        raise ValueError("the checkpoints use different audio front ends; tag with each in its own run")
    PredictionSchema(combined_tasks([m.tasks for m in metas]), cfg.embeddings)  # refuse clashes up front
    partition = partition_uri(cfg.output, run_id)

    if cfg.retag and storage.exists(partition):
        fs, path = storage.filesystem_for(partition)
        fs.rm(path, recursive=True)
    stale = storage.remove_stale_temporaries(partition)
    if stale:
        log.info(f"removed {stale} stale temporary file(s) a killed run left in {partition}")
    manifest = read_manifest(cfg.manifest)
    done = tagged_track_ids(cfg.output, run_id)
    todo = manifest.loc[~manifest["track_id"].isin(done), ["track_id", "uri"]]
    if cfg.limit is not None:
        todo = todo.head(cfg.limit)
    log.info(f"{run_id}: {len(manifest)} tracks, {len(done)} already tagged, tagging {len(todo)}")
    if todo.empty:
        return TagSummary(cfg.output, run_id, len(done), 0, {}, time.time() - started)

    stage = _tag_with_gpus(cfg, todo, audio, partition) if cfg.use_gpu else _tag_on_cpu(cfg, todo, partition)
    scoring_started = time.time()
    results = stage.to_pandas()
    if cfg.use_gpu:
        wall = time.time() - scoring_started
        busy = float(results["busy_s"].sum()) / max(1, _tagger_concurrency(cfg))
        log.info(f"GPU taggers busy {busy:.1f} s of {wall:.1f} s "
              f"(idle {max(0.0, 1 - busy / wall) if wall > 0 else 0:.0%}: below ~20% the run is GPU-bound, "
              f"above it decode-bound)")
    errors = [e for e in results[ERROR] if isinstance(e, str)]
    failed = Counter(e.split(":", 1)[0] for e in errors)
    tagged = len(results) - len(errors)
    return TagSummary(cfg.output, run_id, len(done), tagged, dict(failed), time.time() - started)

