"""Read a tagging catalog as an Arrow table of ``track_id`` and ``uri``, validated vectorised.

Why not :func:`mgc.io.manifest.read_manifest`: catalog tagging needs two columns of a
manifest that may list ten million tracks, and read_manifest builds a pandas frame whose
every cell :func:`mgc.io.validate.validate_manifest` normalises in Python (about 500 bytes
a row: ~5 GB of driver memory at 10M tracks). :func:`read_catalog` reads only those two
columns into Arrow (a Parquet file's other column chunks are never fetched) and checks
them with ``pyarrow.compute`` kernels, so the driver holds about the size of the strings.

The rules are the manifest contract's (docs/architecture.md, "Data contracts"), applied
as :func:`validate_manifest` applies them to these two columns, and refusals read the
same: the required columns, empty ids or uris (after stripping whitespace), duplicate
ids, uri schemes outside :data:`mgc.io.uris.ALLOWED_SCHEMES`, uris carrying a password;
all problems in one :class:`ManifestError` with 1-based row numbers; relative uris then
resolved against the manifest's folder (:func:`mgc.io.uris.uri_resolver`).

Python touches single rows only where the answer is a message (the offending rows),
where a rule needs Python's exact parser (chained ``a::b`` uris, password candidates,
relative paths with ``.``/``..`` segments: few in a real catalog), or where a file is odd
enough that only the old parser gives the old answer (JSON Lines with ids of mixed JSON
types or broken lines, id columns of unusual Parquet types).
"""

from __future__ import annotations

import contextlib

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from mgc.io import storage
from mgc.io.manifest import _decompress, _format_of, _parse
from mgc.io.uris import (
    _SCHEME,
    allowed_schemes,
    has_password,
    redact_uri,
    uri_resolver,
    uri_schemes,
)
from mgc.io.validate import (
    REQUIRED_COLUMNS,
    ManifestError,
    _to_text,
    row_list,
    scheme_problem,
)

CATALOG_SCHEMA = pa.schema([pa.field(column, pa.string()) for column in REQUIRED_COLUMNS])
"""What :func:`read_catalog` returns: ``track_id`` and ``uri``, both strings, never null."""

WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""Every character ``str.strip()`` removes (``str.isspace``), so Arrow strips as Python does."""

_EDGE_SPACE = f"^[{WHITESPACE}]|[{WHITESPACE}]$"
# A uri part whose authority holds '@' (userinfo), brackets or non-ASCII text: the only
# places urlsplit finds a password or raises. has_password decides for these rows.
_PASSWORD_CANDIDATE = r"(?:^|::)[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*[@\[\]\x{80}-\x{10FFFF}]"
_SCHEME_GROUP = _SCHEME.pattern.replace("^(", "^(?P<scheme>", 1)
# Relative paths that normpath leaves as they are once joined to the folder: no '.' or
# '..' segment, no '//' and no trailing '/'. Others go through the resolver one by one.
_NOT_PLAIN_RELATIVE = r"(?:^|/)\.\.?(?:/|$)|//|/$"
_is_string_view = getattr(pa.types, "is_string_view", lambda kind: False)  # pyarrow >= 16


def read_catalog(uri: str, *, allow_http: bool | None = None) -> pa.Table:
    """The ``track_id`` and ``uri`` of every row of the manifest at ``uri``, as Arrow.

    Formats, compression, locations and the scheme policy are :func:`read_manifest`'s
    (``allow_http`` as there). Values are stripped strings (``0001`` stays ``0001``;
    numeric Parquet/JSON ids become text as read_manifest writes them), relative uris are
    resolved, rows keep file order. Raises :class:`ManifestError` with every problem.

    What a *remote* manifest's resolved uris may point at (its bucket, local paths) is
    the caller's policy: :func:`mgc.io.validate.locality_problems` takes this table's
    ``uri`` column as it is (``run_tagging`` passes its own flags).
    """
    uri = str(uri)
    allowed = allowed_schemes(allow_http)
    _check_location(uri, allowed)
    fmt, compression = _format_of(uri)
    names, columns = _read_parquet(uri) if fmt == "parquet" else _read_text(uri, fmt, compression)
    _refuse_repeated(names, uri)
    return _validated(names, columns, uri, allowed)


def _check_location(uri: str, allowed: tuple[str, ...]) -> None:
    """The manifest's own location under the policy its track uris follow."""
    refused = [scheme for scheme in uri_schemes(uri) if scheme not in allowed]
    problem = scheme_problem(refused, allowed) if refused else None
    if problem is None and has_password(uri):
        problem = "the manifest location carries a password; give credentials through the environment"
    if problem is not None:
        raise ManifestError([problem], redact_uri(uri))


@contextlib.contextmanager
def _found(uri: str):
    """A missing manifest as the ManifestError read_manifest raises for it."""
    try:
        yield
    except FileNotFoundError as exc:
        raise ManifestError([f"file not found ({exc})"], uri) from exc


def _refuse_repeated(names: list[str], uri: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ManifestError([f"duplicate column names: {repeated}"], uri)


def _wanted(raw: list[str]) -> dict[str, str]:
    """Required column -> the file's name for it (validation strips column names)."""
    return {name.strip(): name for name in raw if name.strip() in REQUIRED_COLUMNS}


# ------------------------------------------------------------------------------ reading
# Each reader returns the file's column names (stripped, as validation sees them) and the
# required columns it holds, already as text: string arrays, null where a cell is missing.


def _read_parquet(uri: str) -> tuple[list[str], dict[str, pa.ChunkedArray]]:
    """Only the required columns' chunks are read (through mgc's filesystem factory)."""
    filesystem, path = storage.pyarrow_filesystem(uri)

    def read() -> tuple[list[str], dict[str, pa.ChunkedArray]]:
        handle = pq.ParquetFile(path, filesystem=filesystem)
        schema = handle.schema_arrow
        index = (schema.pandas_metadata or {}).get("index_columns", [])  # pandas makes them the index
        raw = [name for name in schema.names if name not in index]
        if handle.metadata.num_rows == 0:
            raise ManifestError(["the manifest has no rows"], uri)
        _refuse_repeated([name.strip() for name in raw], uri)
        wanted = _wanted(raw)
        table = handle.read(columns=list(wanted.values()), use_pandas_metadata=False)
        return [name.strip() for name in raw], {
            column: _text(table.column(name), lambda name=name: table.column(name).to_pandas().tolist())
            for column, name in wanted.items()}

    with _found(uri):
        try:
            return storage.with_retries("read", uri, read)
        except ManifestError:
            raise
        except (pa.ArrowException, ValueError) as exc:
            raise ManifestError([f"cannot parse as parquet: {exc}"], uri) from exc


def _read_text(uri: str, fmt: str, compression: str | None) -> tuple[list[str], dict[str, pa.ChunkedArray]]:
    """CSV, TSV or JSON Lines; the file's bytes are dropped on return, before validation."""
    with _found(uri):
        data = storage.read_bytes(uri)
    data = data if compression is None else _decompress(data, compression, uri)
    if not data or data.isspace():
        raise ManifestError(["the manifest has no rows"], uri)
    if fmt == "jsonl":
        return _read_jsonl(data, uri)
    return _read_delimited(data, "," if fmt == "csv" else "\t", uri)


def _read_delimited(data: bytes, sep: str, uri: str) -> tuple[list[str], dict[str, pa.ChunkedArray]]:
    """CSV/TSV as read_manifest parses it: every cell text, nothing turned into null or a
    number; column names as pandas gives them (``a, a.1`` for a repeat; ``Unnamed: i``).
    A file Arrow refuses (rows with missing trailing fields, which pandas fills, or a real
    error) goes to read_manifest's own parser, for its result or its message."""
    parse = pacsv.ParseOptions(delimiter=sep, newlines_in_values=True)
    try:
        raw = pacsv.open_csv(pa.BufferReader(data), parse_options=parse).schema.names
        names = _pandas_names(raw)
        wanted = _wanted(names)
        options = pacsv.ConvertOptions(include_columns=list(wanted.values()),
                                       column_types={name: pa.string() for name in wanted.values()},
                                       strings_can_be_null=False, quoted_strings_can_be_null=False)
        # A repeated name is ambiguous to Arrow: name the columns as pandas does.
        read = pacsv.ReadOptions(column_names=names, skip_rows=1) if names != raw else pacsv.ReadOptions()
        table = pacsv.read_csv(pa.BufferReader(data), read_options=read, parse_options=parse,
                               convert_options=options)
    except pa.ArrowException:
        frame = _parse(data, "csv" if sep == "," else "tsv", uri)
        names = list(frame.columns)
        if len(frame) and len(set(names)) == len(names):
            wanted = _wanted(names)
            table = pa.table({name: pa.array(frame[name], pa.string(), from_pandas=True)
                              for name in wanted.values()})
        else:  # no rows, or repeated names: refused below
            wanted, table = {}, pa.table({"n": pa.nulls(len(frame))})
    if table.num_rows == 0:
        raise ManifestError(["the manifest has no rows"], uri)
    return [name.strip() for name in names], {column: table.column(name) for column, name in wanted.items()}


def _pandas_names(raw: list[str]) -> list[str]:
    names: list[str] = []
    for i, name in enumerate(raw):
        name = name or f"Unnamed: {i}"
        base, n = name, 0
        while name in names:
            n += 1
            name = f"{base}.{n}"
        names.append(name)
    return names


def _read_jsonl(data: bytes, uri: str) -> tuple[list[str], dict[str, pa.ChunkedArray]]:
    """JSON Lines. Fast: Arrow reads the two fields as strings and skips the rest. When one
    is all null there (it may be absent) or holds JSON numbers: Arrow infers every field.
    Mixed or nested types, or a line that is no JSON object: the json module, as
    read_manifest does (its messages name the bad lines)."""
    fast = pajson.ParseOptions(explicit_schema=CATALOG_SCHEMA, unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(pa.BufferReader(data), parse_options=fast)
        if all(table.column(c).null_count < table.num_rows for c in REQUIRED_COLUMNS):
            return list(REQUIRED_COLUMNS), {c: table.column(c) for c in REQUIRED_COLUMNS}
    except pa.ArrowException:
        pass
    try:
        table = pajson.read_json(pa.BufferReader(data))
        columns = {c: _text(table.column(name), None) for c, name in _wanted(table.column_names).items()}
        if table.num_rows and all(values is not None for values in columns.values()):
            return [name.strip() for name in table.column_names], columns
    except pa.ArrowException:
        pass
    frame = _parse(data, "jsonl", uri)  # raises for bad lines, with their numbers
    if len(frame) == 0:
        raise ManifestError(["the manifest has no rows"], uri)
    names = [str(name).strip() for name in frame.columns]
    return names, {c: _python_text(frame[name].tolist()) for c, name in _wanted(list(frame.columns)).items()}


def _text(column: pa.ChunkedArray, python_values) -> pa.ChunkedArray | None:
    """``column`` as text the way :func:`mgc.io.validate._to_text` writes a cell (integral
    floats as integers, booleans as ``True``/``False``), null where missing; unstripped.

    Types without a vectorised rule go cell by cell through ``python_values()`` (the cells
    as read_manifest's pandas frame holds them), or give None when that is None.
    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    if (pa.types.is_string(kind) or pa.types.is_large_string(kind) or _is_string_view(kind)
            or pa.types.is_null(kind) or pa.types.is_integer(kind)):
        return column.cast(pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(column, "True", "False")
    if pa.types.is_floating(kind) and pc.sum(pc.is_inf(column)).as_py() in (0, None):
        finite = pc.drop_null(column.filter(pc.is_finite(column)))
        if len(finite) == 0 or (pc.all(pc.equal(pc.floor(finite), finite)).as_py()
                                and pc.max(pc.abs(finite)).as_py() < 2.0 ** 63):
            return pc.if_else(pc.is_nan(column), None, column).cast(pa.int64()).cast(pa.string())
    return None if python_values is None else _python_text(python_values())


def _python_text(values: list) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array([_to_text(value) for value in values], pa.string())])


# --------------------------------------------------------------------------- validation


def _validated(names: list[str], columns: dict[str, pa.ChunkedArray], uri: str,
               allowed: tuple[str, ...]) -> pa.Table:
    """validate_manifest's rules for the two columns, in its order; then relative uris resolved."""
    problems: list[str] = []
    for column in REQUIRED_COLUMNS:
        if column not in columns:
            found = ", ".join(repr(name) for name in names) or "none"
            problems.append(f"missing required column {column!r} (columns found: {found})")
    texts = {column: _stripped(columns[column]) for column in REQUIRED_COLUMNS if column in columns}
    for column, values in texts.items():
        empty = pc.indices_nonzero(pc.is_null(values)).to_numpy()
        if len(empty):
            problems.append(f"empty {column} at rows {row_list(empty)}")
        problems += _duplicates(values) if column == "track_id" else _uri_rules(values, allowed)
    if problems:
        raise ManifestError(problems, uri)
    table = pa.table({column: texts[column] for column in REQUIRED_COLUMNS}, schema=CATALOG_SCHEMA)
    return table.set_column(1, "uri", _resolved(table.column("uri"), uri))


def _stripped(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Whitespace stripped as ``str.strip`` does; blank cells null (missing). No copy
    is made of a column that needs neither."""
    if pc.any(pc.match_substring_regex(values, _EDGE_SPACE)).as_py():
        values = pc.utf8_trim(values, characters=WHITESPACE)
    blank = pc.equal(values, "")
    if pc.any(blank).as_py():
        values = pc.if_else(blank, None, values)
    return values


def _duplicates(ids: pa.ChunkedArray) -> list[str]:
    """The duplicate-id problem as validate words it; only the offending rows are gathered.

    Whether there is one is found by sorting (a copy of the ids and the order: ~100 MB at
    5M ids), not hashing: Arrow's hash kernels hold ~120 bytes an id (600 MB at 5M).
    """
    present = pc.drop_null(ids) if ids.null_count else ids
    ordered = present.take(pc.sort_indices(present))
    if len(ordered) < 2 or not pc.any(pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))).as_py():
        return []
    del present, ordered
    counts = pa.table({"id": ids}).group_by("id").aggregate([("id", "count")])
    repeated = counts.filter(pc.greater(counts.column("id_count"), 1)).column("id")
    rows = pc.indices_nonzero(pc.is_in(ids, value_set=repeated)).to_numpy()
    offending = pa.table({"id": ids.take(rows), "row": rows})
    firsts = offending.group_by("id", use_threads=False).aggregate([("row", "min")]).sort_by("row_min")
    shown = []
    for value in firsts.column("id").slice(0, 5).to_pylist():
        at = rows[pc.indices_nonzero(pc.equal(offending.column("id"), value)).to_numpy()]
        shown.append(f"{value!r} at rows {row_list(at, limit=5)}")
    extra = len(repeated) - len(shown)
    more = f"; ... and {extra} more ids" if extra > 0 else ""
    return [f"duplicate track_id at rows {row_list(rows)} ({'; '.join(shown)}{more})"]


def _uri_rules(uris: pa.ChunkedArray, allowed: tuple[str, ...]) -> list[str]:
    """The scheme and password problems as validate words them.

    A row passes the scheme rule at once when it is a plain path or starts with an
    allowed ``scheme://``; the others have their scheme extracted (a chained
    ``a::b`` uri goes through ``uri_schemes``). Only rows whose authority holds ``@``,
    brackets or non-ASCII text can carry a password; ``has_password`` judges those.
    """
    chained = pc.fill_null(pc.match_substring(uris, "::"), False)
    fine = pc.invert(pc.or_(pc.match_substring(uris, "://"), pc.starts_with(uris, "data:")))
    for scheme in allowed:  # exact case here (10x faster); other cases are extracted below
        fine = pc.or_(fine, pc.starts_with(uris, f"{scheme}://"))
    suspect = pc.and_(pc.invert(pc.fill_null(fine, True)), pc.invert(chained))
    refused: dict[str, tuple[int, int]] = {}  # scheme -> (first row, place in its uri)
    bad_rows = []
    if pc.any(suspect).as_py():
        rows = pc.indices_nonzero(suspect).to_numpy()
        subset = uris.take(rows)
        found = pc.struct_field(pc.extract_regex(subset, _SCHEME_GROUP), "scheme")
        schemes = pc.coalesce(pc.utf8_lower(found),
                              pc.if_else(pc.starts_with(subset, "data:"), "data", "file"))
        bad = pc.invert(pc.is_in(schemes, value_set=pa.array(allowed, pa.string())))
        bad_rows.append(rows[bad.to_numpy(zero_copy_only=False)])
        first = pa.table({"scheme": schemes, "row": rows}).filter(bad)
        for item in first.group_by("scheme").aggregate([("row", "min")]).to_pylist():
            refused[item["scheme"]] = (item["row_min"], 0)
    for row, uri in _pick(uris, chained):
        for place, scheme in enumerate(s for s in uri_schemes(uri) if s not in allowed):
            refused[scheme] = min(refused.get(scheme, (row, place)), (row, place))
            bad_rows.append([row])
    problems = []
    if refused:
        rows = sorted({int(row) for part in bad_rows for row in part})
        problems.append(scheme_problem(sorted(refused, key=refused.__getitem__), allowed, row_list(rows)))
    secret = [row for row, uri in _pick(uris, _password_candidates(uris)) if has_password(uri)]
    if secret:
        problems.append(f"uri carries a password (scheme://user:password@...) at rows {row_list(secret)}; "
                        "give credentials through the environment, never inside a manifest")
    return problems


def _pick(values: pa.ChunkedArray, mask) -> list[tuple[int, str]]:
    """``(row, value)`` of the rows ``mask`` selects (meant for a few)."""
    if not pc.any(mask).as_py():
        return []
    rows = pc.indices_nonzero(mask).to_numpy()
    return list(zip(rows.tolist(), values.take(rows).to_pylist()))


def _password_candidates(uris: pa.ChunkedArray) -> pa.ChunkedArray:
    with_at = pc.fill_null(pc.match_substring(uris, "@"), False)
    if not pc.any(with_at).as_py():
        return with_at
    return pc.and_(with_at, pc.fill_null(pc.match_substring_regex(uris, _PASSWORD_CANDIDATE), False))


def _resolved(uris: pa.ChunkedArray, manifest_uri: str) -> pa.ChunkedArray:
    """Relative uris (no scheme, not absolute, not ``~``) resolved as read_manifest does."""
    relative = pc.invert(pc.or_(pc.or_(pc.match_substring(uris, "://"), pc.starts_with(uris, "data:")),
                                pc.or_(pc.starts_with(uris, "/"), pc.starts_with(uris, "~"))))
    if not pc.any(relative).as_py():
        return uris
    resolve = uri_resolver(manifest_uri)
    values = uris.combine_chunks()
    odd = pc.and_(relative, pc.match_substring_regex(uris, _NOT_PLAIN_RELATIVE)).combine_chunks()
    plain = pc.and_(relative, pc.invert(odd)).combine_chunks()
    if pc.any(plain).as_py():
        # normpath(join(folder, p)) for a plain p is the folder's normal form, a '/', then
        # p: what the resolver makes of a one-letter name, less that letter.
        joined = pc.binary_join_element_wise(resolve("x")[:-1], values.filter(plain), "")
        values = pc.replace_with_mask(values, plain, joined)
    if pc.any(odd).as_py():
        done = [resolve(value) for value in values.filter(odd).to_pylist()]
        values = pc.replace_with_mask(values, odd, pa.array(done, pa.string()))
    return pa.chunked_array([values])


__all__ = ["CATALOG_SCHEMA", "WHITESPACE", "read_catalog"]
