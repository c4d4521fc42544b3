"""One filesystem factory for every URI mgc reads or writes, with retries on object stores.

Why: pyarrow's own ``S3FileSystem`` ignores ``AWS_ENDPOINT_URL`` (docs/architecture.md, "Data contracts"), so
anything that hands a filesystem to pyarrow or Ray Data must get an s3fs-backed one from
here. Local paths, ``file://``, ``s3://`` and any other fsspec URL all go through
:func:`filesystem_for`.

Why retries here: a catalog run makes millions of requests and object stores answer some
of them with a dropped connection, a 5xx or "slow down". The whole-object operations below
(:func:`read_bytes`, :func:`write_bytes`, :func:`exists`, :func:`upload_dir`,
:func:`download_dir`) retry such *transient* errors with exponential backoff and jitter,
within a bounded total time (:class:`RetryPolicy`). What stays broken after that, or an
endpoint that cannot be reached at all, becomes one :class:`StorageError` naming the URI
and the endpoint, instead of a bare botocore traceback. Errors that retrying cannot fix
(no such object, access denied) are raised at once, unchanged. Local files are never
retried: a full disk does not get better by waiting.

botocore and s3fs retry a little on their own; their budgets are kept small and their
connect timeout short (:func:`_s3_options`), so the total time stays near the policy's.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import posixpath
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import fsspec
import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

T = TypeVar("T")

LOCAL_PROTOCOLS = ("file", "local")
S3_PROTOCOLS = ("s3", "s3a")

COMMIT_SUFFIX = ".json"
"""Files :func:`upload_dir` writes last: the metadata that makes a directory usable
(``checkpoint/mgc.json``, ``metrics.json``). A directory without them is incomplete."""

# Environment knobs, read at call time so that Ray workers and subprocesses honour them.
ENV_RETRY_ATTEMPTS = "MGC_STORAGE_RETRY_ATTEMPTS"
ENV_RETRY_DEADLINE_S = "MGC_STORAGE_RETRY_DEADLINE_S"
ENV_RETRY_BASE_DELAY_S = "MGC_STORAGE_RETRY_BASE_DELAY_S"
ENV_RETRY_MAX_DELAY_S = "MGC_STORAGE_RETRY_MAX_DELAY_S"
ENV_S3_CONNECT_TIMEOUT_S = "MGC_S3_CONNECT_TIMEOUT_S"
ENV_S3_READ_TIMEOUT_S = "MGC_S3_READ_TIMEOUT_S"
ENV_S3_MAX_ATTEMPTS = "MGC_S3_MAX_ATTEMPTS"

S3_CONNECT_TIMEOUT_S = 10.0
S3_READ_TIMEOUT_S = 60.0
S3_MAX_ATTEMPTS = 3  # botocore's own tries per call, under our retries

# Error codes and statuses object stores use for "try again later".
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
    "OperationAborted", "PriorRequestNotComplete", "500", "502", "503", "504",
})
_TRANSIENT_ERRNOS = frozenset({
    errno.EREMOTEIO,  # s3fs: 500 InternalError
    errno.EBUSY,  # s3fs: 503 SlowDown, 409 OperationAborted
    errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN,
})
# Raised as they are: retrying cannot help and callers rely on the type.
_FINAL = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


class StorageError(OSError):
    """An object store could not be reached, or kept failing, after retries.

    ``str(err)`` names the operation, the URI and the endpoint. Picklable (Ray ships
    exceptions between processes). A subclass of ``OSError``, so code that handles I/O
    errors in general handles this one too.
    """

    def __init__(self, message: str, uri: str = "", endpoint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.uri = uri
        self.endpoint = endpoint

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.message, self.uri, self.endpoint))


@dataclass(frozen=True)
class RetryPolicy:
    """How transient object-store errors are retried.

    At most ``attempts`` tries; before try ``n + 1`` the call waits a random time between
    half and all of ``min(max_delay_s, base_delay_s * 2 ** (n - 1))`` ("equal jitter", so
    many workers hitting one throttled bucket spread out). No wait is started that would
    end past ``deadline_s`` after the first try began, so an operation gives up after
    about ``deadline_s`` plus the duration of its last try.
    """

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    deadline_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, not {self.attempts}")
        if min(self.base_delay_s, self.max_delay_s, self.deadline_s) < 0:
            raise ValueError(f"RetryPolicy delays must be >= 0: {self}")

    def delay_s(self, failed_tries: int) -> float:
        """Seconds to wait after ``failed_tries`` failures (1-based)."""
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (failed_tries - 1))
        return random.uniform(cap / 2, cap)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "RetryPolicy":
        """The default policy with ``MGC_STORAGE_RETRY_*`` overrides from the environment."""
        env = os.environ if environ is None else environ
        default = cls()
        return cls(
            attempts=_env_number(env, ENV_RETRY_ATTEMPTS, default.attempts, int),
            base_delay_s=_env_number(env, ENV_RETRY_BASE_DELAY_S, default.base_delay_s, float),
            max_delay_s=_env_number(env, ENV_RETRY_MAX_DELAY_S, default.max_delay_s, float),
            deadline_s=_env_number(env, ENV_RETRY_DEADLINE_S, default.deadline_s, float),
        )


def _env_number(env: Mapping[str, str], name: str, default, kind):
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not a valid {kind.__name__}") from None


# ------------------------------------------------------------------------ filesystems


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_options() -> dict:
    """s3fs options from the standard AWS environment (endpoint from AWS_ENDPOINT_URL).

    botocore's defaults (60 s connect timeout, several tries with backoff per call) would
    make an unreachable endpoint hang for minutes under our own retries, so the connect
    timeout is short and botocore's tries few; ``MGC_S3_*`` variables override them, and
    ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE``, when set, keep their standard meaning.
    """
    options: dict = {}
    endpoint = _s3_endpoint()
    if endpoint:
        options["endpoint_url"] = endpoint
    config: dict = {
        "connect_timeout": _env_number(os.environ, ENV_S3_CONNECT_TIMEOUT_S, S3_CONNECT_TIMEOUT_S, float),
        "read_timeout": _env_number(os.environ, ENV_S3_READ_TIMEOUT_S, S3_READ_TIMEOUT_S, float),
    }
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        config["retries"] = {
            "max_attempts": _env_number(os.environ, ENV_S3_MAX_ATTEMPTS, S3_MAX_ATTEMPTS, int),
            "mode": os.environ.get("AWS_RETRY_MODE") or "standard",
        }
    options["config_kwargs"] = config
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
    options = _s3_options() if protocol in S3_PROTOCOLS else {}
    fs, path = fsspec.core.url_to_fs(uri, **options)
    if protocol in LOCAL_PROTOCOLS:
        path = os.path.abspath(path)
    return fs, path


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return a pyarrow filesystem and path for ``uri``, for pyarrow and Ray Data.

    Local paths get pyarrow's native local filesystem; everything else is the fsspec
    filesystem wrapped in ``PyFileSystem`` so that endpoint settings are honoured. The
    fsspec listing cache under ``uri`` is dropped first: such folders are written by other
    processes (Ray actors), and a stale listing hides their files or calls them missing.
    """
    fs, path = filesystem_for(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), path
    fs.invalidate_cache(path)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or local path."""
    uri = str(uri)
    if is_local(uri) and "://" not in uri:
        return os.path.join(uri, *parts)
    return posixpath.join(uri.rstrip("/"), *parts)


def endpoint_of(uri: str) -> str:
    """Where requests for ``uri`` go, for messages (never with credentials in it)."""
    protocol = protocol_of(uri)
    if protocol in S3_PROTOCOLS:
        endpoint = _s3_endpoint()
        return _without_userinfo(endpoint) if endpoint else "AWS S3 (default endpoint)"
    if protocol in ("gs", "gcs"):
        return os.environ.get("STORAGE_EMULATOR_HOST") or "Google Cloud Storage"
    if protocol in ("http", "https"):
        return _without_userinfo(f"{protocol}://{urlsplit(str(uri)).netloc}")
    if protocol in LOCAL_PROTOCOLS:
        return "local filesystem"
    return f"{protocol}://"


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
REDACTED_QUERY = "?<redacted>"


def redact(uri: str) -> str:
    """``uri`` fit for logs and outputs: the userinfo of each URL part as ``***`` and its
    query string (presigned-URL signatures, SAS tokens, ``X-Amz-Security-Token``) as
    ``?<redacted>``. Plain paths are returned as they are (``?`` may be part of a name)."""
    parts = []
    for part in str(uri).split("::"):
        match = _URL.match(part)
        if match:
            rest = part[match.end():]
            netloc, sep, tail = rest.partition("/")
            if "@" in netloc:
                netloc = "***@" + netloc.rsplit("@", 1)[1]
            path, query, _ = (sep + tail).partition("?")
            if not sep and "?" in netloc:  # s3://bucket?token=...
                netloc, query, _ = netloc.partition("?")
            part = f"{match.group(0)}{netloc}{path}" + (REDACTED_QUERY if query else "")
        parts.append(part)
    return "::".join(parts)


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


# ---------------------------------------------------------------------------- retries


def _causes(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _classify(exc: BaseException) -> str | None:
    """``"transient"`` (retry), ``"endpoint"`` (endpoint broken, don't retry) or None."""
    if isinstance(exc, (StorageError, *_FINAL)):  # a StorageError was retried already
        return None
    try:  # botocore comes with s3fs; other backends may run without it
        import botocore.exceptions as bce
    except ImportError:  # pragma: no cover
        bce = None
    for err in _causes(exc):
        if bce is not None:
            if isinstance(err, bce.SSLError):
                return "endpoint"
            if isinstance(err, (bce.ConnectionError, bce.HTTPClientError)):
                return "transient"
            if isinstance(err, bce.ClientError):
                meta = err.response.get("ResponseMetadata", {}) if err.response else {}
                code = (err.response or {}).get("Error", {}).get("Code", "")
                status = meta.get("HTTPStatusCode") or 0
                if code in _TRANSIENT_CODES or status == 429 or status >= 500:
                    return "transient"
                return None
        if isinstance(err, (ConnectionError, TimeoutError)):
            return "transient"
        if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS:
            return "transient"
        status = getattr(err, "status", None) or getattr(err, "code", None)  # aiohttp, gcsfs
        if isinstance(status, int) and not isinstance(status, bool) and (status == 429 or 500 <= status < 600):
            return "transient"
        if type(err).__module__.startswith("aiohttp") and "Connect" in type(err).__name__:
            return "transient"
    return None


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection trouble, timeouts, 5xx, throttling."""
    return _classify(exc) == "transient"


def _sleep(seconds: float) -> None:  # tests replace this
    time.sleep(seconds)


def with_retries(op: str, uri: str, fn: Callable[[], T], retry: RetryPolicy | None = None) -> T:
    """Call ``fn`` (one idempotent storage operation on ``uri``) under ``retry``.

    Local URIs are called once. Transient errors are retried; when the policy runs out,
    or the endpoint is unusable, a :class:`StorageError` is raised from the last error.
    """
    if is_local(uri):
        return fn()
    policy = retry if retry is not None else RetryPolicy.from_env()
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below; the rest re-raised
            kind = _classify(exc)
            if kind is None:
                raise
            elapsed = time.monotonic() - started
            wait = policy.delay_s(tries)
            if kind == "endpoint" or tries >= policy.attempts or elapsed + wait > policy.deadline_s:
                raise _storage_error(op, uri, exc, tries, time.monotonic() - started) from exc
            logger.warning("%s %s failed (%s: %s); try %d of %d in %.1f s",
                           op, uri, type(exc).__name__, _first_line(exc), tries + 1, policy.attempts, wait)
            _sleep(wait)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _storage_error(op: str, uri: str, exc: BaseException, tries: int, seconds: float) -> StorageError:
    endpoint = endpoint_of(uri)
    unreachable = any(isinstance(e, (ConnectionError, TimeoutError)) for e in _causes(exc)) or (
        "connect" in type(exc).__name__.lower() or "Could not connect" in str(exc))
    what = f"cannot reach storage endpoint {endpoint}" if unreachable else f"storage endpoint {endpoint} kept failing"
    tried = f"{tries} {'try' if tries == 1 else 'tries'} in {seconds:.1f} s"
    cause = _first_line(exc).replace(str(uri), redact(uri))
    return StorageError(f"{what}: {op} {redact(uri)} gave up after {tried} ({type(exc).__name__}: {cause})",
                        uri=redact(uri), endpoint=endpoint)


# ---------------------------------------------------------------- whole-object operations


def exists(uri: str, *, retry: RetryPolicy | None = None) -> bool:
    fs, path = filesystem_for(uri)
    return with_retries("exists", uri, lambda: fs.exists(path), retry)


class ObjectTooLarge(OSError):
    """An object over the reader's size limit (``size`` bytes, or more when unknown)."""

    def __init__(self, uri: str, size: int, limit: int) -> None:
        super().__init__(f"{redact(uri)} holds {size:,} bytes or more, over the limit of {limit:,} (--max-bytes)")
        self.size, self.limit = size, limit


def read_bytes(uri: str, *, retry: RetryPolicy | None = None, max_bytes: int | None = None) -> bytes:
    """Read a whole object; with ``max_bytes``, refuse a larger one before reading it
    (its listed size) and never read more than ``max_bytes + 1`` bytes of it (a device or
    a growing file whose size says nothing, like ``/dev/zero``): :class:`ObjectTooLarge`."""
    fs, path = filesystem_for(uri)

    def read() -> bytes:
        if max_bytes is not None:
            size = fs.size(path)
            if size is not None and size > max_bytes:
                raise ObjectTooLarge(uri, int(size), max_bytes)
        with fs.open(path, "rb") as handle:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(uri, len(data), max_bytes)
        return data

    return with_retries("read", uri, read, retry)


def reachable(uri: str, timeout_s: float = 10.0) -> bool:
    """Whether the store holding ``uri`` answers at all (one quick try, no retries).

    Tells a store that is down as a whole (the job's failure) from one key that keeps
    failing (that track's, retryable): after a :class:`StorageError` on a key, a store
    that still lists the key's bucket root is up. Local paths are always reachable.
    """
    if is_local(uri):
        return True
    fs, path = filesystem_for(uri)
    bucket = path.split("/", 1)[0]
    result: list[bool] = []

    def probe() -> None:
        try:
            fs.invalidate_cache(bucket)
            fs.ls(bucket, detail=False)
            result.append(True)
        except FileNotFoundError:
            result.append(True)  # the store answered: no such bucket
        except Exception:  # noqa: BLE001 - any other failure is "does not answer"
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])


def write_bytes(uri: str, data: bytes, *, retry: RetryPolicy | None = None) -> None:
    """Write a whole object so that readers see all of it or nothing.

    Local files are written beside the target and renamed into place; object stores
    get a single PUT, which is atomic by nature (and so safe to retry).
    """
    fs, path = filesystem_for(uri)
    if is_local(uri):
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        with_retries("write", uri, lambda: fs.pipe_file(path, data), retry)


TEMP_PREFIX = ".tmp-"


def remove_stale_temporaries(uri: str, older_than_s: float = 3600.0) -> int:
    """Delete the ``.tmp-*`` files a killed local writer left in folder ``uri``; return how many.

    Only those older than ``older_than_s``, so a writer still busy beside this process
    keeps its file. Readers already ignore them; this keeps a folder from filling up over
    many crashed runs. Object stores never hold such files (one PUT per object): a no-op.
    """
    if not is_local(uri):
        return 0
    _, path = filesystem_for(uri)
    if not os.path.isdir(path):
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for entry in os.scandir(path):
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file() and entry.stat().st_mtime < cutoff:
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:  # another process cleaned it first
                pass
    return removed


def write_text(uri: str, text: str, *, retry: RetryPolicy | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), retry=retry)


def remove(uri: str, *, retry: RetryPolicy | None = None, missing_ok: bool = True) -> None:
    """Delete one file or object (a missing one is fine when ``missing_ok``)."""
    fs, path = filesystem_for(uri)
    try:
        with_retries("delete", uri, lambda: fs.rm_file(path), retry)
    except FileNotFoundError:
        if not missing_ok:
            raise


def upload_dir(local_dir: str | Path, uri: str, *, retry: RetryPolicy | None = None) -> None:
    """Copy every file under ``local_dir`` to ``uri`` (a directory), keeping layout.

    Each file is written whole. The ``*.json`` files (:data:`COMMIT_SUFFIX`, the metadata
    that makes a checkpoint or run directory usable) are first deleted at the destination
    and written last, so a copy that dies half-way never looks complete, not even when it
    overwrites an older run: a reader finds no ``mgc.json`` / ``metrics.json`` rather than
    new weights under old metadata. On failure the files this call wrote are removed
    (best effort: an unreachable store keeps them, still without their metadata).
    """
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    commits = [p for p in files if p.name.endswith(COMMIT_SUFFIX)]
    payload = [p for p in files if not p.name.endswith(COMMIT_SUFFIX)]
    # metrics.json (the run's "done" marker) after the checkpoint's mgc.json.
    commits.sort(key=lambda p: (p.name == "metrics.json", str(p)))

    def target(file: Path) -> str:
        return join(uri, *file.relative_to(local_dir).parts)

    for file in commits:
        remove(target(file), retry=retry)
    written: list[str] = []
    try:
        for file in payload + commits:
            write_bytes(target(file), file.read_bytes(), retry=retry)
            written.append(target(file))
    except BaseException:
        for done in reversed(written):
            try:
                remove(done, retry=RetryPolicy(attempts=1))
            except Exception:  # noqa: BLE001 - best effort; the original error matters
                pass
        raise


def download_dir(uri: str, local_dir: str | Path, *, retry: RetryPolicy | None = None) -> Path:
    """Copy the directory ``uri`` to ``local_dir`` and return it; local dirs are used in place.

    The copy lands in a staging directory beside ``local_dir`` and is moved into place
    only when complete, so a failed download leaves nothing behind.
    """
    if is_local(uri):
        return Path(filesystem_for(uri)[1])
    fs, path = filesystem_for(uri)
    local_dir = Path(local_dir)
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-download-", dir=local_dir.parent))
    try:
        with_retries("download", uri, lambda: fs.get(path.rstrip("/") + "/", str(staging), recursive=True), retry)
        if not local_dir.exists() or not any(local_dir.iterdir()):
            os.replace(staging, local_dir)  # rename(2) replaces an empty directory
        else:
            for item in staging.iterdir():
                os.replace(item, local_dir / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local_dir
