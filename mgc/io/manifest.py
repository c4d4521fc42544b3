"""Read and write track manifests (Parquet, CSV, TSV, JSONL; local or on object storage).

A manifest is the one input every mgc job takes: one row per track with ``track_id``
(unique, required), ``uri`` (required; a path, ``file://``, ``s3://`` or ``gs://``;
``http(s)://`` only when enabled, see :mod:`mgc.io.uris`), and optionally ``split``,
``genres``, ``moods``, ``artist_id`` and ``duration_s``
(docs/architecture.md, "Data contracts").

:func:`read_manifest` parses the file and hands it to :func:`mgc.io.validate.validate_manifest`,
which refuses it up front with every problem and its row numbers, and normalises it: the
same manifest arrives as lists (Parquet, JSONL) or ``|``-joined strings (CSV, TSV), with
ids that pandas would like to turn into integers (``0001`` -> 1), and every consumer
downstream sees one shape instead. :func:`write_manifest` writes that shape back in any of
the formats.

All I/O goes through :mod:`mgc.io.storage`, so ``s3://`` honours ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import math
import posixpath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mgc.io import storage
from mgc.io.uris import (
    allowed_schemes,
    has_password,
    redact_uri,
    uri_resolver,
    uri_schemes,
)
from mgc.io.validate import (
    LABEL_COLUMNS,
    LIST_SEPARATOR,
    ManifestError,
    cap_problems,
    is_missing,
    locality_problems,
    row_list,
    scheme_problem,
    validate_manifest,
)

FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
"""Manifest file extensions and the format each one means."""


COMPRESSIONS: dict[str, str] = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
"""Compression suffixes accepted after a text format's extension (``.csv.gz``)."""


# Arrow types of the contract columns, so that an all-empty list column is still written
# as list<string> (not list<null>) and an all-missing artist_id as string.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "track_id": pa.string(),
    "uri": pa.string(),
    "split": pa.string(),
    **{column: pa.list_(pa.string()) for column in LABEL_COLUMNS},
    "artist_id": pa.string(),
    "duration_s": pa.float64(),
}


def read_manifest(uri: str, *, allow_http: bool | None = None, allow_local: bool | None = None,
                  allow_other_buckets: bool | None = None) -> pd.DataFrame:
    """Read, validate and normalise the manifest at ``uri`` (local path or any fsspec URL).

    The format comes from the extension (:data:`FORMATS`, optionally followed by one of
    :data:`COMPRESSIONS` for text formats). Every text cell is read as a string, so ids
    such as ``0001`` survive. Relative ``uri`` values (no scheme, not absolute) are
    resolved against the manifest's own directory or object-store prefix, so a folder
    holding a manifest and its audio can be moved or uploaded as a whole.

    Only :data:`ALLOWED_SCHEMES` are accepted, for the manifest itself and every track
    ``uri`` in it; ``http``/``https`` too when ``allow_http`` is true (None: the
    :data:`ALLOW_HTTP_ENV` environment variable decides).

    Raises :class:`ManifestError` for an unknown extension, a scheme that is not allowed,
    an unreadable file, an empty manifest, or any problem :func:`validate_manifest` finds.
    """
    uri = str(uri)
    allowed = allowed_schemes(allow_http)
    refused = [scheme for scheme in uri_schemes(uri) if scheme not in allowed]
    if refused:
        raise ManifestError([scheme_problem(refused, allowed)], redact_uri(uri))
    if has_password(uri):
        raise ManifestError(["the manifest location carries a password; give credentials through "
                             "the environment"], redact_uri(uri))
    fmt, compression = _format_of(uri)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise ManifestError([f"file not found ({exc})"], uri) from exc
    if compression is not None:
        data = _decompress(data, compression, uri)
    raw = _parse(data, fmt, uri)
    if len(raw) == 0:
        raise ManifestError(["the manifest has no rows"], uri)
    df = validate_manifest(raw, source=uri, allow_http=allow_http)
    resolve = uri_resolver(uri)
    df["uri"] = pd.Series([resolve(value) for value in df["uri"].tolist()], dtype=object)
    problems = locality_problems(df["uri"].tolist(), uri, allow_local=allow_local,
                                 allow_other_buckets=allow_other_buckets)
    if problems:
        raise ManifestError(problems, redact_uri(uri))
    return df


def _format_of(uri: str) -> tuple[str, str | None]:
    """``(format, compression)`` from the file name; unknown -> ManifestError."""
    name = posixpath.basename(str(uri).split("?", 1)[0]).lower()
    compression = None
    for suffix, codec in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression = codec
            name = name[: -len(suffix)]
            break
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            if fmt == "parquet" and compression is not None:
                raise ManifestError(
                    ["Parquet is compressed internally; drop the compression suffix"], uri
                )
            return fmt, compression
    known = ", ".join(FORMATS)
    comp = ", ".join(COMPRESSIONS)
    raise ManifestError(
        [f"unknown manifest format; use one of {known} (text formats may add {comp})"], uri
    )


def _decompress(data: bytes, compression: str, source: str) -> bytes:
    """Undo a whole-file compression named by :data:`COMPRESSIONS`."""
    module = {"gzip": gzip, "bz2": bz2, "xz": lzma}[compression]
    try:
        return module.decompress(data)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise ManifestError([f"cannot decompress as {compression}: {exc}"], source) from exc


def _compress(data: bytes, compression: str) -> bytes:
    module = {"gzip": gzip, "bz2": bz2, "xz": lzma}[compression]
    return module.compress(data)


def _parse(data: bytes, fmt: str, source: str) -> pd.DataFrame:
    """Parse raw bytes into an un-normalised frame, every text cell a string."""
    try:
        if fmt == "parquet":
            return pq.read_table(pa.BufferReader(data)).to_pandas()
        if fmt in ("csv", "tsv"):
            if not data.strip():
                return pd.DataFrame()
            # na_filter=False: nothing ("", "NA", "null") becomes NaN, no cell becomes a
            # number; empty cells stay "" and are treated as missing by validation.
            df = pd.read_csv(
                io.BytesIO(data),
                sep="," if fmt == "csv" else "\t",
                dtype=str,
                na_filter=False,
                encoding="utf-8-sig",
            )
            df.columns = [str(column).strip() for column in df.columns]
            return df
        return _parse_jsonl(data, source)
    except ManifestError:
        raise
    except (ValueError, pa.ArrowException, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise ManifestError([f"cannot parse as {fmt}: {exc}"], source) from exc


def _parse_jsonl(data: bytes, source: str) -> pd.DataFrame:
    """JSON Lines parsed with the json module, so values keep their JSON types.

    (pandas' reader would coerce columns, e.g. ids to floats when some are missing.)
    Blank lines are skipped.
    """
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    text = data.decode("utf-8-sig")
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {line_number} is not valid JSON: {exc}")
            continue
        if not isinstance(record, dict):
            problems.append(f"line {line_number} is not a JSON object")
            continue
        records.append(record)
    if problems:
        raise ManifestError(cap_problems(problems), source)
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    frame = {
        column: pd.Series([record.get(column) for record in records], dtype=object)
        for column in columns
    }
    return pd.DataFrame(frame)


def write_manifest(df: pd.DataFrame, uri: str, *, allow_http: bool | None = None) -> None:
    """Validate ``df`` and write it to ``uri`` in the format its extension names.

    CSV/TSV join label lists with ``|`` (a label containing ``|`` is refused there, as
    it could not be read back), and extra list columns the same way; Parquet and JSONL keep real lists. The write is atomic
    (:func:`mgc.io.storage.write_bytes`), so a reader never sees half a manifest. Reading
    the result back with :func:`read_manifest` gives the same contract columns (uris
    written relative are resolved on reading, by design).
    """
    uri = str(uri)
    fmt, compression = _format_of(uri)
    out = validate_manifest(df, source=uri, allow_http=allow_http)
    if fmt == "parquet":
        data = _to_parquet(out)
    elif fmt in ("csv", "tsv"):
        data = _to_delimited(out, "," if fmt == "csv" else "\t", uri)
    else:
        data = _to_jsonl(out)
    if compression is not None:
        data = _compress(data, compression)
    storage.write_bytes(uri, data)


def _to_parquet(df: pd.DataFrame) -> bytes:
    inferred = pa.Schema.from_pandas(df, preserve_index=False)
    schema = pa.schema(
        [pa.field(name, _ARROW_TYPES.get(name, inferred.field(name).type)) for name in df.columns]
    )
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def is_list_column(series: pd.Series) -> bool:
    """True when every value of a non-empty column is a list or tuple."""
    return len(series) > 0 and all(isinstance(value, (list, tuple)) for value in series.tolist())


def _to_delimited(df: pd.DataFrame, sep: str, source: str) -> bytes:
    """CSV/TSV bytes, label lists joined with ``|``, UTF-8, ``\\n`` line ends."""
    df = df.copy()
    problems = []
    for column in LABEL_COLUMNS:
        cells = df[column].tolist()
        bad = [i for i, labels in enumerate(cells) if any(LIST_SEPARATOR in x for x in labels)]
        if bad:
            problems.append(
                f"{column} labels containing {LIST_SEPARATOR!r} cannot be written to "
                f"CSV/TSV (use Parquet or JSONL); rows {row_list(bad)}"
            )
        df[column] = [LIST_SEPARATOR.join(labels) for labels in cells]
    if problems:
        raise ManifestError(problems, source)
    for column in df.columns:  # extra list columns (Jamendo's instruments): `piano|guitar`, not a repr
        if column not in LABEL_COLUMNS and is_list_column(df[column]):
            df[column] = [LIST_SEPARATOR.join(map(str, value)) for value in df[column]]
    # repr-exact floats so duration_s survives the round trip.
    if "duration_s" in df.columns:
        df["duration_s"] = ["" if math.isnan(x) else repr(float(x)) for x in df["duration_s"]]
    text = df.to_csv(sep=sep, index=False, lineterminator="\n")
    return text.encode("utf-8")


def _to_jsonl(df: pd.DataFrame) -> bytes:
    columns = list(df.columns)
    lines = []
    for row in df.itertuples(index=False, name=None):
        record = {column: _json_value(value) for column, value in zip(columns, row)}
        lines.append(json.dumps(record, ensure_ascii=False, default=str))
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def _json_value(value: Any) -> Any:
    """A cell as a plain JSON value (NaN -> null, numpy -> Python)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if is_missing(value):
        return None
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    return value


__all__ = ["COMPRESSIONS", "FORMATS", "is_list_column", "read_manifest", "write_manifest"]
