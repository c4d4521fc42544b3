"""One ``model_id=`` partition of the predictions: what it holds, and keeping it one row per track.

Why a module of its own: every run of one model set writes into the same partition, and
the contract is one row per track there (docs/architecture.md, "Data contracts"). Rows
come from many runs: a retryable error row (``missing``, ``fetch_failed``, ``storage``,
``timeout``) is tagged again by a later run, which writes the new row in a new file; a
worker orphaned by a killed run may finish a batch another run also tagged. So after
writing, the run (still holding the partition's lease, :mod:`mgc.io.lease`) rewrites the
few files holding superseded rows without them: a reader that opens the partition after
a run sees exactly one row per track, the best one (a scored row over an error row, then
the newest). A reader during a run can deduplicate the same way:
``df.sort_values("tagged_at").drop_duplicates("track_id", keep="last")``.
"""

from __future__ import annotations

import hashlib
import io
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from mgc.io import storage
from mgc.io.lease import check_holder
from mgc.log import get_logger
from mgc.tagging.schema import PARTITION

log = get_logger()

PART_PREFIX = "part-"
INDEX_COLUMNS = ("track_id", "error", "tagged_at")


def partition_uri(output: str, run_id: str) -> str:
    return storage.join(output, f"{PARTITION}={run_id}")


def model_ids(output: str) -> list[str]:
    """The model ids with a partition under the predictions root ``output``, sorted."""
    if not storage.exists(output):
        return []
    fs, path = storage.filesystem_for(output)
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    return sorted(n.split("=", 1)[1] for n in names if n.startswith(f"{PARTITION}="))


def resolve_partition(output: str, model_id: str | None) -> tuple[str, str]:
    """``(model_id, partition uri)`` of one model set's predictions under ``output``.

    Without ``model_id`` the root must hold exactly one partition; otherwise the error
    lists the ones it holds, so the user can pick with ``--model-id``.
    """
    found = model_ids(output)
    if model_id is None:
        if len(found) != 1:
            raise ValueError(f"{storage.redact(output)} holds {len(found)} model_id partitions "
                             f"({', '.join(found) or 'none'}): choose one with --model-id")
        model_id = found[0]
    elif model_id not in found:
        raise ValueError(f"no partition {PARTITION}={model_id} under {storage.redact(output)}; "
                         f"it holds: {', '.join(found) or 'none'}")
    return model_id, partition_uri(output, model_id)


def dataset(partition: str) -> pads.Dataset | None:
    """The partition's predictions files as a pyarrow dataset (None when there is none yet)."""
    if not storage.exists(partition):
        return None
    filesystem, path = storage.pyarrow_filesystem(partition)
    return pads.dataset(path, filesystem=filesystem, format="parquet", ignore_prefixes=[".", "_"])


def partition_index(partition: str) -> pa.Table:
    """``track_id``, ``error``, ``tagged_at`` and ``file`` (its path) of every row written.

    One scan of three columns, batch by batch (bounded by the rows, not their scores).
    """
    data = dataset(partition)
    schema = pa.schema([("track_id", pa.string()), ("error", pa.string()),
                        ("tagged_at", pa.timestamp("us", tz="UTC")), ("file", pa.string())])
    if data is None:
        return schema.empty_table()
    parts = []
    for tagged in data.scanner(columns=list(INDEX_COLUMNS)).scan_batches():
        batch = tagged.record_batch
        if batch.num_rows:
            parts.append(pa.table({
                "track_id": batch.column("track_id").cast(pa.string()),
                "error": batch.column("error").cast(pa.string()),
                "tagged_at": batch.column("tagged_at").cast(schema.field("tagged_at").type),
                "file": pa.array([tagged.fragment.path] * batch.num_rows, pa.string()),
            }))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def superseded(index: pa.Table) -> pa.Table:
    """The rows of ``index`` that another row of the same track supersedes: per track the
    best row stays (no error before an error, then the newest ``tagged_at``)."""
    if index.num_rows == 0:
        return index
    ranked = index.append_column("_row", pa.array(np.arange(index.num_rows)))
    ranked = ranked.append_column("_failed", pc.is_valid(index.column("error")))
    order = ranked.sort_by([("track_id", "ascending"), ("_failed", "ascending"), ("tagged_at", "descending")])
    ids = order.column("track_id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    dropped = order.filter(pa.array(~first)).column("_row")
    return index.take(dropped)


def has_duplicates(rows: pa.Table) -> bool:
    """Whether any track has more than one row in ``rows`` (a ``track_id`` column)."""
    return pc.count_distinct(rows.column("track_id")).as_py() < rows.num_rows


def drop_superseded(partition: str, lease_token: str | None, rows: pa.Table) -> int:
    """Rewrite the files holding superseded rows without them (removing emptied files);
    returns the rows removed. Each file is replaced whole (atomic rename or one PUT).
    ``rows`` (the partition's ``track_id`` column at least) says whether there is anything
    to do; only then is the partition scanned again for which file holds what."""
    if not has_duplicates(rows):
        return 0
    stale = superseded(partition_index(partition))
    if stale.num_rows == 0:
        return 0
    filesystem, _ = storage.pyarrow_filesystem(partition)
    for path in sorted(set(stale.column("file").to_pylist())):
        if lease_token is not None:
            check_holder(partition, lease_token)
        gone = pc.equal(stale.column("file"), path)
        times = stale.filter(gone).select(["track_id", "tagged_at"])
        table = pq.read_table(path, filesystem=filesystem)
        keys = table.select(["track_id", "tagged_at"]).append_column("_row", pa.array(np.arange(table.num_rows)))
        drop = keys.join(times, keys=["track_id", "tagged_at"], join_type="inner").column("_row").to_numpy()
        keep = np.ones(table.num_rows, dtype=bool)
        keep[drop] = False
        uri = _uri_of(partition, path)
        if keep.any():
            sink = io.BytesIO()
            pq.write_table(table.filter(pa.array(keep)), sink)
            storage.write_bytes(uri, sink.getvalue())
        else:
            storage.remove(uri)
    log.info("superseded %d row(s) in %s", stale.num_rows, partition)
    return stale.num_rows


def _uri_of(partition: str, path: str) -> str:
    """The uri of a file the pyarrow dataset of ``partition`` listed as ``path``."""
    return storage.join(partition, posixpath.basename(path))


def remove_parts(partition: str, lease_token: str) -> int:
    """``--retag``: delete every predictions file of the partition (the lease stays)."""
    data = dataset(partition)
    if data is None:
        return 0
    check_holder(partition, lease_token)
    files = [posixpath.basename(path) for path in data.files]
    for name in files:
        storage.remove(storage.join(partition, name))
    return len(files)


def file_name(track_ids: list[str]) -> str:
    """Deterministic per batch: a retried batch rewrites the same file, never a second one."""
    digest = hashlib.sha256("\n".join(sorted(track_ids)).encode()).hexdigest()[:24]
    return f"{PART_PREFIX}{digest}.parquet"


def write_rows(partition: str, table: pa.Table, lease_token: str | None) -> str:
    """Write ``table`` (predictions rows the driver made, e.g. ``crashed`` tracks) as one file."""
    name = file_name(table.column("track_id").to_pylist())
    sink = io.BytesIO()
    pq.write_table(table, sink)
    if lease_token is not None:
        check_holder(partition, lease_token)
    uri = storage.join(partition, name)
    storage.write_bytes(uri, sink.getvalue())
    return uri
