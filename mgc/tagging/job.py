"""Batch tagging: a catalog manifest -> genre and mood predictions in Parquet.

Why it is shaped like this (docs/architecture.md, "Why each stage is shaped as it is"):
- decoding reuses the training pipeline's decoder, so a track is windowed and featurised
  exactly as the model saw its training data; the actors are in :mod:`mgc.tagging.actors`;
- the driver stays bounded at catalog scale: the manifest is read as Arrow
  (:func:`mgc.io.catalog.read_catalog`), the done-set is an Arrow anti-join against the
  partition (:mod:`mgc.tagging.plan`), and inputs go to Ray Data in large blocks;
- one writer per partition: the run holds its lease (:mod:`mgc.io.lease`) from planning
  to the last rewrite; a second run is refused with the holder's name;
- rows of failed tracks that can go away by themselves (``missing``, ``fetch_failed``,
  ``storage``, ``timeout``) are tried again by the next run, which then removes the rows
  it superseded (:mod:`mgc.tagging.partition`): the partition keeps one row per track;
- one pathological track cannot sink a night: per-track time and size limits make it a
  row, actor restarts and task retries are bounded, and a batch that still kills its
  actor is split, round after round, until the track doing it is alone and recorded as
  ``crashed``. A store that is down as a whole still fails the job (``StorageError``):
  after such a round the driver probes the store, and only a store that answers makes
  the missing tracks a per-track problem.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from mgc.audio.decode import CRASHED, RETRYABLE
from mgc.config import AudioConfig, DataConfig, TagConfig
from mgc.io import storage
from mgc.io.catalog import read_catalog
from mgc.io.lease import PartitionLease
from mgc.io.validate import ManifestError, locality_problems
from mgc.log import get_logger
from mgc.models.checkpoint import CheckpointMeta, local_copy, model_id, read_meta
from mgc.stages.decode import ERROR, WINDOWS, arrow_blocks, limits, track_dataset
from mgc.tagging.actors import OUTAGE, DecodeTagger, Tagger, TaggerSpec
from mgc.tagging.partition import drop_superseded, partition_uri, remove_parts, write_rows
from mgc.tagging.plan import partition_rows, untagged
from mgc.tagging.schema import PredictionSchema, build_table, combined_tasks

log = get_logger()

# Each round after the first splits the failed batches into this many smaller ones.
SPLIT = 8
# What each tagging call returns per track (the summary; the predictions went to its file).
SUMMARY_SCHEMA = pa.schema([("track_id", pa.string()), (ERROR, pa.string()), ("busy_s", pa.float64())])
# Tracks per GPU call when their length is unknown (no --max-windows): 30 s at 3 s windows.
ASSUMED_WINDOWS_PER_TRACK = 10


@dataclass(frozen=True)
class TagSummary:
    """What a run did."""

    output: str
    model_id: str
    already_tagged: int
    tagged: int
    failed: dict[str, int]
    seconds: float
    retried: int = 0
    superseded: int = 0

    @property
    def tracks_per_s(self) -> float:
        return (self.tagged + sum(self.failed.values())) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output, "model_id": self.model_id, "already_tagged": self.already_tagged,
            "tagged": self.tagged, "failed": self.failed, "retried": self.retried, "superseded": self.superseded,
            "seconds": round(self.seconds, 2), "tracks_per_s": round(self.tracks_per_s, 2),
        }


def run_model_id(checkpoint_dirs: list[str], metas: list[CheckpointMeta]) -> str:
    """The id of a run's model set: the checkpoints' ids joined in the given order."""
    return "--".join(model_id(d, m) for d, m in zip(checkpoint_dirs, metas))


def tagged_track_ids(output: str, run_id: str) -> set[str]:
    """Track ids already written for ``run_id`` (small partitions: tests and tools)."""
    return set(partition_rows(partition_uri(output, run_id), ["track_id"]).column("track_id").to_pylist())


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
    return dataclasses.replace(cfg.data, decode_concurrency=spare)


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


def _gpu_rows(cfg: TagConfig) -> int:
    """Tracks per GPU call: ``rows_per_file`` at most, and at most ``gpu_window_budget``
    raw windows (a night of 1024-track batches with every window was ~20 GB a call)."""
    per_track = cfg.max_windows or ASSUMED_WINDOWS_PER_TRACK
    return max(1, min(cfg.rows_per_file, cfg.gpu_window_budget // per_track))


def _bounded(cfg: TagConfig) -> dict[str, Any]:
    """Bounded retries of a call (Ray Data's default is unlimited: a batch that segfaults or
    runs out of memory was retried forever). A dead actor is replaced each time, so the
    other batches go on; restarts are bounded by the retries of the batches that kill it."""
    return {"max_restarts": -1, "max_task_retries": cfg.actor_restarts}


def _pool(size: int, isolating: bool) -> ray.data.ActorPoolStrategy:
    """A fixed actor pool; while isolating a poison track, one call in flight per actor, so
    an actor that dies takes only the call that killed it (queued calls go to its
    replacement instead of failing with it)."""
    return ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1 if isolating else None)


def _stage(cfg: TagConfig, todo: pa.Table, spec: TaggerSpec, rows: int, audio: AudioConfig,
           cpu_actor: type[DecodeTagger] = DecodeTagger, isolating: bool = False) -> ray.data.Dataset:
    """The Ray Data stage tagging ``todo``, ``rows`` tracks per call and output file."""
    if cfg.use_gpu:
        taggers = _tagger_concurrency(cfg)
        decoded = track_dataset(todo, audio, _decode_config(cfg, taggers), WINDOWS)
        stage = decoded.map_batches(
            Tagger, fn_constructor_kwargs={"spec": spec.to_dict(), "use_gpu": True},
            batch_size=rows, batch_format="numpy", compute=_pool(taggers, isolating),
            num_cpus=cfg.tagger_num_cpus, num_gpus=1, **_bounded(cfg),
        )
    else:
        # One input block per call: a block is what fails when an actor dies, so a block of
        # `rows` tracks keeps a poison track's damage to its own batch (39k blocks at 10M
        # tracks, where 8-track blocks made 1.25M).
        stage = arrow_blocks(todo, rows).map_batches(
            cpu_actor, fn_constructor_kwargs={"spec": spec.to_dict(), "torch_threads": max(1, int(cfg.tagger_num_cpus))},
            batch_size=rows, batch_format="numpy", compute=_pool(_cpu_actors(cfg), isolating),
            num_cpus=cfg.tagger_num_cpus, **_bounded(cfg),
        )
    stage.context.max_errored_blocks = -1  # a batch that kills its actor is dropped here and split next round
    return stage


def _run_rounds(cfg: TagConfig, todo: pa.Table, spec: TaggerSpec, schema: PredictionSchema, audio: AudioConfig,
                lease: PartitionLease, cpu_actor: type[DecodeTagger] = DecodeTagger) -> pa.Table:
    """Tag ``todo`` in rounds: whatever a round could not write (its batch killed the
    actor past its restarts) is tagged again in batches ``SPLIT`` times smaller, down to
    single tracks, which are then recorded as ``crashed``. Returns the summary rows."""
    rows = _gpu_rows(cfg) if cfg.use_gpu else _rows_per_call(cfg, todo.num_rows, _cpu_actors(cfg))
    results: list[pa.Table] = []
    left = todo
    while left.num_rows:
        lease.assert_held()
        started = time.time()
        stage = _stage(cfg, left, spec, rows, audio, cpu_actor, isolating=left is not todo)
        # Summary blocks as they finish (a few rows per call); blocks of fine tracks only come
        # back with a null-typed error column: one schema. The first block an actor marked as
        # an outage ends the stream (and the job) at once.
        tables = []
        seen = 0
        for block in stage.iter_batches(batch_size=None, batch_format="pyarrow"):
            if block.num_rows:
                tables.append(block.select(SUMMARY_SCHEMA.names).cast(SUMMARY_SCHEMA))
                seen += block.num_rows
                _refuse_reported_outage(tables[-1], left.num_rows - seen)
        done = pa.concat_tables(tables) if tables else SUMMARY_SCHEMA.empty_table()
        results.append(done.select(["track_id", ERROR]))
        if cfg.use_gpu:
            _log_gpu_busy(done, time.time() - started, _tagger_concurrency(cfg))
        missing = untagged(left, done.select(["track_id"]))
        if not missing.num_rows:
            break
        _refuse_outage(missing, spec.partition)
        if rows == 1:
            log.warning("%d track(s) killed their actor even alone: recorded as %s", missing.num_rows, CRASHED)
            crashed = _crashed_rows(missing, schema)
            write_rows(spec.partition, crashed, spec.lease_token)
            results.append(crashed.select(["track_id", ERROR]))
            break
        rows = max(1, rows // SPLIT)
        log.warning("%d track(s) in batches that killed their actor; tagging them again, %d per batch",
                    missing.num_rows, rows)
        left = missing
    return pa.concat_tables([r.cast(SUMMARY_SCHEMA.remove(2)) for r in results])


def _refuse_reported_outage(block: pa.Table, not_yet_seen: int) -> None:
    """An actor that found the store down answered with :data:`OUTAGE` rows: the job fails,
    with the store's own error (the endpoint and the uri it could not reach)."""
    marked = pc.starts_with(pc.fill_null(block.column(ERROR), ""), f"{OUTAGE}: ")
    count = pc.sum(marked).as_py() or 0
    if count:
        first = block.column(ERROR).filter(marked)[0].as_py().removeprefix(f"{OUTAGE}: ")
        untagged_count = count + not_yet_seen
        raise storage.StorageError(f"{first}; {untagged_count} track(s) untagged; run again when it answers",
                                   uri="", endpoint="")


def _refuse_outage(missing: pa.Table, partition: str) -> None:
    """Batches lost while the store was down are the job's failure, never the tracks'."""
    for uri in (missing.column("uri")[0].as_py(), partition):
        if not storage.reachable(uri):
            raise storage.StorageError(f"cannot reach the store of {storage.redact(uri)}: {missing.num_rows} "
                                       "track(s) untagged; run again when it answers", uri=storage.redact(uri),
                                       endpoint=storage.endpoint_of(uri))


def _crashed_rows(missing: pa.Table, schema: PredictionSchema) -> pa.Table:
    ids = missing.column("track_id").to_pylist()
    error = f"{CRASHED}: processing this track killed its tagging actor, alone and after every restart"
    return build_table(schema, ids, missing.column("uri").to_pylist(), [float("nan")] * len(ids),
                       [0] * len(ids), [error] * len(ids),
                       {t: np.zeros((0, len(spec.labels)), np.float32) for t, spec in schema.tasks.items()}, None,
                       tagged_at=datetime.now(timezone.utc))


def _log_gpu_busy(done: pa.Table, wall: float, taggers: int) -> None:
    busy = float(pc.sum(done.column("busy_s")).as_py() or 0.0) / max(1, taggers)
    log.info(f"GPU taggers busy {busy:.1f} s of {wall:.1f} s (idle {max(0.0, 1 - busy / wall) if wall > 0 else 0:.0%}: "
             "below ~20% the run is GPU-bound, above it decode-bound)")


def read_validated_catalog(cfg: TagConfig) -> pa.Table:
    """The run's catalog (``track_id``, ``uri``), refused up front when it breaks a rule."""
    catalog = read_catalog(cfg.manifest)
    problems = locality_problems(catalog.column("uri"), cfg.manifest, allow_local=cfg.allow_local_uris or None,
                                 allow_other_buckets=cfg.allow_other_buckets or None)
    if problems:
        raise ManifestError(problems, storage.redact(cfg.manifest))
    return catalog


def plan(catalog: pa.Table, index: pa.Table) -> tuple[pa.Table, int, int]:
    """``(todo, done, retried)``: the tracks of ``catalog`` to tag given the partition's
    rows ``index``: never tagged, or only with a retryable error; how many are done
    already, and how many of ``todo`` are retries."""
    retryable = _retryable_mask(index.column("error"))
    todo = untagged(catalog, index.filter(pc.invert(retryable)).select(["track_id"]))
    again = index.filter(retryable).column("track_id")
    retry = int(pc.sum(pc.is_in(todo.column("track_id"), value_set=again)).as_py() or 0) if len(again) else 0
    return todo, catalog.num_rows - todo.num_rows, retry


def _retryable_mask(errors: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where an error row names a :data:`~mgc.audio.decode.RETRYABLE` reason
    (vectorised: a partition holds millions of rows)."""
    reasons = pc.list_element(pc.split_pattern(pc.fill_null(errors, ""), ":", max_splits=1), 0)
    return pc.is_in(reasons, value_set=pa.array(sorted(RETRYABLE), pa.string()))


def run_tagging(cfg: TagConfig, cpu_actor: type[DecodeTagger] = DecodeTagger) -> TagSummary:
    """Tag every track of ``cfg.manifest`` that this model set has not tagged yet (or only
    with a retryable error), holding the partition's lease throughout. ``cpu_actor`` is
    the CPU runs' actor class (tests pass one that crashes on a chosen track)."""
    if not cfg.checkpoint:
        raise ValueError("give at least one --checkpoint")
    started = time.time()
    with contextlib.ExitStack() as stack:  # remote checkpoints: temporary copies, removed after reading
        local_dirs = [stack.enter_context(local_copy(uri)) for uri in cfg.checkpoint]
        metas = [read_meta(directory) for directory in local_dirs]
        ids = [model_id(d, m) for d, m in zip(local_dirs, metas)]
    run_id = "--".join(ids)
    if any(m.audio != metas[0].audio for m in metas[1:]):
        raise ValueError("the checkpoints use different audio front ends; tag with each in its own run")
    schema = PredictionSchema(combined_tasks([m.tasks for m in metas]), cfg.embeddings)  # refuse clashes up front
    partition = partition_uri(cfg.output, run_id)
    catalog = read_validated_catalog(cfg)  # a bad manifest is refused before --retag deletes anything
    with PartitionLease.acquire(partition, purpose=f"jobs/tag.py {run_id}", force=cfg.force) as lease:
        if cfg.retag:
            log.info("--retag: removed %d file(s) of %s", remove_parts(partition, lease.token), partition)
        stale = storage.remove_stale_temporaries(partition)
        if stale:
            log.info(f"removed {stale} stale temporary file(s) a killed run left in {partition}")
        superseded = drop_superseded(partition, lease.token, partition_rows(partition))  # a crashed run's doubles
        todo, done, retry = plan(catalog, partition_rows(partition))
        if cfg.limit is not None:
            todo = todo.slice(0, cfg.limit)
        log.info(f"{run_id}: {catalog.num_rows} tracks, {done} already tagged, tagging {todo.num_rows} "
                 f"({retry} of them again after a retryable error)")
        if todo.num_rows == 0:
            return TagSummary(cfg.output, run_id, done, 0, {}, time.time() - started, 0, superseded)
        spec = TaggerSpec(checkpoints=tuple(cfg.checkpoint), model_ids=tuple(ids), partition=partition,
                          embeddings=cfg.embeddings, top_k=cfg.top_k, batch_size=cfg.batch_size,
                          lease_token=lease.token, max_windows=cfg.max_windows, **limits(cfg.data))
        audio = metas[0].audio if cfg.max_windows is None else dataclasses.replace(metas[0].audio, max_windows=cfg.max_windows)
        results = _run_rounds(cfg, todo, spec, schema, audio, lease, cpu_actor)
        superseded += drop_superseded(partition, lease.token, partition_rows(partition, ["track_id"]))
    errors = [e for e in results.column(ERROR).to_pylist() if isinstance(e, str)]
    failed = Counter(e.split(":", 1)[0] for e in errors)
    return TagSummary(cfg.output, run_id, done, results.num_rows - len(errors), dict(failed), time.time() - started,
                      retry, superseded)
