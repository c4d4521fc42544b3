"""Which catalog tracks a tagging run still has to do: an Arrow anti-join, not a Python set.

Why Arrow: a nightly run over a 10M-track catalog plans on the Ray driver. Holding the
catalog in pandas and the ids already written as a Python ``set`` costs several hundred
bytes a track (gigabytes at that scale); here the catalog
(:func:`mgc.io.catalog.read_catalog`) and the done rows are Arrow columns, the predictions
partition is read for the asked columns only (a predictions file is mostly float32 tag
columns and maybe embeddings), and the anti-join's hash table holds the done ids once.
The driver then needs about the size of the id and uri strings.

What "done" means is the incremental-run contract, "files written whole; a rerun skips
what the ``model_id`` has" (docs/architecture.md, "Why each stage is shaped as it is"):
the rows of the partition's ``part-*.parquet`` files, failed tracks included (the caller
decides which to retry); a file a writer is still busy with (``.tmp-*``) or bookkeeping
(``_*``) holds no rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from mgc.io import storage
from mgc.tagging.schema import PredictionSchema

DONE_COLUMNS: tuple[str, ...] = ("track_id", "error", "tagged_at")
"""Columns :func:`partition_rows` reads by default: enough to skip, or to retry failures."""

# Types of the predictions columns every run has, for the empty table of an absent folder.
_BASE_TYPES = {field.name: field.type for field in PredictionSchema({}).arrow()}


def partition_rows(partition_uri: str, columns: Sequence[str] = DONE_COLUMNS) -> pa.Table:
    """The rows already written in the predictions partition folder ``partition_uri``.

    Only ``columns`` are read, from the ``part-*.parquet`` files (names starting with
    ``.`` or ``_`` are ignored), through :func:`mgc.io.storage.pyarrow_filesystem`, so
    ``s3://`` honours ``AWS_ENDPOINT_URL``. A folder that is absent, or holds no data file
    yet, gives an empty table with those columns (predictions types; a tag column that
    the base schema does not know is typed null).
    """
    columns = list(columns)
    if storage.exists(partition_uri):
        filesystem, path = storage.pyarrow_filesystem(partition_uri)
        dataset = pads.dataset(path, filesystem=filesystem, format="parquet", ignore_prefixes=[".", "_"])
        if dataset.files:
            return dataset.to_table(columns=columns)
    return pa.schema([pa.field(name, _BASE_TYPES.get(name, pa.null())) for name in columns]).empty_table()


def untagged(catalog: pa.Table, done: pa.Table) -> pa.Table:
    """The rows of ``catalog`` (``track_id``, ``uri``) whose ``track_id`` is not in ``done``.

    An anti-join as one hash-set membership test (``is_in``) and a filter: measured
    leaner than ``Table.join(join_type="left anti")`` (+54 MB against +92 MB at 1M done
    ids), as fast, and it keeps the catalog's row order (``--limit`` takes the first rows).
    """
    key = catalog.schema.field("track_id").type
    seen = pc.is_in(catalog.column("track_id"), value_set=done.column("track_id").cast(key))
    return catalog.filter(pc.invert(seen))


__all__ = ["DONE_COLUMNS", "partition_rows", "untagged"]
