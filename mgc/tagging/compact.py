"""Merge a predictions partition's small files into few large ones, under its lease.

Why: every tagging call writes its own file (a few hundred tracks), so a 10M-track
catalog grows tens of thousands of files over its nightly runs, and every reader and
every rerun's planning pays a request per file. Compaction rewrites them into files of
about ``target_rows`` rows. It holds the partition's lease (no tagging run writes
meanwhile), writes each merged file whole before it deletes the files it replaces, and
drops superseded rows on the way (:mod:`mgc.tagging.partition`): a crash at any point
leaves every row readable, at worst twice, which the next run or compaction resolves.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from mgc.io import storage
from mgc.io.lease import PartitionLease, check_holder
from mgc.log import get_logger
from mgc.tagging.partition import drop_superseded, file_name
from mgc.tagging.plan import partition_rows

log = get_logger()

TARGET_ROWS = 200_000
"""Rows per merged file: tens of MB of tag columns, one request where there were ~800."""


@dataclass(frozen=True)
class CompactSummary:
    partition: str
    files_before: int
    files_after: int
    rows: int
    superseded: int


def compact_partition(partition: str, target_rows: int = TARGET_ROWS, force: bool = False) -> CompactSummary:
    """Compact ``partition`` (a ``<output>/model_id=<id>`` folder) holding its lease."""
    if target_rows < 1:
        raise ValueError(f"target_rows must be >= 1, not {target_rows}")
    with PartitionLease.acquire(partition, purpose="jobs/compact.py", force=force) as lease:
        superseded = drop_superseded(partition, lease.token, partition_rows(partition, ["track_id"]))
        if not storage.exists(partition):
            return CompactSummary(partition, 0, 0, 0, superseded)
        filesystem, path = storage.pyarrow_filesystem(partition)
        dataset = pads.dataset(path, filesystem=filesystem, format="parquet", ignore_prefixes=[".", "_"])
        small = [f for f in dataset.files if pq.ParquetFile(f, filesystem=filesystem).metadata.num_rows < target_rows]
        before = len(dataset.files)
        rows = 0
        group: list[str] = []
        count = 0
        for file in small:
            group.append(file)
            count += pq.ParquetFile(file, filesystem=filesystem).metadata.num_rows
            if count >= target_rows:
                rows += _merge(partition, group, filesystem, lease.token)
                group, count = [], 0
        if len(group) > 1:
            rows += _merge(partition, group, filesystem, lease.token)
        after = len(pads.dataset(path, filesystem=storage.pyarrow_filesystem(partition)[0], format="parquet",
                                 ignore_prefixes=[".", "_"]).files)
    log.info("compacted %s: %d -> %d files (%d rows merged, %d superseded rows dropped)",
             partition, before, after, rows, superseded)
    return CompactSummary(partition, before, after, rows, superseded)


def _merge(partition: str, files: list[str], filesystem, lease_token: str) -> int:
    """Write ``files`` as one file (whole), then delete them; returns the rows merged."""
    tables = [pq.read_table(f, filesystem=filesystem) for f in files]
    merged = pa.concat_tables(tables, promote_options="default")  # runs with and without --embeddings
    sink = io.BytesIO()
    pq.write_table(merged, sink)
    target = file_name(merged.column("track_id").to_pylist())
    check_holder(partition, lease_token)
    storage.write_bytes(storage.join(partition, target), sink.getvalue())
    for f in files:
        if posixpath.basename(f) != target:
            storage.remove(storage.join(partition, posixpath.basename(f)))
    return merged.num_rows
