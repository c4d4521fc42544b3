"""Read, validate and write track manifests.

A manifest is the one input every mgc job takes: one row per track with ``track_id``
(unique, required), ``uri`` (required; a path, ``file://``, ``s3://`` or ``gs://``;
``http(s)://`` only when enabled, see :data:`ALLOWED_SCHEMES`), and optionally ``split``,
``genres``, ``moods``, ``artist_id`` and ``duration_s`` (DESIGN section 2). It may be
Parquet, CSV, TSV or JSONL, local or on object storage.

Why validate up front: a training or tagging job fans thousands of tracks out over a Ray
cluster; a duplicate id or an empty uri found there surfaces minutes later as an obscure
worker error. So :func:`read_manifest` checks the whole file first and refuses it with
*every* problem and the row numbers at fault, in one :class:`ManifestError`. The same
check keeps untrusted manifests from steering workers at other schemes (the cloud
metadata endpoint over http, ``ssh://``, ...) or from carrying passwords in uris.

Why normalise: the same manifest arrives as lists (Parquet, JSONL) or ``|``-joined strings
(CSV, TSV), with ids that pandas would like to turn into integers (``0001`` -> 1). Every
consumer downstream sees one shape instead: string ids and uris, ``genres``/``moods``
always present as Python lists of strings, ``split`` one of :data:`SPLITS` or None,
``artist_id`` a string or None, ``duration_s`` a float (NaN when unknown).

All I/O goes through :mod:`mgc.io.storage`, so ``s3://`` honours ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import math
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mgc.io import storage
from mgc.config import TASKS, label_column

REQUIRED_COLUMNS: tuple[str, ...] = ("track_id", "uri")
"""Columns every manifest must have."""

LABEL_COLUMNS: tuple[str, ...] = tuple(label_column(task) for task in TASKS)
"""Label columns (``genres``, ``moods``); always present after normalisation."""

OPTIONAL_COLUMNS: tuple[str, ...] = ("split", *LABEL_COLUMNS, "artist_id", "duration_s")
"""Contract columns a manifest may leave out."""

CONTRACT_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
"""Every column with a defined meaning, in the order a normalised manifest lists them."""

SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""Allowed ``split`` values after normalisation."""

SPLIT_ALIASES: dict[str, str] = {"val": "validation", "valid": "validation"}
"""Other spellings accepted for a split (compared lowercased)."""

LIST_SEPARATOR = "|"
"""Separator of list values in CSV/TSV."""

MAX_ROWS_LISTED = 20
"""Row numbers listed per problem before the rest is summarised as "... and N more"."""

ROW_NUMBERING = "data rows numbered from 1 in file order, CSV/TSV header line excluded"

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

ALLOWED_SCHEMES: tuple[str, ...] = ("file", "local", "s3", "s3a", "gs", "gcs")
"""URI schemes a manifest (and its track ``uri`` values) may use; plain paths are ``file``.

Why a list: a manifest is data, often from outside the team, and every ``uri`` in it is
fetched by cluster workers that hold cloud credentials. fsspec would happily follow
``http://169.254.169.254/...`` (the cloud metadata service), ``ssh://``, ``github://``,
``memory://`` or chained ``simplecache::...`` URLs; only the stores mgc is meant to read
are accepted."""

HTTP_SCHEMES: tuple[str, ...] = ("http", "https")
"""Accepted only when enabled: ``allow_http=True`` or :data:`ALLOW_HTTP_ENV` set to 1."""

ALLOW_HTTP_ENV = "MGC_ALLOW_HTTP"
"""Environment switch (``1``/``true``/``yes``) that lets jobs read http(s) track uris."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_PROTOCOL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")

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


class ManifestError(ValueError):
    """A manifest that cannot be used, with every problem found.

    ``problems`` holds one line per problem; row numbers in them count data rows from 1 in
    file order (for CSV/TSV the header line is not counted), which is what a person sees
    when opening the file, not the pandas index.
    """

    def __init__(self, problems: Sequence[str] | str, source: str = "") -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems: list[str] = list(problems)
        self.source: str = str(source)
        where = f"manifest {self.source}" if self.source else "manifest"
        note = f" ({ROW_NUMBERING})" if any("row" in p for p in self.problems) else ""
        lines = [f"Bad {where}{note}:"]
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray ships exceptions between processes by pickling; the default reduce would
        # call ManifestError(message) and lose the structured problems.
        return (type(self), (self.problems, self.source))


# --------------------------------------------------------------------------- reading


def read_manifest(uri: str, *, allow_http: bool | None = None) -> pd.DataFrame:
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
        raise ManifestError([_scheme_problem(refused, allowed)], _redact(uri))
    if _has_password(uri):
        raise ManifestError(["the manifest location carries a password; give credentials through "
                             "the environment"], _redact(uri))
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
    resolve = _resolver(uri)
    df["uri"] = pd.Series([resolve(value) for value in df["uri"].tolist()], dtype=object)
    return df


def resolve_uri(uri: str, manifest_uri: str) -> str:
    """Resolve a relative track ``uri`` against the directory of ``manifest_uri``.

    Absolute paths and URLs with a scheme are returned unchanged. For a local manifest
    the result is an absolute local path; for a remote one (``s3://bucket/dir/m.csv``) a
    URL under the same prefix (``s3://bucket/dir/audio/a.wav``), ``..`` collapsed.
    """
    return _resolver(manifest_uri)(uri)


def _resolver(manifest_uri: str) -> Callable[[str], str]:
    """:func:`resolve_uri` with the manifest's directory worked out once (big manifests)."""
    if storage.is_local(manifest_uri):
        base = os.path.dirname(storage.filesystem_for(manifest_uri)[1])

        def resolve_local(uri: str) -> str:
            if not _is_relative(uri):
                return uri
            return os.path.normpath(os.path.join(base, uri))

        return resolve_local

    protocol, manifest_path = fsspec.core.split_protocol(manifest_uri)
    remote_base = posixpath.dirname(manifest_path)

    def resolve_remote(uri: str) -> str:
        if not _is_relative(uri):
            return uri
        return f"{protocol}://{posixpath.normpath(posixpath.join(remote_base, uri))}"

    return resolve_remote


def _is_relative(uri: str) -> bool:
    """True for a plain relative path: no URL scheme, not absolute, not ``~``.

    Mirrors ``fsspec.core.split_protocol``: anything with ``://`` (or ``data:``) is a URL.
    """
    if "://" in uri or uri.startswith("data:"):
        return False
    return not (uri.startswith(("/", "~")) or os.path.isabs(uri))


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
        raise ManifestError(_cap(problems), source)
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    frame = {
        column: pd.Series([record.get(column) for record in records], dtype=object)
        for column in columns
    }
    return pd.DataFrame(frame)


# ------------------------------------------------------------------------ validation


def validate_manifest(df: pd.DataFrame, source: str = "", *, allow_http: bool | None = None) -> pd.DataFrame:
    """Check ``df`` against the manifest contract and return a normalised copy.

    Every problem is collected first and raised once as :class:`ManifestError`, so a
    person fixes the whole file in one pass. Rows are numbered by position from 1 (the
    index is ignored). The copy has a fresh RangeIndex; contract columns come first in
    :data:`CONTRACT_COLUMNS` order, unknown extra columns follow unchanged. ``split``,
    ``artist_id`` and ``duration_s`` are only present when ``df`` has them (consumers
    treat their absence as meaningful, e.g. "no split given: hold some tracks out").

    Track uris must use :data:`ALLOWED_SCHEMES` (``http``/``https`` only with
    ``allow_http``; None reads :data:`ALLOW_HTTP_ENV`) and may not carry a password
    (``https://user:secret@host/...``): a uri is copied into logs and predictions.
    """
    df = df.copy()
    df.columns = [str(column).strip() for column in df.columns]
    problems: list[str] = []
    n = len(df)

    duplicated_columns = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if duplicated_columns:
        raise ManifestError([f"duplicate column names: {duplicated_columns}"], source)

    missing = [column for column in REQUIRED_COLUMNS if column not in df.columns]
    for column in missing:
        found = ", ".join(repr(c) for c in df.columns) or "none"
        problems.append(f"missing required column {column!r} (columns found: {found})")

    out: dict[str, Any] = {}

    if "track_id" in df.columns:
        ids = [_to_text(value) for value in df["track_id"].tolist()]
        empty = [i for i, value in enumerate(ids) if value is None]
        if empty:
            problems.append(f"empty track_id at rows {_rows(empty)}")
        problems += _duplicate_problems(ids)
        out["track_id"] = pd.Series(["" if v is None else v for v in ids], dtype=object)

    if "uri" in df.columns:
        uris = [_to_text(value) for value in df["uri"].tolist()]
        empty = [i for i, value in enumerate(uris) if value is None]
        if empty:
            problems.append(f"empty uri at rows {_rows(empty)}")
        problems += _uri_problems(uris, allowed_schemes(allow_http))
        out["uri"] = pd.Series(["" if v is None else v for v in uris], dtype=object)

    if "split" in df.columns:
        splits: list[str | None] = []
        bad: list[int] = []
        bad_values: dict[str, None] = {}
        for i, value in enumerate(df["split"].tolist()):
            text = _to_text(value)
            if text is None:
                splits.append(None)
                continue
            text = SPLIT_ALIASES.get(text.lower(), text.lower())
            if text not in SPLITS:
                bad.append(i)
                bad_values[str(value).strip()] = None
            splits.append(text)
        if bad:
            accepted = "/".join(SPLITS) + " (or " + "/".join(SPLIT_ALIASES) + ")"
            shown = ", ".join(repr(v) for v in list(bad_values)[:5])
            problems.append(
                f"split must be {accepted} or empty; found {shown} at rows {_rows(bad)}"
            )
        out["split"] = pd.Series(splits, dtype=object)

    for column in LABEL_COLUMNS:
        if column in df.columns:
            out[column] = pd.Series([parse_labels(v) for v in df[column].tolist()], dtype=object)
        else:
            out[column] = pd.Series([[] for _ in range(n)], dtype=object)

    if "artist_id" in df.columns:
        out["artist_id"] = pd.Series([_to_text(v) for v in df["artist_id"].tolist()], dtype=object)

    if "duration_s" in df.columns:
        durations: list[float] = []
        bad = []
        for i, value in enumerate(df["duration_s"].tolist()):
            number = _to_float(value)
            if number is None or math.isinf(number) or number < 0:
                bad.append(i)
                number = math.nan
            durations.append(number)
        if bad:
            problems.append(
                f"duration_s must be a non-negative number of seconds or empty; "
                f"bad at rows {_rows(bad)}"
            )
        out["duration_s"] = pd.Series(durations, dtype="float64")

    if problems:
        raise ManifestError(problems, source)

    result = pd.DataFrame({c: out[c] for c in CONTRACT_COLUMNS if c in out})
    for column in df.columns:
        if column not in out:
            result[column] = df[column].reset_index(drop=True)
    return result


def allowed_schemes(allow_http: bool | None = None) -> tuple[str, ...]:
    """:data:`ALLOWED_SCHEMES`, plus :data:`HTTP_SCHEMES` when http is enabled.

    ``allow_http=None`` reads the :data:`ALLOW_HTTP_ENV` environment variable.
    """
    if allow_http is None:
        allow_http = os.environ.get(ALLOW_HTTP_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    return ALLOWED_SCHEMES + (HTTP_SCHEMES if allow_http else ())


def uri_schemes(uri: str) -> list[str]:
    """Lowercased scheme of each part of ``uri`` (fsspec chains parts with ``::``).

    A plain path is ``file``; ``data:...`` is ``data``.
    """
    if "://" not in uri and "::" not in uri and not uri.startswith("data:"):
        return ["file"]
    schemes = []
    parts = uri.split("::")
    for i, part in enumerate(parts):
        match = _SCHEME.match(part)
        if match:
            schemes.append(match.group(1).lower())
        elif part.startswith("data:"):
            schemes.append("data")
        elif i < len(parts) - 1 and _PROTOCOL_NAME.match(part):
            schemes.append(part.lower())  # a chained layer: "simplecache::s3://..."
        else:
            schemes.append("file")
    return schemes


def _has_password(uri: str) -> bool:
    if "@" not in uri:
        return False
    for part in uri.split("::"):
        if _SCHEME.match(part):
            try:
                if urlsplit(part).password is not None:
                    return True
            except ValueError:
                return True
    return False


def _redact(uri: str) -> str:
    """``uri`` fit for a message: the userinfo of each URL part replaced by ``***``."""
    if "@" not in uri:
        return uri
    parts = []
    for part in uri.split("::"):
        match = _SCHEME.match(part)
        if match:
            rest = part[match.end():]
            netloc, sep, tail = rest.partition("/")
            if "@" in netloc:
                part = f"{match.group(0)}***@{netloc.rsplit('@', 1)[1]}{sep}{tail}"
        parts.append(part)
    return "::".join(parts)


def _scheme_problem(refused: Sequence[str], allowed: Sequence[str], rows: str = "") -> str:
    shown = ", ".join(repr(s) for s in list(dict.fromkeys(refused))[:5])
    where = f" at rows {rows}" if rows else ""
    hint = ""
    if any(s in HTTP_SCHEMES for s in refused) and not any(s in HTTP_SCHEMES for s in allowed):
        hint = f"; http(s) needs allow_http=True or {ALLOW_HTTP_ENV}=1"
    return f"uri scheme not allowed: {shown}{where} (allowed: {', '.join(allowed)}, or a plain path{hint})"


def _uri_problems(uris: list[str | None], allowed: tuple[str, ...]) -> list[str]:
    """Problems with the schemes and credentials of the (non-empty) track uris."""
    bad_rows: list[int] = []
    bad_schemes: dict[str, None] = {}
    secret_rows: list[int] = []
    for i, uri in enumerate(uris):
        if uri is None:
            continue
        refused = [scheme for scheme in uri_schemes(uri) if scheme not in allowed]
        if refused:
            bad_rows.append(i)
            bad_schemes.update(dict.fromkeys(refused))
        if _has_password(uri):
            secret_rows.append(i)
    problems = []
    if bad_rows:
        problems.append(_scheme_problem(list(bad_schemes), allowed, _rows(bad_rows)))
    if secret_rows:
        problems.append(
            f"uri carries a password (scheme://user:password@...) at rows {_rows(secret_rows)}; "
            "give credentials through the environment, never inside a manifest"
        )
    return problems


def parse_labels(value: Any) -> list[str]:
    """One cell of ``genres``/``moods`` as a list of distinct, stripped, non-empty labels.

    Accepts what each format produces: a list/tuple/array (Parquet, JSONL), a
    ``|``-separated string (CSV, TSV), or a missing value (-> ``[]``). Order is kept;
    a label repeated within one track is kept once (it is still one label).
    """
    items: list[Any]
    if isinstance(value, str):
        items = value.split(LIST_SEPARATOR)
    elif isinstance(value, (np.ndarray, pd.Series, pd.Index)):
        items = value.tolist()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif _is_missing(value):
        return []
    else:
        items = [value]
    if all(type(item) is str for item in items):
        # Fast path (nearly every cell): plain strings need no missing-value checks.
        return list(dict.fromkeys(text for text in (item.strip() for item in items) if text))
    labels: dict[str, None] = {}
    for item in items:
        text = _to_text(item)
        if text is not None:
            labels[text] = None
    return list(labels)


def _is_missing(value: Any) -> bool:
    """None, NaN, pd.NA, NaT; never true for containers."""
    if value is None:
        return True
    if isinstance(value, (list, tuple, dict, np.ndarray, pd.Series, pd.Index)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _to_text(value: Any) -> str | None:
    """A cell as a stripped string, or None when missing or blank.

    Integral floats become integers first: a numeric id column holding a missing value
    is a float column in pandas/Parquet, and ``12.0`` there means id ``12``.
    """
    if isinstance(value, str):
        return value.strip() or None
    if _is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        text = str(bool(value))
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        text = str(int(value))
    elif isinstance(value, bytes):
        text = value.decode("utf-8")
    else:
        text = str(value)
    text = text.strip()
    return text or None


def _to_float(value: Any) -> float | None:
    """A cell as a float; NaN when missing or blank; None when not a number."""
    if type(value) is float:
        return value
    if _is_missing(value):
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _duplicate_problems(ids: list[str | None]) -> list[str]:
    """One problem listing every row whose id occurs more than once, with examples."""
    positions: dict[str, list[int]] = {}
    for i, value in enumerate(ids):
        if value is not None:
            positions.setdefault(value, []).append(i)
    duplicated = {value: rows for value, rows in positions.items() if len(rows) > 1}
    if not duplicated:
        return []
    all_rows = sorted(i for rows in duplicated.values() for i in rows)
    examples = "; ".join(
        f"{value!r} at rows {_rows(rows, limit=5)}" for value, rows in list(duplicated.items())[:5]
    )
    more = f"; ... and {len(duplicated) - 5} more ids" if len(duplicated) > 5 else ""
    return [f"duplicate track_id at rows {_rows(all_rows)} ({examples}{more})"]


def _rows(positions: Sequence[int], limit: int = MAX_ROWS_LISTED) -> str:
    """0-based positions as 1-based row numbers, at most ``limit`` of them listed."""
    shown = ", ".join(str(i + 1) for i in positions[:limit])
    if len(positions) > limit:
        shown += f" ... and {len(positions) - limit} more"
    return shown


def _cap(problems: list[str], limit: int = MAX_ROWS_LISTED) -> list[str]:
    if len(problems) <= limit:
        return problems
    return problems[:limit] + [f"... and {len(problems) - limit} more"]


# --------------------------------------------------------------------------- writing


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
                f"CSV/TSV (use Parquet or JSONL); rows {_rows(bad)}"
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
    if _is_missing(value):
        return None
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------- labels


def infer_task_type(labels: Iterable[Sequence[str]]) -> str:
    """``multiclass`` when every labeled track has exactly one label, else ``multilabel``.

    Unlabeled tracks (empty list or missing) do not count either way (DESIGN section 2).
    Cells are normalised like :func:`parse_labels`, so a raw ``|``-joined column works.
    Raises ValueError when no track is labeled: there is nothing to train.
    """
    labeled = False
    for value in labels:
        count = len(parse_labels(value))
        if count == 0:
            continue
        labeled = True
        if count > 1:
            return "multilabel"
    if not labeled:
        raise ValueError("no track has a label; cannot infer a task type")
    return "multiclass"


def label_vocabulary(labels: Iterable[Sequence[str]]) -> list[str]:
    """Sorted distinct labels over all tracks; the order fixes a model's output indices."""
    vocabulary: set[str] = set()
    for value in labels:
        vocabulary.update(parse_labels(value))
    return sorted(vocabulary)


__all__ = [
    "ALLOWED_SCHEMES",
    "ALLOW_HTTP_ENV",
    "CONTRACT_COLUMNS",
    "FORMATS",
    "LABEL_COLUMNS",
    "ManifestError",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "allowed_schemes",
    "infer_task_type",
    "label_vocabulary",
    "parse_labels",
    "read_manifest",
    "resolve_uri",
    "uri_schemes",
    "validate_manifest",
    "write_manifest",
]
