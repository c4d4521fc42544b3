"""Batch tagging: a catalog manifest -> genre and mood predictions in Parquet.

Why it is shaped like this:
- decoding reuses the training pipeline's decoder (:func:`mgc.data.track_dataset`), so a
  track is windowed and featurised exactly as the model saw its training data;
- tagging actors write their own output files, each whole or not at all (atomic rename
  locally, one PUT on object stores), named by a hash of the tracks inside, so a killed
  run leaves only complete files and a retried batch overwrites itself;
- a rerun first lists the track ids already in the ``model_id=`` partition and skips
  them, which makes runs incremental and resumable without duplicate rows.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import torch

from mgc import storage
from mgc.checkpoint import CheckpointMeta, load_checkpoint, model_id, read_meta
from mgc.config import DataConfig, TagConfig
from mgc.data import ERROR, MEL, WINDOWS, track_dataset
from mgc.features import LogMel
from mgc.manifest import read_manifest
from mgc.predict import EMBEDDING, predict_tracks
from mgc.predictions import PARTITION, PredictionSchema, build_table, combined_tasks


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


class Tagger:
    """Ray Data actor: score decoded tracks with every checkpoint, write one Parquet file.

    Returns one small row per track (id and error) for the run's summary.
    """

    def __init__(self, checkpoints: list[str], partition: str, embeddings: bool, top_k: int,
                 batch_size: int, use_gpu: bool):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.loaded = [load_checkpoint(uri, self.device) for uri in checkpoints]
        self.schema = PredictionSchema(combined_tasks([c.meta.tasks for c in self.loaded]), embeddings)
        self.frontend = LogMel(self.loaded[0].meta.audio).to(self.device)
        self.partition = partition
        self.top_k = top_k
        self.batch_size = batch_size

    def _score(self, inputs: list[np.ndarray], raw: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        probs: dict[str, np.ndarray] = {}
        embeddings = []
        for checkpoint in self.loaded:
            types = {task: spec.type for task, spec in checkpoint.meta.tasks.items()}
            scores = predict_tracks(checkpoint.model, inputs, types, self.batch_size, self.device,
                                    frontend=self.frontend if raw else None, embeddings=self.schema.embedding)
            embeddings.extend([scores.pop(EMBEDDING)] if self.schema.embedding else [])
            probs.update(scores)
        return probs, (np.concatenate(embeddings, axis=1) if embeddings else None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raw = WINDOWS in batch
        values = batch[WINDOWS if raw else MEL]
        # An all-null error column comes back from Arrow as NaN floats: only strings are errors.
        errors = [e if isinstance(e, str) else None for e in batch[ERROR]]
        good = [np.asarray(values[i]) for i, e in enumerate(errors) if e is None]
        if good:
            probs, embeddings = self._score(good, raw)
        else:
            probs = {task: np.zeros((0, len(spec.labels)), np.float32) for task, spec in self.schema.tasks.items()}
            embeddings = None
        ids = [str(t) for t in batch["track_id"]]
        table = build_table(self.schema, ids, [str(u) for u in batch["uri"]], batch["duration_s"],
                            batch["n_segments"], errors, probs, embeddings, self.top_k)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        storage.write_bytes(storage.join(self.partition, file_name(ids)), sink.getvalue())
        return {"track_id": np.array(ids, dtype=object), ERROR: np.array(errors, dtype=object)}


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


def run_tagging(cfg: TagConfig) -> TagSummary:
    """Tag every track of ``cfg.manifest`` not yet tagged by this model set."""
    if not cfg.checkpoint:
        raise ValueError("give at least one --checkpoint")
    started = time.time()
    local_dirs = [storage.download_dir(uri, tempfile.mkdtemp(prefix="mgc-tag-")) for uri in cfg.checkpoint]
    metas = [read_meta(directory) for directory in local_dirs]
    audio = metas[0].audio
    if any(m.audio != audio for m in metas[1:]):
        raise ValueError("the checkpoints use different audio front ends; tag with each in its own run")
    PredictionSchema(combined_tasks([m.tasks for m in metas]), cfg.embeddings)  # refuse clashes up front
    run_id = run_model_id([str(d) for d in local_dirs], metas)
    partition = partition_uri(cfg.output, run_id)

    if cfg.retag and storage.exists(partition):
        fs, path = storage.filesystem_for(partition)
        fs.rm(path, recursive=True)
    manifest = read_manifest(cfg.manifest)
    done = tagged_track_ids(cfg.output, run_id)
    todo = manifest.loc[~manifest["track_id"].isin(done), ["track_id", "uri"]]
    if cfg.limit is not None:
        todo = todo.head(cfg.limit)
    print(f"[mgc] {run_id}: {len(manifest)} tracks, {len(done)} already tagged, tagging {len(todo)}", flush=True)
    if todo.empty:
        return TagSummary(cfg.output, run_id, len(done), 0, {}, time.time() - started)

    taggers = _tagger_concurrency(cfg)
    features = WINDOWS if cfg.use_gpu else MEL
    decoded = track_dataset(todo, audio, _decode_config(cfg, taggers), features)
    results = decoded.map_batches(
        Tagger,
        fn_constructor_kwargs={
            "checkpoints": list(cfg.checkpoint), "partition": partition, "embeddings": cfg.embeddings,
            "top_k": cfg.top_k, "batch_size": cfg.batch_size, "use_gpu": cfg.use_gpu,
        },
        batch_size=cfg.rows_per_file,
        batch_format="numpy",
        concurrency=taggers,
        num_cpus=cfg.tagger_num_cpus,
        num_gpus=1 if cfg.use_gpu else 0,
    ).to_pandas()
    errors = [e for e in results[ERROR] if isinstance(e, str)]
    failed = Counter(e.split(":", 1)[0] for e in errors)
    tagged = len(results) - len(errors)
    return TagSummary(cfg.output, run_id, len(done), tagged, dict(failed), time.time() - started)

