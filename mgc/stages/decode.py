"""Ray Data stage: manifest rows -> CPU decode+mel actors -> one row per track.

Why one row per track: a track's windows travel together as one ``[windows, n_mels,
frames]`` array, so track-level aggregation needs no shuffle or groupby, and a track that
fails is one row with ``error`` set instead of a hole in the data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from ray.data.expressions import col

from mgc.audio.decode import track_error
from mgc.audio.track import load_track
from mgc.config import AudioConfig, DataConfig
from mgc.audio.logmel import log_mel

MEL = "mel"
WINDOWS = "windows"
ERROR = "error"


def _object_array(values: list[Any]) -> np.ndarray:
    """An object ndarray holding ``values`` one per slot (ragged arrays stay ragged)."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


class DecodeMel:
    """Callable class run by Ray Data actors: decode each uri and build its log-mels.

    A track that cannot be fetched, decoded, is too short or silent gets an empty array
    and ``error`` = ``"<reason>: <detail>"``; nothing about one track stops the job. An
    object store that stays down does (:class:`mgc.io.storage.StorageError`): every track
    would otherwise become an error row that a rerun skips as done. With
    ``features="windows"`` the raw audio windows go out instead (column ``windows``), for
    a consumer that computes the mels on a GPU. ``track_timeout`` and ``max_bytes`` are
    the per-track limits of :class:`mgc.config.DataConfig`.
    """

    def __init__(self, audio: dict[str, Any], features: str = MEL, track_timeout: float | None = None,
                 max_bytes: int | None = None):
        if features not in (MEL, WINDOWS):
            raise ValueError(f"features must be {MEL!r} or {WINDOWS!r}, not {features!r}")
        self.cfg = AudioConfig.from_dict(audio)
        self.features = features
        self.track_timeout = track_timeout
        self.max_bytes = max_bytes

    def decode(self, uri: str) -> tuple[np.ndarray, float, str | None]:
        """``(mels or windows, duration_s, error)`` of one track; never raises for a bad track."""
        try:
            track = load_track(uri, self.cfg, self.max_bytes, self.track_timeout)
            values = log_mel(track.windows, self.cfg) if self.features == MEL else track.windows
            return values, track.duration_s, None
        except Exception as err:  # noqa: BLE001 - classified (or re-raised) by track_error
            return self._empty(), float("nan"), track_error(err)

    def _empty(self) -> np.ndarray:
        if self.features == WINDOWS:
            return np.zeros((0, self.cfg.window_samples), dtype=np.float32)
        return np.zeros((0, self.cfg.n_mels, self.cfg.frames_per_window), dtype=np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [self.decode(str(uri)) for uri in batch["uri"]]
        mels = [r[0] for r in results]
        out = dict(batch)
        out[self.features] = _object_array(mels)
        out["n_segments"] = np.array([len(m) for m in mels], dtype=np.int32)
        out["duration_s"] = np.array([r[1] for r in results], dtype=np.float32)
        out[ERROR] = np.array([r[2] for r in results], dtype=object)
        return out


def limits(data: DataConfig) -> dict[str, Any]:
    """The per-track limits of ``data`` as :class:`DecodeMel` keyword arguments."""
    return {"track_timeout": data.track_timeout, "max_bytes": data.max_bytes}


def decode_concurrency(data: DataConfig) -> int:
    """Number of decode actors: as configured, else as many as the cluster's CPUs allow."""
    if data.decode_concurrency:
        return data.decode_concurrency
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, int(cpus // max(data.decode_num_cpus, 1e-3)))


# Rows per input block of an Arrow table (a tagging catalog): few, large blocks.
INPUT_BLOCK_ROWS = 65536


def arrow_blocks(table: pa.Table, rows: int = INPUT_BLOCK_ROWS) -> ray.data.Dataset:
    """``table`` as a Ray dataset of blocks of ``rows`` rows (1.25M blocks of 8 rows at 10M
    tracks were a scheduling cost of their own)."""
    return ray.data.from_arrow([table.slice(start, rows) for start in range(0, table.num_rows, rows)] or [table])


def track_dataset(
    table: pd.DataFrame | pa.Table, audio: AudioConfig, data: DataConfig, features: str = MEL,
    decoder: type[DecodeMel] = DecodeMel,
) -> ray.data.Dataset:
    """Lazy dataset of decoded tracks, one row per manifest row.

    ``table`` must hold ``uri``; every other column is carried through unchanged.
    ``features`` picks log-mels (``mel``) or raw windows (``windows``) per track.
    ``decoder`` is the actor class (a :class:`DecodeMel`; benchmarks pass a timed one).
    """
    size = data.decode_batch_size
    if isinstance(table, pa.Table):  # a catalog: large input blocks, the actors still get `size` rows a call
        dataset = arrow_blocks(table)
    else:
        blocks = [table.iloc[start : start + size] for start in range(0, len(table), size)]
        dataset = ray.data.from_pandas(blocks or [table])
    return dataset.map_batches(
        decoder,
        fn_constructor_kwargs={"audio": audio.to_dict(), "features": features, **limits(data)},
        batch_size=data.decode_batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=decode_concurrency(data)),
        num_cpus=data.decode_num_cpus,
    )


def failed_tracks(decoded: ray.data.Dataset) -> pd.DataFrame:
    """``track_id``, ``uri`` and ``error`` of every track that failed to decode."""
    columns = ["track_id", "uri", ERROR]
    failed = decoded.filter(expr=col(ERROR).is_not_null()).select_columns(columns).to_pandas()
    return failed.reindex(columns=columns)


def good_tracks(decoded: ray.data.Dataset) -> ray.data.Dataset:
    """Tracks that decoded into at least one window."""
    return decoded.filter(expr=col(ERROR).is_null())


def split_of(decoded: ray.data.Dataset, split: str) -> ray.data.Dataset:
    """Rows of one split (``train``/``validation``/``test``)."""
    return decoded.filter(expr=col("split") == split)
