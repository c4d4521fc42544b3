"""Backbone embeddings per track window: a Ray Data stage and a Parquet cache.

Why: a frozen-embedding probe (``--probe``) trains only the heads, so the backbone runs
over each track exactly once; its window embeddings are small (512 floats for mn04 per
3 s window) and are kept in a Parquet cache, so the next probe with the same backbone,
weights and front end - new labels, new splits, a grown manifest - embeds only the
tracks it has not seen.

Cache layout (local path or ``s3://``): ``<cache>/<backbone key>/backbone.json`` says
what the key stands for; ``part-<hash>.parquet`` files hold one row per track that
embedded fine: ``track_id``, ``uri``, ``duration_s``, ``n_windows``, ``dim`` and
``embedding`` (``list<float32>``, the ``[n_windows, dim]`` windows flattened). A track is
a hit when its ``(track_id, uri)`` pair is there. Failed tracks are never cached: a
missing file may be uploaded later, and a rerun must try again.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import torch

from mgc.io import storage
from mgc.config import AudioConfig, DataConfig
from mgc.stages.decode import ERROR, MEL, WINDOWS, DecodeMel, limits, track_dataset
from mgc.models.efficientat import WeightsError, resolve_weights, sha256_of
from mgc.audio.logmel import torch_frontend
from mgc.models.zoo import ARCHITECTURES, TaggerModel
from mgc.log import get_logger

log = get_logger()

EMBEDDING = "embedding"
CACHE_FORMAT = 1
"""Bumped whenever what an embedding means changes (pooling, layer): old keys then miss."""
BACKBONE_FILE = "backbone.json"
# Windows per forward pass on CPU (as mgc.tagging.actors.CPU_MAX_BATCH: activations stay in cache).
CPU_BATCH = 16
# Tracks per cache file: a few MB each (mn04, ten 3 s windows a track).
WRITE_ROWS = 512


@dataclass(frozen=True)
class BackboneSpec:
    """What an embedding depends on: the arch, the exact weights and the front end."""

    arch: str
    weights_sha256: str
    audio: AudioConfig

    def describe(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "arch": self.arch, "weights_sha256": self.weights_sha256,
                "audio": self.audio.to_dict()}

    def key(self) -> str:
        """``<arch>-<16 hex>``: a digest of :meth:`describe` (readable and collision-safe)."""
        text = json.dumps(self.describe(), sort_keys=True)
        return f"{self.arch}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def default_cache() -> str:
    """``$XDG_CACHE_HOME/mgc/embeddings`` (``~/.cache/mgc/embeddings``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(root) / "mgc" / "embeddings")


def backbone_model(arch: str, weights_file: str, device: torch.device | str = "cpu") -> TaggerModel:
    """The pretrained backbone in a :class:`TaggerModel` (its heads unused), in eval mode."""
    backbone = ARCHITECTURES[arch](weights_file=weights_file)
    return TaggerModel(backbone, {"unused": 1}).to(device).eval()


class Embedder:
    """Ray Data actor: the backbone embedding of every window of each track.

    With ``decode=True`` (CPU runs) it decodes and featurises its own tracks (the training
    decoder, :class:`mgc.stages.decode.DecodeMel`); otherwise it takes raw ``windows`` from CPU
    decode actors and computes the front end on its device (GPU runs). Output, per track:
    ``embedding`` (flattened ``[n_windows, dim]`` float32), ``n_windows``, ``dim``,
    ``duration_s`` and ``error`` (failed tracks get an empty embedding and their reason).
    """

    def __init__(self, arch: str, weights_file: str, weights_sha256: str, audio: dict[str, Any],
                 decode: bool = True, use_gpu: bool = False, torch_threads: int = 1, batch_size: int = 64,
                 pretrained: str | None = None, limits: dict[str, Any] | None = None):
        if pretrained and not Path(weights_file).exists():  # another node: its own hub cache
            weights_file = str(resolve_weights(arch, pretrained, None))
        # The cache key names these exact weights: a node holding another file at that
        # path must not fill the cache with other embeddings.
        if sha256_of(weights_file) != weights_sha256:
            raise WeightsError(f"{weights_file} on this node is not the weights the run started with "
                               f"(SHA-256 {weights_sha256})")
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(torch_threads)))
        self.model = backbone_model(arch, weights_file, self.device)
        self.cfg = AudioConfig.from_dict(audio)
        self.decoder = DecodeMel(audio, MEL, **(limits or {})) if decode else None
        self.frontend = None if decode else torch_frontend(self.cfg).to(self.device)
        self.batch_size = CPU_BATCH if self.device.type == "cpu" else batch_size

    @torch.inference_mode()
    def embed(self, inputs: np.ndarray) -> np.ndarray:
        """``[windows, n_mels, frames]`` mels (or raw windows on the GPU path) -> ``[windows, dim]``."""
        parts = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(inputs[start : start + self.batch_size], np.float32))
            chunk = chunk.to(self.device)
            mels = self.frontend(chunk) if self.frontend is not None else chunk
            parts.append(self.model.embed(mels).float().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        embeddings, errors, durations = [], [], []
        for i, uri in enumerate(batch["uri"]):
            if self.decoder is not None:
                values, duration, error = self.decoder.decode(str(uri))
            else:
                error = batch[ERROR][i] if isinstance(batch[ERROR][i], str) else None
                values, duration = np.asarray(batch[WINDOWS][i]), float(batch["duration_s"][i])
            vectors = self.embed(values) if error is None else np.zeros((0, 0), np.float32)
            embeddings.append(vectors)
            errors.append(error)
            durations.append(duration)
        out = {"track_id": batch["track_id"], "uri": batch["uri"]}
        out[EMBEDDING] = _object_rows([e.reshape(-1) for e in embeddings])
        out["n_windows"] = np.array([len(e) for e in embeddings], dtype=np.int32)
        out["dim"] = np.array([e.shape[1] if e.ndim == 2 else 0 for e in embeddings], dtype=np.int32)
        out["duration_s"] = np.array(durations, dtype=np.float32)
        out[ERROR] = np.array(errors, dtype=object)
        return out


def _errors(rows: pd.DataFrame) -> np.ndarray:
    """Which rows failed (an all-null error column comes back from Arrow as NaN floats)."""
    return np.array([isinstance(e, str) for e in rows[ERROR]], dtype=bool)


def _object_rows(values: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def embed_dataset(table: pd.DataFrame, spec: BackboneSpec, weights_file: str, data: DataConfig,
                  use_gpu: bool = False, pretrained: str | None = None) -> ray.data.Dataset:
    """The Ray Data stage: ``table`` (``track_id``, ``uri``) -> one embedding row per track.

    On CPUs one kind of actor decodes and embeds its own tracks (one per CPU, one torch
    thread each: the backbone is most of the cost); with ``use_gpu``, CPU actors decode raw
    windows and one GPU actor per GPU computes the front end and the embeddings.
    """
    kwargs = {"arch": spec.arch, "weights_file": weights_file, "weights_sha256": spec.weights_sha256,
              "audio": spec.audio.to_dict(), "pretrained": pretrained}
    if use_gpu:
        decoded = track_dataset(table[["track_id", "uri"]], spec.audio, data, WINDOWS)
        gpus = max(1, int(ray.cluster_resources().get("GPU", 1)))
        return decoded.map_batches(
            Embedder, fn_constructor_kwargs={**kwargs, "decode": False, "use_gpu": True},
            batch_size=data.decode_batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=gpus), num_gpus=1,
        )
    actors = data.decode_concurrency or max(1, int(ray.cluster_resources().get("CPU", 1.0)))
    rows = max(1, min(data.decode_batch_size, math.ceil(len(table) / (4 * actors))))
    ids = table[["track_id", "uri"]].reset_index(drop=True)
    blocks = [ids.iloc[start : start + rows] for start in range(0, len(ids), rows)]
    return ray.data.from_pandas(blocks or [ids]).map_batches(
        Embedder, fn_constructor_kwargs={**kwargs, "decode": True, "torch_threads": 1, "limits": limits(data)},
        batch_size=rows, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
    )


_SCHEMA = pa.schema([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("duration_s", pa.float32()),
    pa.field("n_windows", pa.int32()),
    pa.field("dim", pa.int32()),
    pa.field(EMBEDDING, pa.list_(pa.float32())),
])


@dataclass(frozen=True)
class TrackEmbeddings:
    """The embeddings of a set of tracks: ``windows[i]`` is track ``track_ids[i]``'s ``[n, dim]``."""

    track_ids: list[str]
    windows: list[np.ndarray]
    duration_s: list[float]

    def by_id(self) -> dict[str, np.ndarray]:
        return dict(zip(self.track_ids, self.windows))


class EmbeddingCache:
    """The cached window embeddings of one backbone (:class:`BackboneSpec`) under ``root``."""

    def __init__(self, root: str, spec: BackboneSpec):
        self.spec = spec
        self.uri = storage.join(root, spec.key())

    def read(self, table: pd.DataFrame) -> TrackEmbeddings:
        """The cached embeddings of ``table``'s ``(track_id, uri)`` pairs (hits only)."""
        if not storage.exists(self.uri):
            return TrackEmbeddings([], [], [])
        filesystem, path = storage.pyarrow_filesystem(self.uri)
        dataset = pads.dataset(path, filesystem=filesystem, format="parquet", schema=_SCHEMA,
                               ignore_prefixes=[".", "_", BACKBONE_FILE])
        wanted = pa.table({"track_id": table["track_id"].astype(str).tolist(),
                           "uri": table["uri"].astype(str).tolist()})
        cached = dataset.to_table()
        keys = cached.select(["track_id", "uri"]).append_column("_row", pa.array(np.arange(len(cached))))
        matched = keys.join(wanted, keys=["track_id", "uri"], join_type="inner").column("_row").to_numpy()
        hits = cached.take(np.sort(matched))
        frame = hits.select(["track_id", "duration_s", "n_windows", "dim"]).to_pandas()
        frame["_row"] = np.arange(len(frame))
        frame = frame.drop_duplicates("track_id", keep="last")
        lists = hits.column(EMBEDDING).combine_chunks()
        values = lists.values.to_numpy(zero_copy_only=False)
        offsets = lists.offsets.to_numpy()
        windows = [values[offsets[row] : offsets[row + 1]].reshape(n, d)
                   for row, n, d in zip(frame["_row"], frame["n_windows"], frame["dim"])]
        return TrackEmbeddings(frame["track_id"].tolist(), windows, frame["duration_s"].astype(float).tolist())

    def write(self, rows: pd.DataFrame) -> int:
        """Add the fine tracks of ``rows`` (an :class:`Embedder` output) as one Parquet file."""
        good = rows[~_errors(rows)]
        if good.empty:
            return 0
        backbone = storage.join(self.uri, BACKBONE_FILE)
        if not storage.exists(backbone):
            storage.write_text(backbone, json.dumps(self.spec.describe(), indent=2, sort_keys=True))
        table = pa.Table.from_pydict({
            "track_id": good["track_id"].astype(str).tolist(),
            "uri": good["uri"].astype(str).tolist(),
            "duration_s": good["duration_s"].astype(np.float32).tolist(),
            "n_windows": good["n_windows"].astype(np.int32).tolist(),
            "dim": good["dim"].astype(np.int32).tolist(),
            EMBEDDING: [np.asarray(e, np.float32) for e in good[EMBEDDING]],
        }, schema=_SCHEMA)
        digest = hashlib.sha256("\n".join(sorted(table.column("track_id").to_pylist())).encode()).hexdigest()[:24]
        sink = io.BytesIO()
        pq.write_table(table, sink)
        storage.write_bytes(storage.join(self.uri, f"part-{digest}.parquet"), sink.getvalue())
        return len(good)


@dataclass(frozen=True)
class EmbedResult:
    """Every track's embeddings (cached or new), the failed tracks, and how many were new."""

    embeddings: TrackEmbeddings
    skipped: pd.DataFrame
    computed: int
    cached: int


def embed_tracks(table: pd.DataFrame, spec: BackboneSpec, weights_file: str, cache_root: str,
                 data: DataConfig = DataConfig(), use_gpu: bool = False, pretrained: str | None = None,
                 ) -> EmbedResult:
    """Embeddings of every track of ``table``: cache hits read back, the rest embedded on
    Ray (Ray initialised by the caller) and added to the cache. ``weights_file`` is the
    driver's copy; with ``pretrained`` an actor on a node without it fetches its own."""
    cache = EmbeddingCache(cache_root, spec)
    hits = cache.read(table)
    todo = table[~table["track_id"].astype(str).isin(set(hits.track_ids))]
    log.info("embeddings %s: %d of %d tracks cached in %s, embedding %d", spec.key(), len(hits.track_ids),
             len(table), cache.uri, len(todo))
    new = TrackEmbeddings([], [], [])
    failures: list[pd.DataFrame] = []
    if not todo.empty:
        # Written to the cache as they come: a run stopped half-way keeps what it embedded.
        stage = embed_dataset(todo, spec, weights_file, data, use_gpu, pretrained)
        for batch in stage.iter_batches(batch_size=WRITE_ROWS, batch_format="pandas"):
            cache.write(batch)
            is_error = _errors(batch)
            failures.append(batch.loc[is_error, ["track_id", "uri", ERROR]])
            fine = batch[~is_error]
            new.track_ids.extend(fine["track_id"].astype(str))
            new.windows.extend(np.asarray(e, np.float32).reshape(n, d)
                               for e, n, d in zip(fine[EMBEDDING], fine["n_windows"], fine["dim"]))
            new.duration_s.extend(fine["duration_s"].astype(float))
    merged = TrackEmbeddings(hits.track_ids + new.track_ids, hits.windows + new.windows,
                             hits.duration_s + new.duration_s)
    skipped = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame(columns=["track_id", "uri", ERROR])
    return EmbedResult(merged, skipped, computed=len(new.track_ids), cached=len(hits.track_ids))
