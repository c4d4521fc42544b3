"""Validate and normalise a manifest table: every problem found, with its row numbers.

Why up front: a training or tagging job fans thousands of tracks out over a Ray cluster;
a duplicate id or an empty uri found there surfaces minutes later as an obscure worker
error. :func:`validate_manifest` checks the whole table first and refuses it with *every*
problem in one :class:`ManifestError`, then hands every consumer one shape: string ids and
uris, ``genres``/``moods`` always lists of strings, ``split`` one of
:data:`mgc.config.SPLITS` or None, ``artist_id`` a string or None, ``duration_s`` a float.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mgc.config import SPLITS, TASKS, label_column
from mgc.io import storage
from mgc.io.uris import (
    ALLOW_HTTP_ENV,
    HTTP_SCHEMES,
    allowed_schemes,
    has_password,
    uri_schemes,
)

REQUIRED_COLUMNS: tuple[str, ...] = ("track_id", "uri")
"""Columns every manifest must have."""


LABEL_COLUMNS: tuple[str, ...] = tuple(label_column(task) for task in TASKS)
"""Label columns (``genres``, ``moods``); always present after normalisation."""


OPTIONAL_COLUMNS: tuple[str, ...] = ("split", *LABEL_COLUMNS, "artist_id", "duration_s")
"""Contract columns a manifest may leave out."""


CONTRACT_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
"""Every column with a defined meaning, in the order a normalised manifest lists them."""


SPLIT_ALIASES: dict[str, str] = {"val": "validation", "valid": "validation"}
"""Other spellings accepted for a split (compared lowercased)."""


LIST_SEPARATOR = "|"
"""Separator of list values in CSV/TSV."""


MAX_ROWS_LISTED = 20
"""Row numbers listed per problem before the rest is summarised as "... and N more"."""


ROW_NUMBERING = "data rows numbered from 1 in file order, CSV/TSV header line excluded"


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
    duplicated_columns = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if duplicated_columns:
        raise ManifestError([f"duplicate column names: {duplicated_columns}"], source)
    problems: list[str] = []
    for column in REQUIRED_COLUMNS:
        if column not in df.columns:
            found = ", ".join(repr(c) for c in df.columns) or "none"
            problems.append(f"missing required column {column!r} (columns found: {found})")

    checks: dict[str, Callable[[list[Any]], tuple[pd.Series, list[str]]]] = {
        "track_id": _track_ids,
        "uri": lambda values: _uris(values, allowed_schemes(allow_http)),
        "split": _splits,
        "artist_id": lambda values: (pd.Series([_to_text(v) for v in values], dtype=object), []),
        "duration_s": _durations,
    }
    out: dict[str, pd.Series] = {}
    for column, check in checks.items():
        if column in df.columns:
            out[column], found = check(df[column].tolist())
            problems += found
    for column in LABEL_COLUMNS:
        values = df[column].tolist() if column in df.columns else [[] for _ in range(len(df))]
        out[column] = pd.Series([parse_labels(v) for v in values], dtype=object)
    if problems:
        raise ManifestError(problems, source)

    result = pd.DataFrame({c: out[c] for c in CONTRACT_COLUMNS if c in out})
    for column in df.columns:
        if column not in out:
            result[column] = df[column].reset_index(drop=True)
    return result


def _required_text(values: list[Any], name: str) -> tuple[list[str | None], list[str]]:
    texts = [_to_text(value) for value in values]
    empty = [i for i, value in enumerate(texts) if value is None]
    return texts, ([f"empty {name} at rows {row_list(empty)}"] if empty else [])


def _track_ids(values: list[Any]) -> tuple[pd.Series, list[str]]:
    ids, problems = _required_text(values, "track_id")
    problems += _duplicate_problems(ids)
    return pd.Series(["" if v is None else v for v in ids], dtype=object), problems


def _uris(values: list[Any], allowed: tuple[str, ...]) -> tuple[pd.Series, list[str]]:
    uris, problems = _required_text(values, "uri")
    problems += _uri_problems(uris, allowed)
    return pd.Series(["" if v is None else v for v in uris], dtype=object), problems


def _splits(values: list[Any]) -> tuple[pd.Series, list[str]]:
    """Split names lowercased, aliases (``val``, ``valid``) resolved, empty as None."""
    splits: list[str | None] = []
    bad: list[int] = []
    bad_values: dict[str, None] = {}
    for i, value in enumerate(values):
        text = _to_text(value)
        if text is None:
            splits.append(None)
            continue
        text = SPLIT_ALIASES.get(text.lower(), text.lower())
        if text not in SPLITS:
            bad.append(i)
            bad_values[str(value).strip()] = None
        splits.append(text)
    problems = []
    if bad:
        accepted = "/".join(SPLITS) + " (or " + "/".join(SPLIT_ALIASES) + ")"
        shown = ", ".join(repr(v) for v in list(bad_values)[:5])
        problems.append(f"split must be {accepted} or empty; found {shown} at rows {row_list(bad)}")
    return pd.Series(splits, dtype=object), problems


def _durations(values: list[Any]) -> tuple[pd.Series, list[str]]:
    """Seconds as floats, NaN when empty; negative or infinite ones are problems."""
    durations: list[float] = []
    bad = []
    for i, value in enumerate(values):
        number = _to_float(value)
        if number is None or math.isinf(number) or number < 0:
            bad.append(i)
            number = math.nan
        durations.append(number)
    problems = []
    if bad:
        problems.append(f"duration_s must be a non-negative number of seconds or empty; bad at rows {row_list(bad)}")
    return pd.Series(durations, dtype="float64"), problems


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
    elif is_missing(value):
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


def is_missing(value: Any) -> bool:
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
    if is_missing(value):
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
    if is_missing(value):
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
        f"{value!r} at rows {row_list(rows, limit=5)}" for value, rows in list(duplicated.items())[:5]
    )
    more = f"; ... and {len(duplicated) - 5} more ids" if len(duplicated) > 5 else ""
    return [f"duplicate track_id at rows {row_list(all_rows)} ({examples}{more})"]


def row_list(positions: Sequence[int], limit: int = MAX_ROWS_LISTED) -> str:
    """0-based positions as 1-based row numbers, at most ``limit`` of them listed."""
    shown = ", ".join(str(i + 1) for i in positions[:limit])
    if len(positions) > limit:
        shown += f" ... and {len(positions) - limit} more"
    return shown


def cap_problems(problems: list[str], limit: int = MAX_ROWS_LISTED) -> list[str]:
    if len(problems) <= limit:
        return problems
    return problems[:limit] + [f"... and {len(problems) - limit} more"]


def scheme_problem(refused: Sequence[str], allowed: Sequence[str], rows: str = "") -> str:
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
        if has_password(uri):
            secret_rows.append(i)
    problems = []
    if bad_rows:
        problems.append(scheme_problem(list(bad_schemes), allowed, row_list(bad_rows)))
    if secret_rows:
        problems.append(
            f"uri carries a password (scheme://user:password@...) at rows {row_list(secret_rows)}; "
            "give credentials through the environment, never inside a manifest"
        )
    return problems


ALLOW_LOCAL_ENV = "MGC_ALLOW_LOCAL_URIS"
"""Environment switch (``1``): a remote manifest may name local paths (workers read them)."""
ALLOW_OTHER_BUCKETS_ENV = "MGC_ALLOW_OTHER_BUCKETS"
"""Environment switch (``1``): a remote manifest's uris may leave its bucket."""
_URL = r"^[A-Za-z][A-Za-z0-9+.\-]*://"


def _switch(value: bool | None, env: str) -> bool:
    if value is not None:
        return value
    return os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")


def locality_problems(uris: Sequence[str] | pa.Array | pa.ChunkedArray, manifest_uri: str, *,
                      allow_local: bool | None = None, allow_other_buckets: bool | None = None) -> list[str]:
    """What a *remote* manifest's resolved track uris may not do (a local one may do both).

    A manifest on object storage is written by someone else than the workers that read
    it, and those workers hold credentials and a local disk: it may not point them at
    local paths (``/dev/zero``, ``/proc/...``, another user's files) unless
    ``allow_local`` (``--allow-local-uris``, :data:`ALLOW_LOCAL_ENV`), and its uris may not
    leave the manifest's bucket (``../../other-bucket/...`` collapses out of it) unless
    ``allow_other_buckets`` (:data:`ALLOW_OTHER_BUCKETS_ENV`). Vectorised (Arrow): it runs
    over 10M-row catalogs.
    """
    if storage.is_local(manifest_uri):
        return []
    column = pa.array(list(uris), pa.string()) if not isinstance(uris, (pa.Array, pa.ChunkedArray)) else uris
    is_url = pc.match_substring_regex(column, _URL)
    local = pc.or_(pc.invert(is_url), pc.match_substring_regex(column, r"^(file|local)://"))
    problems = []
    if not _switch(allow_local, ALLOW_LOCAL_ENV):
        rows = pc.indices_nonzero(pc.fill_null(local, False)).to_pylist()
        if rows:
            problems.append(f"local paths in a remote manifest at rows {row_list(rows)} (workers would read "
                            f"their own disks; pass --allow-local-uris or set {ALLOW_LOCAL_ENV}=1 to allow)")
    if not _switch(allow_other_buckets, ALLOW_OTHER_BUCKETS_ENV):
        protocol, path = fsspec.core.split_protocol(manifest_uri)
        bucket = path.split("/", 1)[0]
        own = pc.starts_with(column, f"{protocol}://{bucket}/")
        elsewhere = pc.and_(pc.and_(is_url, pc.invert(local)), pc.invert(own))
        rows = pc.indices_nonzero(pc.fill_null(elsewhere, False)).to_pylist()
        if rows:
            problems.append(f"uris outside the manifest's bucket {protocol}://{bucket}/ at rows {row_list(rows)} "
                            f"(pass --allow-other-buckets or set {ALLOW_OTHER_BUCKETS_ENV}=1 to allow)")
    return problems
