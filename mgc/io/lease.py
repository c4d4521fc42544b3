"""One writer per output partition: a lease object at ``<partition>/_lease.json``.

Why: catalog tagging writes Parquet files into ``<output>/model_id=<id>/`` and a rerun
skips what the partition already has. Two runs overlapping on one partition (a
Kubernetes retry of a nightly pod while the first pod still runs) would both decide
what is missing and both write it, and each would later trust the other's half. A lease
makes the second run stop at once, naming the first; a run that crashed leaves a lease
that simply expires, and ``--force`` (``force=True``) takes over only such an expired
lease, never a live one.

How the lease stays single-holder without a lock server:

- It is *created conditionally*: on object stores with one ``PUT`` carrying
  ``If-None-Match: *`` (HTTP 412, raised by s3fs as ``FileExistsError``, when it exists);
  locally by writing a temporary file in the same folder and hard-linking it to the lease
  name (``link(2)`` fails when the name exists), so a reader never sees a half-written
  lease. Two runs racing on a fresh partition: exactly one create succeeds.
- It is *changed only if unchanged since we last saw it* (compare-and-swap): on S3 the
  ``PUT`` / ``DELETE`` carries ``If-Match: <ETag we wrote or read>``; locally the bytes
  on disk are compared with what we last wrote or read, under an ``flock`` on
  ``<partition>/_lease.lock`` that every rewrite and delete takes (a crashed process
  drops its flock, so that file never needs cleaning). Renewal therefore fails with
  :class:`LeaseLost` once someone else holds the lease, and a force takeover fails
  with :class:`LeaseHeld` if the holder renewed in the meantime.
- Writers check before each file: :meth:`PartitionLease.assert_held` (or
  :func:`check_holder` with just the token, for Ray actors far from the lease object)
  re-reads the lease and raises :class:`LeaseLost` unless it is still ours and
  unexpired.

The names start with ``_`` (and temporaries with ``.``) because mgc's Parquet readers
ignore such files (docs/architecture.md, "Data contracts"). Times are UTC; expiry uses
the reader's clock, so hosts sharing a partition need clocks that agree to well within
the TTL (10 minutes by default). Every clock here can be injected (``now=``) so tests
can age a lease without sleeping.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Self

from mgc.io.storage import (
    TEMP_PREFIX,
    RetryPolicy,
    StorageError,
    filesystem_for,
    is_local,
    join,
    with_retries,
)
from mgc.log import get_logger

logger = get_logger()

LEASE_NAME = "_lease.json"
"""The lease object inside a partition folder."""
LOCK_NAME = "_lease.lock"
"""Local partitions only: the file whose ``flock`` serialises rewrites and deletes of the lease."""
DEFAULT_TTL_S = 600.0
"""How long a lease lives without renewal: 10 minutes. Long enough that a slow store or a
paused process does not lose it, short enough that a crashed nightly run frees its
partition before the next one."""
RENEW_FRACTION = 1.0 / 3.0
"""The renewal thread renews every ``ttl_s * RENEW_FRACTION``: two renewals may fail
before the lease expires."""
MAX_RENEW_FAILURES = 2
"""Consecutive renewals failing on storage errors after which the holder stops trusting
its lease (the next one could only land after expiry)."""
FORMAT_VERSION = 1

_ATTEMPTS = 5  # acquire loop: create / read / (force) delete rounds under contention
_UNREADABLE_TRIES = 3  # a local lease written without link(2) may be seen mid-write
_UNREADABLE_WAIT_S = 0.05

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock: an aware UTC datetime."""
    return datetime.now(timezone.utc)


_PROCESS_STARTED = utc_now()  # when this process loaded mgc.io.lease: about when the run started


# ---------------------------------------------------------------------------- errors


class LeaseError(RuntimeError):
    """Base of the lease errors; also raised for a lease file mgc cannot read."""


class LeaseHeld(LeaseError):
    """Someone else holds the partition's lease (or a force takeover lost a race).

    The message names the holder and when its lease expires, and says that ``--force``
    takes over only an expired lease. ``info`` is the lease found (None when unreadable).
    """

    def __init__(self, message: str, partition_uri: str = "", info: LeaseInfo | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.partition_uri = partition_uri
        self.info = info

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # Ray ships exceptions between processes
        return (type(self), (self.message, self.partition_uri, self.info))


class LeaseLost(LeaseError):
    """Our lease is gone, changed under us, expired, or taken over: stop writing."""


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease, for people reading an error or the lease file."""

    host: str
    pid: int
    started_at: datetime
    purpose: str = ""

    @classmethod
    def this_process(cls, purpose: str = "") -> LeaseHolder:
        return cls(host=socket.gethostname(), pid=os.getpid(), started_at=_PROCESS_STARTED, purpose=purpose)

    def describe(self) -> str:
        purpose = f", purpose {self.purpose!r}" if self.purpose else ""
        return f"host {self.host} pid {self.pid}{purpose}, started {_iso(self.started_at)}"

    def gone(self) -> bool:
        """True when this holder was a process on this host that no longer runs.

        Such a lease is abandoned (a run killed with SIGKILL, an OOM-killed driver) and is
        taken over without waiting for its expiry. Only this host can know; a holder on
        another host (another pod) is judged by its expiry alone. Its pid may now belong
        to another process, or to this one (a restarted container's pid 1): the start
        time of this process tells the two apart.
        """
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return self.started_at != _PROCESS_STARTED
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


@dataclass(frozen=True)
class LeaseInfo:
    """The content of ``_lease.json``; times are aware UTC datetimes (ISO strings in JSON)."""

    token: str
    holder: LeaseHolder
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    ttl_s: float
    version: int = FORMAT_VERSION

    def expired(self, now: datetime | None = None) -> bool:
        """True once ``now`` (default: the current UTC time) reaches ``expires_at``."""
        return (now if now is not None else utc_now()) >= self.expires_at

    def renewed(self, now: datetime) -> LeaseInfo:
        return replace(self, renewed_at=now, expires_at=now + timedelta(seconds=self.ttl_s))

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "token": self.token,
            "holder": {"host": self.holder.host, "pid": self.holder.pid,
                       "started_at": _iso(self.holder.started_at), "purpose": self.holder.purpose},
            "acquired_at": _iso(self.acquired_at),
            "renewed_at": _iso(self.renewed_at),
            "expires_at": _iso(self.expires_at),
            "ttl_s": self.ttl_s,
        }

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, value: Any) -> LeaseInfo:
        """Parse a lease; ``ValueError`` when it is not one this mgc wrote."""
        try:
            holder = value["holder"]
            return cls(
                token=str(value["token"]),
                holder=LeaseHolder(host=str(holder["host"]), pid=int(holder["pid"]),
                                   started_at=_parse_time(holder["started_at"]),
                                   purpose=str(holder.get("purpose", ""))),
                acquired_at=_parse_time(value["acquired_at"]),
                renewed_at=_parse_time(value["renewed_at"]),
                expires_at=_parse_time(value["expires_at"]),
                ttl_s=float(value["ttl_s"]),
                version=int(value.get("version", FORMAT_VERSION)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an mgc lease ({type(exc).__name__}: {exc})") from None

    @classmethod
    def decode(cls, data: bytes) -> LeaseInfo:
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        return cls.from_json(value)

    def describe(self, now: datetime | None = None) -> str:
        now = now if now is not None else utc_now()
        left = (self.expires_at - now).total_seconds()
        when = f"in {_duration(left)}" if left > 0 else f"{_duration(-left)} ago"
        return (f"{self.holder.describe()}; acquired {_iso(self.acquired_at)}, "
                f"renewed {_iso(self.renewed_at)}, expires {_iso(self.expires_at)} ({when})")


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def _parse_time(text: Any) -> datetime:
    value = datetime.fromisoformat(str(text))
    if value.tzinfo is None:  # written by something else; mgc always writes UTC offsets
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _utc(clock: Clock) -> datetime:
    value = clock()
    if value.tzinfo is None:
        raise ValueError("lease clocks must return aware datetimes (UTC)")
    return value.astimezone(timezone.utc)


# ----------------------------------------------------------------------------- stores


@dataclass(frozen=True)
class _Seen:
    """One reading of the lease object: its bytes, what the store calls that version
    (an ETag; locally the bytes themselves are the version), when it was last modified,
    and the parsed lease (None when unreadable)."""

    data: bytes
    etag: str | None
    modified_at: datetime | None
    info: LeaseInfo | None


class _Changed(Exception):
    """A conditional rewrite or delete found the lease changed since we saw it."""


class _Store:
    """The lease object on one backend: conditional create, read, compare-and-swap."""

    def __init__(self, partition_uri: str, retry: RetryPolicy | None) -> None:
        self.partition_uri = str(partition_uri)
        self.uri = join(self.partition_uri, LEASE_NAME)
        self.retry = retry

    def read(self) -> _Seen | None:
        raise NotImplementedError

    def create(self, data: bytes) -> str | None:
        """Write ``data`` only if no lease exists (``FileExistsError`` otherwise); its ETag."""
        raise NotImplementedError

    def replace(self, data: bytes, seen: _Seen) -> str | None:
        """Overwrite only if the lease is still ``seen`` (:class:`_Changed` otherwise)."""
        raise NotImplementedError

    def delete(self, seen: _Seen) -> None:
        """Delete only if the lease is still ``seen`` (:class:`_Changed` otherwise); gone is fine."""
        raise NotImplementedError


def _parse(data: bytes) -> LeaseInfo | None:
    try:
        return LeaseInfo.decode(data)
    except ValueError:
        return None


class _LocalStore(_Store):
    def __init__(self, partition_uri: str, retry: RetryPolicy | None) -> None:
        super().__init__(partition_uri, retry)
        self.folder = filesystem_for(self.partition_uri)[1]
        self.path = os.path.join(self.folder, LEASE_NAME)

    def read(self) -> _Seen | None:
        seen = None
        for tries in range(_UNREADABLE_TRIES):
            seen = self._read_once()
            if seen is None or seen.info is not None:
                return seen
            if tries + 1 < _UNREADABLE_TRIES:  # only written without link(2): maybe mid-write
                time.sleep(_UNREADABLE_WAIT_S)
        return seen

    def _read_once(self) -> _Seen | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
                modified = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return _Seen(data, None, datetime.fromtimestamp(modified, timezone.utc), _parse(data))

    def create(self, data: bytes) -> str | None:
        os.makedirs(self.folder, exist_ok=True)
        tmp = self._write_temp(data)
        try:
            os.link(tmp, self.path)  # atomic, and refuses an existing name: the conditional create
            return None
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            logger.debug("no hard links in %s (%s); creating the lease with O_EXCL", self.folder, exc)
            return self._create_exclusive(data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _create_exclusive(self, data: bytes) -> None:
        """For filesystems without hard links: readers may briefly see it mid-write (read() waits)."""
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            raise

    def replace(self, data: bytes, seen: _Seen) -> str | None:
        with self._locked():
            current = self._read_once()
            if current is None or current.data != seen.data:
                raise _Changed()
            tmp = self._write_temp(data)
            try:
                os.replace(tmp, self.path)  # readers see the old lease or the new one, whole
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return None

    def delete(self, seen: _Seen) -> None:
        with self._locked():
            current = self._read_once()
            if current is None:
                return
            if current.data != seen.data:
                raise _Changed()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _write_temp(self, data: bytes) -> str:
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + "lease-", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``_lease.lock``'s flock: every rewrite and delete of the lease runs under it,
        so a read-compare-write cannot interleave with another's. Creation needs no lock
        (``link(2)`` is conditional by itself)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(os.path.join(self.folder, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # e.g. ENOLCK on a filesystem without locks
                logger.warning("cannot lock %s (%s); lease updates there are not serialised",
                               os.path.join(self.folder, LOCK_NAME), exc)
            yield
        finally:
            os.close(fd)  # drops the flock


def _precondition(exc: BaseException) -> str | None:
    """``"failed"`` for HTTP 412 (the condition did not hold), ``"conflict"`` for 409
    ConditionalRequestConflict (a concurrent conditional write: read again and retry)."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "PreconditionFailed" or status == 412:
                return "failed"
            if code == "ConditionalRequestConflict" or status == 409:
                return "conflict"
        err = err.__cause__ or err.__context__
    return None


class _ObjectStore(_Store):
    """S3 (s3fs): conditional PUT / DELETE with ``If-None-Match`` and ``If-Match``."""

    def __init__(self, partition_uri: str, retry: RetryPolicy | None) -> None:
        super().__init__(partition_uri, retry)
        self.fs, self.path = filesystem_for(self.uri)
        self.bucket, self.key, _ = self.fs.split_path(self.path)

    def _sync(self, coro_fn: Callable[[], Any]) -> Any:
        from fsspec.asyn import sync

        return sync(self.fs.loop, coro_fn)

    def read(self) -> _Seen | None:
        async def get() -> tuple[bytes, dict]:
            # One GET gives the bytes and their ETag together (info() then cat() could
            # pair one version's ETag with another's bytes).
            response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                return await response["Body"].read(), response
            finally:
                response["Body"].close()

        try:
            data, response = with_retries("read lease", self.uri, lambda: self._sync(get), self.retry)
        except FileNotFoundError:
            return None
        modified = response.get("LastModified")
        return _Seen(data, response.get("ETag"), modified if isinstance(modified, datetime) else None,
                     _parse(data))

    def _put(self, op: str, data: bytes, **condition: str) -> str | None:
        response = with_retries(op, self.uri, lambda: self.fs.pipe_file(self.path, data, **condition), self.retry)
        # s3fs returns put_object's response for small bodies: the ETag of what we wrote.
        return response.get("ETag") if isinstance(response, dict) else None

    def create(self, data: bytes) -> str | None:
        try:
            return self._put("create lease", data, IfNoneMatch="*")
        except OSError as exc:
            if isinstance(exc, FileExistsError) or _precondition(exc) == "failed":
                raise FileExistsError(errno.EEXIST, "lease exists", self.uri) from exc
            if _precondition(exc) == "conflict":
                raise _Changed() from exc
            raise

    def replace(self, data: bytes, seen: _Seen) -> str | None:
        if not seen.etag:
            raise _Changed()
        try:
            return self._put("renew lease", data, IfMatch=seen.etag)
        except FileNotFoundError as exc:  # If-Match on a missing key: 404 NoSuchKey
            raise _Changed() from exc
        except OSError as exc:
            if _precondition(exc) is not None:
                raise _Changed() from exc
            raise

    def delete(self, seen: _Seen) -> None:
        if not seen.etag:
            raise _Changed()

        def delete() -> None:
            try:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=seen.etag)
            finally:
                self.fs.invalidate_cache(self.path)

        try:
            with_retries("delete lease", self.uri, delete, self.retry)
        except FileNotFoundError:  # already gone
            return
        except OSError as exc:
            if _precondition(exc) is not None:
                raise _Changed() from exc
            raise


def _store(partition_uri: str, retry: RetryPolicy | None = None) -> _Store:
    return _LocalStore(partition_uri, retry) if is_local(partition_uri) else _ObjectStore(partition_uri, retry)


# ------------------------------------------------------------------------- reading


def read_lease(partition_uri: str, *, retry: RetryPolicy | None = None) -> LeaseInfo | None:
    """The partition's current lease, or None when there is none.

    Raises :class:`LeaseError` for a ``_lease.json`` mgc cannot parse (not written by
    mgc): it is never silently treated as free.
    """
    store = _store(partition_uri, retry)
    seen = store.read()
    if seen is None:
        return None
    if seen.info is None:
        raise LeaseError(_unreadable_message(store.uri, seen))
    return seen.info


def check_holder(partition_uri: str, token: str, *, now: Clock | None = None,
                 retry: RetryPolicy | None = None) -> None:
    """Raise :class:`LeaseLost` unless ``token`` holds the partition's unexpired lease.

    Why a function of the token alone: tagging actors in other processes get the
    partition URI and the token (picklable strings) and call this before each file, one
    GET each, instead of sharing the :class:`PartitionLease` object.
    """
    store = _store(partition_uri, retry)
    _check(store, store.read(), token, _utc(now or utc_now))


def _check(store: _Store, seen: _Seen | None, token: str, now: datetime) -> LeaseInfo:
    if seen is None:
        raise LeaseLost(f"lease {store.uri} is gone: this run no longer holds the partition")
    if seen.info is None:
        raise LeaseLost(f"lease {store.uri} was overwritten with something unreadable; stop writing")
    if seen.info.token != token:
        raise LeaseLost(f"lease {store.uri} is now held by {seen.info.describe(now)}: this run lost "
                        "the partition and must stop writing")
    if seen.info.expired(now):
        raise LeaseLost(f"our lease {store.uri} expired at {_iso(seen.info.expires_at)} (renewal did "
                        "not keep up); another run may take it over, so stop writing")
    return seen.info


def _unreadable_message(uri: str, seen: _Seen) -> str:
    modified = f" (last modified {_iso(seen.modified_at)})" if seen.modified_at else ""
    return (f"lease {uri}{modified} is not an mgc lease or was cut short; if no run is "
            "writing this partition, delete it (or use --force once it is older than the TTL)")


def _held_message(uri: str, partition_uri: str, info: LeaseInfo, now: datetime, force: bool) -> str:
    if info.expired(now):
        hint = ("it has expired (the run probably died): rerun with --force to take it over"
                if not force else "it expired but changed while we took it over; try again")
    else:
        hint = ("another run is writing this partition; wait for it to finish or for the lease "
                "to expire. --force takes over only an expired lease")
    return f"partition {partition_uri} is leased to {info.describe(now)} (lease {uri}); {hint}"


# -------------------------------------------------------------------------- holding


class PartitionLease:
    """Our lease on one partition: acquire, renew, check, release.

    Use it as a context manager: ``with PartitionLease.acquire(uri, purpose="jobs/tag.py")
    as lease:`` starts a daemon thread renewing every ``ttl_s / 3`` and releases on exit.
    Call :meth:`assert_held` (or :func:`check_holder` with :attr:`token`) before writing
    each file. A renewal that finds another holder, or storage failing
    :data:`MAX_RENEW_FAILURES` times in a row, is recorded in :attr:`failure`, and
    :meth:`assert_held` raises from then on.
    """

    def __init__(self, store: _Store, seen: _Seen, *, now: Clock, renew_every_s: float,
                 max_renew_failures: int) -> None:
        assert seen.info is not None
        self._store = store
        self._seen = seen
        self._now = now
        self._renew_every_s = renew_every_s
        self._max_renew_failures = max_renew_failures
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._released = False
        self.failure: BaseException | None = None

    # ---------------------------------------------------------------- acquiring

    @classmethod
    def acquire(cls, partition_uri: str, ttl_s: float = DEFAULT_TTL_S, purpose: str = "",
                force: bool = False, *, now: Clock | None = None, renew_every_s: float | None = None,
                max_renew_failures: int = MAX_RENEW_FAILURES,
                retry: RetryPolicy | None = None) -> PartitionLease:
        """Take the partition's lease or raise :class:`LeaseHeld` naming who has it.

        The lease is created only if none exists. ``force`` deletes an *expired* lease
        (only if unchanged since read) and then creates ours, still conditionally: if
        another run got there first, :class:`LeaseHeld`. An unexpired lease is never taken,
        except one whose holder was a process on this host that is gone
        (:meth:`LeaseHolder.gone`): that needs no ``force``. The partition folder need not
        exist.
        """
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, not {ttl_s}")
        clock = now or utc_now
        store = _store(partition_uri, retry)
        token = uuid.uuid4().hex
        holder = LeaseHolder.this_process(purpose)
        every = renew_every_s if renew_every_s is not None else ttl_s * RENEW_FRACTION

        def make(seen: _Seen) -> PartitionLease:
            return cls(store, seen, now=clock, renew_every_s=every, max_renew_failures=max_renew_failures)

        forced = False
        last: LeaseInfo | None = None
        for _ in range(_ATTEMPTS):
            moment = _utc(clock)
            info = LeaseInfo(token=token, holder=holder, acquired_at=moment, renewed_at=moment,
                             expires_at=moment + timedelta(seconds=ttl_s), ttl_s=float(ttl_s))
            data = info.encode()
            try:
                etag = store.create(data)
            except FileExistsError:
                pass
            except _Changed:  # a concurrent conditional write (409): look again shortly
                time.sleep(random.uniform(0.01, 0.1))
                continue
            else:
                seen = _Seen(data, etag, None, info)
                if etag is None and not is_local(partition_uri):
                    seen = store.read() or seen  # no ETag in the response: learn it
                how = " (took over an expired lease)" if forced else ""
                logger.info("leased %s until %s%s", store.partition_uri, _iso(info.expires_at), how)
                return make(seen)

            seen = store.read()
            if seen is None:
                continue  # released between our create and our read: try again
            if seen.info is not None and seen.info.token == token:
                # Our create succeeded but its answer was lost and the retry got 412.
                return make(seen)
            moment = _utc(clock)
            if seen.info is None:
                stale = seen.modified_at is not None and seen.modified_at + timedelta(seconds=ttl_s) <= moment
                if not (force and stale) or forced:
                    raise LeaseHeld(_unreadable_message(store.uri, seen), store.partition_uri, None)
            else:
                last = seen.info
                abandoned = seen.info.holder.gone()
                if not (abandoned or (force and seen.info.expired(moment))) or forced:
                    raise LeaseHeld(_held_message(store.uri, store.partition_uri, seen.info, moment, forced),
                                    store.partition_uri, seen.info)
            who = seen.info.describe(moment) if seen.info else "an unreadable lease"
            try:
                store.delete(seen)
            except _Changed:
                continue  # renewed or replaced meanwhile: the next round reports it
            forced = True
            logger.warning("removed the %s lease on %s held by %s", "abandoned" if seen.info and seen.info.holder.gone()
                           else "expired", store.partition_uri, who)
        if last is not None:
            raise LeaseHeld(_held_message(store.uri, store.partition_uri, last, _utc(clock), forced),
                            store.partition_uri, last)
        raise LeaseHeld(f"partition {store.partition_uri}: the lease {store.uri} kept changing while we "
                        f"tried to acquire it ({_ATTEMPTS} tries); another run is competing for it",
                        store.partition_uri, None)

    # ---------------------------------------------------------------- holding

    @property
    def partition_uri(self) -> str:
        return self._store.partition_uri

    @property
    def uri(self) -> str:
        """The lease object's URI."""
        return self._store.uri

    @property
    def token(self) -> str:
        """Our holder token: give it to writers that call :func:`check_holder`."""
        return self.info.token

    @property
    def info(self) -> LeaseInfo:
        """The lease as we last wrote it."""
        with self._lock:
            assert self._seen.info is not None
            return self._seen.info

    def renew(self) -> LeaseInfo:
        """Extend the lease by its TTL from now, only if it is still ours and unchanged.

        Raises :class:`LeaseLost` when it was released, taken over or changed (and
        records that in :attr:`failure`); storage errors propagate (``StorageError``).
        """
        with self._lock:
            if self._released:
                raise LeaseLost(f"lease {self.uri} was released")
            if self.failure is not None and isinstance(self.failure, LeaseLost):
                raise LeaseLost(str(self.failure)) from self.failure
            moment = _utc(self._now)
            current = self._seen.info
            assert current is not None
            info = current.renewed(moment)
            data = info.encode()
            try:
                etag = self._store.replace(data, self._seen)
            except _Changed as exc:
                seen = self._store.read()
                if seen is not None and seen.data == data:  # our write landed; a retry got 412
                    self._seen = seen
                    return info
                lost = LeaseLost(self._lost_message(seen, moment))
                self.failure = lost
                logger.error("%s", lost)
                raise lost from exc
            seen = _Seen(data, etag, None, info)
            if etag is None and not is_local(self.partition_uri):
                seen = self._store.read() or seen
            self._seen = seen
            logger.debug("renewed %s until %s", self.uri, _iso(info.expires_at))
            return info

    def _lost_message(self, seen: _Seen | None, now: datetime) -> str:
        if seen is None:
            where = "it is gone"
        elif seen.info is None:
            where = "it was overwritten with something unreadable"
        else:
            where = f"it is now held by {seen.info.describe(now)}"
        return f"lost the lease {self.uri}: {where}; this run must stop writing the partition"

    def assert_held(self) -> None:
        """Raise :class:`LeaseLost` unless the stored lease is still ours and unexpired.

        One read of the lease object: cheap enough to call before writing each file, and
        the only way to notice a takeover between renewals.
        """
        if self._released:
            raise LeaseLost(f"lease {self.uri} was released")
        if self.failure is not None:
            raise LeaseLost(f"lease {self.uri} can no longer be trusted: {self.failure}") from self.failure
        _check(self._store, self._store.read(), self.token, _utc(self._now))

    def release(self) -> bool:
        """Delete the lease if it is still ours (unchanged since we wrote it); True if deleted.

        Stops the renewal thread first. A lease someone else holds by now is left alone
        (logged, not raised: this runs in ``__exit__`` and must not hide the real error).
        """
        self._stop_renewing()
        with self._lock:
            if self._released:
                return False
            self._released = True
            try:
                self._store.delete(self._seen)
            except _Changed:
                seen = self._store.read()
                logger.warning("not releasing %s: %s", self.uri, self._lost_message(seen, _utc(self._now)))
                return False
            logger.info("released %s", self.uri)
            return True

    # ---------------------------------------------------------------- renewal thread

    def __enter__(self) -> Self:
        self._start_renewing()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.release()
        except Exception as exc:
            if exc_info[0] is None:
                raise
            logger.warning("could not release %s: %s", self.uri, exc)

    def _start_renewing(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"mgc-lease-{self.token[:8]}", daemon=True)
        self._thread.start()

    def _stop_renewing(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _renew_loop(self) -> None:
        failures = 0
        while not self._stop.wait(self._renew_every_s):
            try:
                self.renew()
                failures = 0
            except LeaseLost:
                return  # recorded by renew()
            except (StorageError, OSError) as exc:
                failures += 1
                logger.warning("renewing %s failed (%d in a row): %s", self.uri, failures, exc)
                if failures >= self._max_renew_failures:
                    self.failure = exc
                    logger.error("giving up renewing %s after %d failures; writers will stop", self.uri, failures)
                    return
            except Exception as exc:  # noqa: BLE001 - a thread must record, not vanish
                self.failure = exc
                logger.error("renewing %s failed: %r", self.uri, exc)
                return
