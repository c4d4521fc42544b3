"""`jobs/index.py`: a vector index over one predictions partition's ``embedding`` column.

Layout of an index (a folder, local or ``s3://``)::

    index.json              what it is: model_id, kind, size, checkpoints, the files below
    vectors-<n>.faiss       the FAISS index (mgc.catalog.vectors), n = vectors it holds
    tracks-<n>.parquet      row i = vector i: track_id, genre, genre_score, genres, moods

Why versioned file names with ``index.json`` written last: an update (a rerun that adds
the newly tagged tracks) writes new files beside the old ones and then points
``index.json`` at them, so a reader, or a run killed halfway, never sees a FAISS file
and a track map that disagree; the superseded pair is deleted afterwards.

Embeddings are read batch by batch with pyarrow (``IndexConfig.batch_rows`` rows), never
the whole column at once. Only scored rows (no ``error``) with an embedding are indexed,
one per track.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mgc.catalog import vectors
from mgc.catalog.vectors import IndexLayout
from mgc.config import IndexConfig
from mgc.io import storage
from mgc.log import get_logger
from mgc.models.checkpoint import local_copy, model_id, read_meta
from mgc.tagging.partition import dataset, resolve_partition

log = get_logger()

META_NAME = "index.json"
FORMAT_VERSION = 1
# Columns kept beside each vector so neighbours print without reading the predictions.
TRACK_COLUMNS = ("genre", "genre_score", "genres", "moods")


class IndexError_(ValueError):
    """An index that cannot be used as asked (wrong model, unknown track, damaged files)."""


@dataclass(frozen=True)
class IndexMeta:
    """``index.json``."""

    model_id: str
    predictions: str
    layout: IndexLayout
    count: int
    vectors_file: str
    tracks_file: str
    checkpoints: tuple[str, ...] = ()
    built_at: str = ""
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return {"version": self.version, "model_id": self.model_id, "predictions": self.predictions,
                "layout": self.layout.to_dict(), "count": self.count, "vectors_file": self.vectors_file,
                "tracks_file": self.tracks_file, "checkpoints": list(self.checkpoints), "built_at": self.built_at}

    @classmethod
    def from_dict(cls, data: dict) -> IndexMeta:
        return cls(model_id=str(data["model_id"]), predictions=str(data["predictions"]),
                   layout=IndexLayout.from_dict(data["layout"]), count=int(data["count"]),
                   vectors_file=str(data["vectors_file"]), tracks_file=str(data["tracks_file"]),
                   checkpoints=tuple(data.get("checkpoints", ())), built_at=str(data.get("built_at", "")),
                   version=int(data.get("version", FORMAT_VERSION)))


@dataclass
class CatalogIndex:
    """An index loaded for searching: FAISS index, its track map, and where it came from."""

    uri: str
    meta: IndexMeta
    index: object
    tracks: pa.Table
    _positions: dict[str, int] | None = field(default=None, repr=False)

    def position(self, track_id: str) -> int:
        """Row of ``track_id`` in the index; :class:`IndexError_` when it holds no such track."""
        if self._positions is None:
            self._positions = {t: i for i, t in enumerate(self.tracks.column("track_id").to_pylist())}
        try:
            return self._positions[track_id]
        except KeyError:
            raise IndexError_(f"track {track_id!r} is not in the index {storage.redact(self.uri)} "
                              f"({self.meta.count} tracks of model_id {self.meta.model_id}): is it tagged "
                              "with --embeddings and without an error, and was the index updated since?") from None


def read_meta_file(uri: str) -> IndexMeta | None:
    """The index's ``index.json``, or None when ``uri`` holds no index yet."""
    meta_uri = storage.join(uri, META_NAME)
    if not storage.exists(meta_uri):
        return None
    try:
        return IndexMeta.from_dict(json.loads(storage.read_bytes(meta_uri)))
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexError_(f"{storage.redact(meta_uri)} is not an mgc index ({exc})") from None


def _read_faiss(uri: str):
    if storage.is_local(uri):
        return vectors.faiss_module().read_index(storage.filesystem_for(uri)[1])
    return vectors.from_bytes(storage.read_bytes(uri))


def load_index(uri: str, cfg: IndexConfig | None = None) -> CatalogIndex:
    """Open the index at ``uri`` for searching (search knobs from ``cfg``)."""
    meta = read_meta_file(uri)
    if meta is None:
        raise IndexError_(f"no index at {storage.redact(uri)} (no {META_NAME}); build one with jobs/index.py")
    index = _read_faiss(storage.join(uri, meta.vectors_file))
    tracks = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(uri, meta.tracks_file))))
    if index.ntotal != meta.count or tracks.num_rows != meta.count:
        raise IndexError_(f"index {storage.redact(uri)} is damaged: {META_NAME} says {meta.count} vectors, "
                          f"the FAISS file holds {index.ntotal} and the track map {tracks.num_rows}; "
                          "rebuild it with jobs/index.py --rebuild")
    vectors.set_search_params(index, meta.layout, cfg or IndexConfig())
    return CatalogIndex(uri, meta, index, tracks)


# --- reading embeddings -----------------------------------------------------------------


def _scan(partition: str, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    data = dataset(partition)
    if data is None:
        return
    if "embedding" not in data.schema.names:
        raise IndexError_(f"{storage.redact(partition)} has no embedding column: tag with --embeddings first")
    wanted = pc.is_null(pc.field("error")) & pc.is_valid(pc.field("embedding"))
    columns = [c for c in columns if c in data.schema.names]  # a mood-only model has no genre
    for batch in data.to_batches(columns=columns, filter=wanted, batch_size=batch_rows):
        if batch.num_rows:
            yield batch


def _matrix(column: pa.Array) -> np.ndarray:
    """A list<float32> column as a ``[rows, dim]`` array (all rows must share one length)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or lengths[0] == 0):
        raise IndexError_(f"embeddings of different lengths ({lengths.min()}..{lengths.max()}) in one partition")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(column), -1) if len(column) else np.zeros((0, 0), np.float32)


def new_rows(partition: str, known: set[str], cfg: IndexConfig) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """Batches of ``(track columns, normalised vectors)`` for tracks not in ``known``.

    ``known`` grows as rows are yielded, so a track with two scored rows (a partition read
    during a run) is indexed once.
    """
    columns = ["track_id", *TRACK_COLUMNS, "embedding"]
    for batch in _scan(partition, columns, cfg.batch_rows):
        ids = batch.column("track_id").to_pylist()
        keep = np.zeros(len(ids), dtype=bool)
        for i, track in enumerate(ids):
            if track not in known:
                known.add(track)
                keep[i] = True
        if not keep.any():
            continue
        batch = batch.filter(pa.array(keep))
        yield (pa.Table.from_batches([batch.drop_columns(["embedding"])]),
               vectors.normalise(_matrix(batch.column("embedding"))))


def reservoir_sample(partition: str, size: int, cfg: IndexConfig) -> tuple[np.ndarray, int]:
    """A seeded uniform sample of up to ``size`` normalised vectors, and how many rows were seen.

    One pass, bounded memory (Algorithm R over batches).
    """
    rng = np.random.default_rng(cfg.seed)
    sample: np.ndarray | None = None
    seen = 0
    for table, matrix in new_rows(partition, set(), cfg):
        del table
        if sample is None:
            sample = np.empty((size, matrix.shape[1]), dtype=np.float32)
        for row in matrix:
            if seen < size:
                sample[seen] = row
            else:
                slot = int(rng.integers(0, seen + 1))
                if slot < size:
                    sample[slot] = row
            seen += 1
    if sample is None:
        return np.zeros((0, 0), np.float32), 0
    return sample[: min(seen, size)], seen


# --- building ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSummary:
    """What a build did, printed by `jobs/index.py` as JSON."""

    uri: str
    model_id: str
    kind: str
    count: int
    added: int
    rebuilt: bool
    seconds: float

    def to_dict(self) -> dict:
        return {"index": storage.redact(self.uri), "model_id": self.model_id, "kind": self.kind,
                "count": self.count, "added": self.added, "rebuilt": self.rebuilt, "seconds": round(self.seconds, 2)}


def _check_checkpoints(checkpoints: tuple[str, ...], partition_model_id: str) -> None:
    """The given checkpoints must be the model set that wrote the partition."""
    if not checkpoints:
        return
    ids = []
    for uri in checkpoints:
        with local_copy(uri) as local:
            ids.append(model_id(local, read_meta(local)))
    made = "--".join(ids)
    if made != partition_model_id:
        raise IndexError_(f"the checkpoints given are model_id {made}, but the partition was tagged by "
                          f"{partition_model_id}: give the checkpoints that tagged it, in the same order")


def _write(uri: str, meta: IndexMeta, index, tracks: pa.Table, previous: IndexMeta | None) -> None:
    storage.write_bytes(storage.join(uri, meta.vectors_file), vectors.to_bytes(index))
    sink = io.BytesIO()
    pq.write_table(tracks, sink)
    storage.write_bytes(storage.join(uri, meta.tracks_file), sink.getvalue())
    storage.write_text(storage.join(uri, META_NAME), json.dumps(meta.to_dict(), indent=2) + "\n")
    if previous is not None:
        for name in {previous.vectors_file, previous.tracks_file} - {meta.vectors_file, meta.tracks_file}:
            storage.remove(storage.join(uri, name))


def _needs_rebuild(previous: IndexMeta, total: int, cfg: IndexConfig) -> str | None:
    """Why an existing index must be rebuilt rather than extended, or None."""
    wanted = vectors.choose_kind(total, cfg)
    if wanted != previous.layout.kind:
        return f"it is {previous.layout.kind} and {total} vectors call for {wanted}"
    if wanted == vectors.IVFPQ and total > cfg.rebuild_growth * max(previous.layout.built_for, 1):
        return f"its lists were laid out for {previous.layout.built_for} vectors and it would hold {total}"
    return None


def build_index(cfg: IndexConfig) -> IndexSummary:
    """Create or extend the index at ``cfg.output`` from one partition under ``cfg.predictions``."""
    started = datetime.now(timezone.utc)
    tick = time.perf_counter()
    if not cfg.predictions or not cfg.output:
        raise ValueError("give --predictions and --output")
    found_id, partition = resolve_partition(cfg.predictions, cfg.model_id)
    previous = read_meta_file(cfg.output)
    if previous is not None and previous.model_id != found_id:
        raise IndexError_(f"the index at {storage.redact(cfg.output)} was built for model_id {previous.model_id}, "
                          f"not {found_id}: give another --output (one index per model_id)")
    _check_checkpoints(cfg.checkpoint, found_id)
    checkpoints = cfg.checkpoint or (previous.checkpoints if previous else ())

    index = tracks = None
    known: set[str] = set()
    rebuilt = previous is None or cfg.rebuild
    if not rebuilt:
        loaded = load_index(cfg.output, cfg)
        index, tracks, layout = loaded.index, loaded.tracks, loaded.meta.layout
        known = set(tracks.column("track_id").to_pylist())
        pending = _count_new(partition, set(known), cfg)
        reason = _needs_rebuild(previous, len(known) + pending, cfg)
        if pending == 0:
            log.info("index %s is up to date (%d tracks)", storage.redact(cfg.output), len(known))
            return IndexSummary(cfg.output, found_id, layout.kind, len(known), 0, False, time.perf_counter() - tick)
        if reason:
            log.info("rebuilding index %s: %s", storage.redact(cfg.output), reason)
            rebuilt, index, tracks, known = True, None, None, set()
    if rebuilt:
        sample, total = reservoir_sample(partition, cfg.train_size, cfg)
        if total == 0:
            raise IndexError_(f"{storage.redact(partition)} has no scored rows with an embedding to index "
                              "(tag with --embeddings)")
        kind = vectors.choose_kind(total, cfg)
        index, layout = vectors.new_index(kind, sample.shape[1], cfg, sample if kind != vectors.FLAT else None,
                                          count=total)
        del sample
        log.info("building a %s index over %d tracks of model_id %s", kind, total, found_id)
    start_count = 0 if tracks is None else tracks.num_rows
    parts = [] if tracks is None else [tracks]
    for table, matrix in new_rows(partition, known, cfg):
        if matrix.shape[1] != layout.dim:
            raise IndexError_(f"embeddings of {matrix.shape[1]} dimensions, the index has {layout.dim}")
        index.add(matrix)
        parts.append(table)
        log.info("indexed %d tracks", index.ntotal)
    tracks = pa.concat_tables(parts, promote_options="permissive") if parts else None
    count = int(index.ntotal)
    meta = IndexMeta(model_id=found_id, predictions=cfg.predictions, layout=layout, count=count,
                     vectors_file=f"vectors-{count}.faiss", tracks_file=f"tracks-{count}.parquet",
                     checkpoints=tuple(checkpoints), built_at=started.isoformat())
    _write(cfg.output, meta, index, tracks, previous)
    added = count - start_count
    log.info("index %s: %s, %d tracks (%d added)", storage.redact(cfg.output), layout.kind, count, added)
    return IndexSummary(cfg.output, found_id, layout.kind, count, added, rebuilt, time.perf_counter() - tick)


def _count_new(partition: str, known: set[str], cfg: IndexConfig) -> int:
    """Tracks a rerun would add (reads only ``track_id`` of the scored rows)."""
    count = 0
    for batch in _scan(partition, ["track_id"], cfg.batch_rows):
        for track in batch.column("track_id").to_pylist():
            if track not in known:
                known.add(track)
                count += 1
    return count

