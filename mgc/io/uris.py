"""Which uris a manifest may name, and how relative ones resolve.

Why a policy: a manifest is data, often from outside the team, and every ``uri`` in it is
fetched by cluster workers that hold cloud credentials; only the stores mgc is meant to
read are accepted (:data:`ALLOWED_SCHEMES`), uris carrying passwords are refused, and
relative paths resolve against the manifest's own folder.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from urllib.parse import urlsplit

import fsspec

from mgc.io import storage

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


def resolve_uri(uri: str, manifest_uri: str) -> str:
    """Resolve a relative track ``uri`` against the directory of ``manifest_uri``.

    Absolute paths and URLs with a scheme are returned unchanged. For a local manifest
    the result is an absolute local path; for a remote one (``s3://bucket/dir/m.csv``) a
    URL under the same prefix (``s3://bucket/dir/audio/a.wav``), ``..`` collapsed.
    """
    return uri_resolver(manifest_uri)(uri)


def uri_resolver(manifest_uri: str) -> Callable[[str], str]:
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


def has_password(uri: str) -> bool:
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


def redact_uri(uri: str) -> str:
    """``uri`` fit for a message (:func:`mgc.io.storage.redact`: no userinfo, no query string)."""
    return storage.redact(uri)




