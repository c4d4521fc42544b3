"""mgc.io.lease: one writer per output partition, on local folders and on S3 (moto server).

Every test runs against real storage: a tmp_path folder, or a fresh bucket on the moto S3
server reached through s3fs. Expiry is tested with injected clocks, never by sleeping.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from mgc.io import lease as lease_mod
from mgc.io.lease import (
    DEFAULT_TTL_S,
    LEASE_NAME,
    LeaseError,
    LeaseHeld,
    LeaseInfo,
    LeaseLost,
    PartitionLease,
    check_holder,
    read_lease,
)
from mgc.io.storage import StorageError, exists, join, read_bytes, write_bytes

T0 = datetime(2026, 1, 1, 3, 0, tzinfo=timezone.utc)


class Clock:
    """A settable UTC clock for ``now=``."""

    def __init__(self, start: datetime = T0) -> None:
        self.value = start

    def __call__(self) -> datetime:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += timedelta(seconds=seconds)


def shifted(seconds: float):
    """The real clock, ``seconds`` ahead (another run, much later)."""
    return lambda: datetime.now(timezone.utc) + timedelta(seconds=seconds)


@pytest.fixture(params=["local", "s3"])
def partition(request, tmp_path) -> str:
    """A partition URI that nothing has written yet (no folder, no prefix)."""
    if request.param == "local":
        return str(tmp_path / "out" / "model_id=m1")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/out/model_id=m1"


def wait_until(predicate, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_first_acquire_writes_the_lease_and_a_second_run_is_refused(partition):
    first = PartitionLease.acquire(partition, purpose="jobs/tag.py nightly")
    raw = json.loads(read_bytes(join(partition, LEASE_NAME)))
    assert set(raw) >= {"token", "holder", "acquired_at", "renewed_at", "expires_at", "ttl_s"}
    assert set(raw["holder"]) == {"host", "pid", "started_at", "purpose"}
    info = read_lease(partition)
    assert info is not None and info.token == first.token == raw["token"]
    assert len(info.token) == 32 and int(info.token, 16) >= 0  # uuid4 hex
    assert info.holder.host == socket.gethostname() and info.holder.pid == os.getpid()
    assert info.holder.purpose == "jobs/tag.py nightly"
    assert info.ttl_s == DEFAULT_TTL_S == 600.0
    assert info.expires_at - info.acquired_at == timedelta(seconds=DEFAULT_TTL_S)
    assert info.acquired_at.tzinfo is not None and raw["expires_at"].endswith("+00:00")
    assert not info.expired() and info.expired(info.expires_at)

    with pytest.raises(LeaseHeld) as caught:
        PartitionLease.acquire(partition, purpose="retry pod")
    message = str(caught.value)
    for part in (socket.gethostname(), str(os.getpid()), "jobs/tag.py nightly", info.expires_at.isoformat(),
                 "--force", partition):
        assert part in message, (part, message)
    assert caught.value.info == info
    first.assert_held()
    check_holder(partition, first.token)
    assert read_lease(partition) == info  # the refused run changed nothing
    first.release()


def test_release_removes_the_lease_and_a_new_run_then_acquires(partition):
    first = PartitionLease.acquire(partition, purpose="first")
    assert first.release() is True
    assert not exists(join(partition, LEASE_NAME)) and read_lease(partition) is None
    with pytest.raises(LeaseLost):
        first.assert_held()
    with pytest.raises(LeaseLost):
        first.renew()
    second = PartitionLease.acquire(partition, purpose="second")
    assert second.token != first.token
    assert first.release() is False  # released already: the second run's lease stays
    assert read_lease(partition).token == second.token
    assert second.release() is True


def test_an_expired_lease_is_refused_without_force_and_taken_over_with_it(partition):
    clock = Clock()
    crashed = PartitionLease.acquire(partition, ttl_s=60, purpose="crashed run", now=clock)
    later = Clock(T0 + timedelta(seconds=61))

    with pytest.raises(LeaseHeld) as caught:
        PartitionLease.acquire(partition, ttl_s=60, purpose="next run", now=later)
    assert "expired" in str(caught.value) and "--force" in str(caught.value)
    assert "crashed run" in str(caught.value)
    assert read_lease(partition).token == crashed.token

    taker = PartitionLease.acquire(partition, ttl_s=60, purpose="next run", force=True, now=later)
    info = read_lease(partition)
    assert info.token == taker.token and info.holder.purpose == "next run"
    assert info.acquired_at == later.value
    taker.assert_held()
    assert taker.release() is True


def test_an_unexpired_lease_is_refused_even_with_force(partition):
    clock = Clock()
    holder = PartitionLease.acquire(partition, ttl_s=60, purpose="still running", now=clock)
    almost = Clock(T0 + timedelta(seconds=59))
    with pytest.raises(LeaseHeld) as caught:
        PartitionLease.acquire(partition, ttl_s=60, purpose="impatient", force=True, now=almost)
    assert "still running" in str(caught.value) and "only an expired lease" in str(caught.value)
    assert read_lease(partition).token == holder.token
    holder.assert_held()
    holder.release()


def test_renewal_extends_the_lease_and_a_takeover_makes_the_old_holder_lose_it(partition):
    clock = Clock()
    original = PartitionLease.acquire(partition, ttl_s=60, purpose="original", now=clock)
    acquired = original.info.acquired_at
    for step in (1, 2):
        clock.advance(20)
        renewed = original.renew()
        stored = read_lease(partition)
        assert stored == renewed == original.info
        assert stored.renewed_at == clock.value and stored.acquired_at == acquired
        assert stored.expires_at == T0 + timedelta(seconds=20 * step + 60)
        original.assert_held()

    # The original stalls; much later another run force-takes the expired lease.
    clock.advance(61)
    taker = PartitionLease.acquire(partition, ttl_s=60, purpose="taker", force=True, now=Clock(clock.value))
    with pytest.raises(LeaseLost, match="taker"):
        original.renew()
    with pytest.raises(LeaseLost):
        original.assert_held()
    with pytest.raises(LeaseLost):
        check_holder(partition, original.token, now=clock)
    check_holder(partition, taker.token, now=clock)
    assert original.release() is False  # never deletes the taker's lease
    assert read_lease(partition).token == taker.token
    taker.release()


def test_check_holder_refuses_an_expired_or_missing_lease(partition):
    with pytest.raises(LeaseLost, match="gone"):
        check_holder(partition, "0" * 32)
    clock = Clock()
    lease = PartitionLease.acquire(partition, ttl_s=60, now=clock)
    check_holder(partition, lease.token, now=clock)
    clock.advance(60)
    with pytest.raises(LeaseLost, match="expired"):
        check_holder(partition, lease.token, now=clock)
    with pytest.raises(LeaseLost, match="expired"):
        lease.assert_held()
    lease.renew()  # unchanged since we wrote it: still ours to renew
    lease.assert_held()
    lease.release()


def test_the_context_manager_renews_in_the_background_and_releases(partition):
    with PartitionLease.acquire(partition, ttl_s=60, purpose="ctx", renew_every_s=0.05) as lease:
        acquired = lease.info.acquired_at
        assert wait_until(lambda: read_lease(partition).renewed_at > acquired)
        assert read_lease(partition).expires_at > acquired + timedelta(seconds=60)
        lease.assert_held()
    assert read_lease(partition) is None


def test_the_renewal_thread_records_a_takeover(partition):
    with PartitionLease.acquire(partition, ttl_s=60, purpose="victim", renew_every_s=0.05) as victim:
        taker = PartitionLease.acquire(partition, ttl_s=60, purpose="taker", force=True, now=shifted(61))
        assert wait_until(lambda: isinstance(victim.failure, LeaseLost))
        with pytest.raises(LeaseLost):
            victim.assert_held()
    assert read_lease(partition).token == taker.token  # exit left the taker's lease alone
    taker.release()


def test_repeated_storage_errors_in_renewal_make_assert_held_raise(partition):
    lease = PartitionLease.acquire(partition, ttl_s=60, renew_every_s=0.02)

    def store_down(data, seen):
        raise StorageError("storage endpoint kept failing (injected)", uri=partition)

    lease._store.replace = store_down  # fault injection into our own store, not into s3fs
    with lease:
        assert wait_until(lambda: lease.failure is not None)
        assert isinstance(lease.failure, StorageError)
        with pytest.raises(LeaseLost, match="injected"):
            lease.assert_held()
    assert read_lease(partition) is None  # release still worked: the lease was unchanged


def test_racing_runs_on_a_fresh_partition_exactly_one_wins(partition):
    runs = 6
    barrier = threading.Barrier(runs)
    won: list[PartitionLease] = []
    refused: list[LeaseHeld] = []
    other: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            won.append(PartitionLease.acquire(partition, purpose=f"run {i}"))
        except LeaseHeld as exc:
            refused.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported below
            other.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not other, other
    assert len(won) == 1 and len(refused) == runs - 1
    assert read_lease(partition).token == won[0].token
    assert all(exc.info is not None and exc.info.token == won[0].token for exc in refused)
    won[0].release()


def test_racing_force_takeovers_of_an_expired_lease_exactly_one_wins(partition):
    PartitionLease.acquire(partition, ttl_s=60, now=Clock())  # a crashed run's lease, long expired
    runs = 4
    barrier = threading.Barrier(runs)
    won: list[PartitionLease] = []
    refused: list[LeaseHeld] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            won.append(PartitionLease.acquire(partition, purpose=f"run {i}", force=True))
        except LeaseHeld as exc:
            refused.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1 and len(refused) == runs - 1
    assert read_lease(partition).token == won[0].token
    won[0].release()


def test_an_unreadable_lease_is_never_treated_as_free(partition):
    write_bytes(join(partition, LEASE_NAME), b"{not json")
    with pytest.raises(LeaseError, match="not an mgc lease"):
        read_lease(partition)
    with pytest.raises(LeaseHeld, match="not an mgc lease"):
        PartitionLease.acquire(partition, force=True)  # just written: not stale
    taker = PartitionLease.acquire(partition, ttl_s=60, force=True, now=shifted(61))  # older than the TTL
    assert read_lease(partition).token == taker.token
    taker.release()


def test_lease_files_stay_out_of_the_partition_data(tmp_path):
    partition = str(tmp_path / "model_id=m1")
    with PartitionLease.acquire(partition, purpose="writer") as lease:
        lease.renew()
        pd.DataFrame({"track_id": ["a", "b"]}).to_parquet(os.path.join(partition, "part-0.parquet"))
        names = sorted(os.listdir(partition))
        assert names == ["_lease.json", "_lease.lock", "part-0.parquet"]  # no temporaries left
        assert list(pd.read_parquet(partition).track_id) == ["a", "b"]


def test_lease_errors_pickle_and_info_round_trips():
    info = LeaseInfo(token="ab" * 16, holder=lease_mod.LeaseHolder.this_process("p"), acquired_at=T0,
                     renewed_at=T0, expires_at=T0 + timedelta(seconds=60), ttl_s=60.0)
    assert LeaseInfo.decode(info.encode()) == info
    held = pickle.loads(pickle.dumps(LeaseHeld("held by x", "s3://b/p", info)))
    assert str(held) == "held by x" and held.info == info and isinstance(held, RuntimeError)
    lost = pickle.loads(pickle.dumps(LeaseLost("lost")))
    assert str(lost) == "lost" and isinstance(lost, RuntimeError)
    with pytest.raises(ValueError):
        PartitionLease.acquire("/nonexistent-never-created", ttl_s=0)


def test_a_lease_whose_holder_died_on_this_host_is_taken_without_force(tmp_path):
    """A run killed with SIGKILL left its lease: the next run on the host takes it at once."""
    import signal
    import subprocess
    import sys

    partition = str(tmp_path / "model_id=m-1")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mgc.io.lease import PartitionLease; "
        f"lease = PartitionLease.acquire({partition!r}, purpose='killed run'); print('held', flush=True); "
        "time.sleep(120)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match="killed run"):
            PartitionLease.acquire(partition)  # alive: refused
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    lease = PartitionLease.acquire(partition, purpose="next run")  # no --force needed
    assert read_lease(partition).token == lease.token
    lease.release()
