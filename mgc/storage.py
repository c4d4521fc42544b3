"""One filesystem factory for every URI mgc reads or writes.

Why: pyarrow's own ``S3FileSystem`` ignores ``AWS_ENDPOINT_URL`` (DESIGN section 2), so
anything that hands a filesystem to pyarrow or Ray Data must get an s3fs-backed one from
here. Local paths, ``file://``, ``s3://`` and any other fsspec URL all go through
:func:`filesystem_for`.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from pathlib import Path

import fsspec
import pyarrow.fs as pafs

LOCAL_PROTOCOLS = ("file", "local")


def _s3_options() -> dict:
    """s3fs options from the standard AWS environment (endpoint from AWS_ENDPOINT_URL)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    options: dict = {}
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def protocol_of(uri: str) -> str:
    """The fsspec protocol of ``uri`` (``file`` for plain paths)."""
    protocol = fsspec.core.split_protocol(str(uri))[0]
    return protocol or "file"


def is_local(uri: str) -> bool:
    """True when ``uri`` is a local path or ``file://`` URL."""
    return protocol_of(uri) in LOCAL_PROTOCOLS


def filesystem_for(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(filesystem, path)`` for ``uri``; s3 honours ``AWS_ENDPOINT_URL``."""
    uri = str(uri)
    protocol = protocol_of(uri)
    options = _s3_options() if protocol in ("s3", "s3a") else {}
    fs, path = fsspec.core.url_to_fs(uri, **options)
    if protocol in LOCAL_PROTOCOLS:
        path = os.path.abspath(path)
    return fs, path


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return a pyarrow filesystem and path for ``uri``, for pyarrow and Ray Data.

    Local paths get pyarrow's native local filesystem; everything else is the fsspec
    filesystem wrapped in ``PyFileSystem`` so that endpoint settings are honoured.
    """
    fs, path = filesystem_for(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or local path."""
    uri = str(uri)
    if is_local(uri) and "://" not in uri:
        return os.path.join(uri, *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def exists(uri: str) -> bool:
    fs, path = filesystem_for(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    """Read a whole object."""
    fs, path = filesystem_for(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object so that readers see all of it or nothing.

    Local files are written beside the target and renamed into place; object stores
    get a single PUT, which is atomic by nature.
    """
    fs, path = filesystem_for(uri)
    if is_local(uri):
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy every file under ``local_dir`` to ``uri`` (a directory), keeping layout."""
    local_dir = Path(local_dir)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        write_bytes(join(uri, *file.relative_to(local_dir).parts), file.read_bytes())


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy the directory ``uri`` to ``local_dir`` and return it; local dirs are used in place."""
    if is_local(uri):
        return Path(filesystem_for(uri)[1])
    fs, path = filesystem_for(uri)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    fs.get(path.rstrip("/") + "/", str(local_dir), recursive=True)
    return local_dir
