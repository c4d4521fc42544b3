"""Storage faults: transient S3 errors are retried with backoff; an unreachable endpoint fails
with a clear StorageError (URI and endpoint named) and leaves no partial output.

Real parts throughout: S3 is moto's server on 127.0.0.1 reached through s3fs; "the endpoint
goes away" is a second moto server that the test stops. Both servers share moto's in-process
backend, so what the stopped one holds can still be inspected through the session's server.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import botocore.exceptions as bce
import pyarrow.parquet as pq
import pytest
import s3fs

from conftest import REPO, S3_ENV, copy_tree
from mgc.io import lease, storage
from mgc.io.storage import RetryPolicy, StorageError

FAST = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05, deadline_s=2.0)

# What a job needs in its environment so that an unreachable endpoint fails in seconds.
FAST_ENV = {
    "MGC_STORAGE_RETRY_ATTEMPTS": "3",
    "MGC_STORAGE_RETRY_BASE_DELAY_S": "0.05",
    "MGC_STORAGE_RETRY_MAX_DELAY_S": "0.2",
    "MGC_STORAGE_RETRY_DEADLINE_S": "2",
    "MGC_S3_MAX_ATTEMPTS": "1",
    "MGC_S3_CONNECT_TIMEOUT_S": "2",
}


def client_error(code: str, status: int) -> bce.ClientError:
    return bce.ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "PutObject")


class Flaky:
    """Fails the first ``failures`` calls with ``error()``, then delegates to ``real``."""

    def __init__(self, real, failures: int, error):
        self.real, self.failures, self.error, self.calls = real, failures, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return self.real(*args, **kwargs)


@pytest.fixture
def no_sleep(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(storage, "_sleep", waits.append)
    return waits


@pytest.fixture
def dead_store(s3_endpoint, s3_bucket, monkeypatch):
    """A second moto server the test can stop; the AWS environment points at it.

    Yields ``(endpoint, bucket, stop)``. The bucket is the session's (moto's backend is
    shared), so after ``stop()`` its content is still readable through ``s3_endpoint``.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = "http://{}:{}".format(*server.get_host_and_port())
    stopped = []

    def stop():
        if not stopped:
            server.stop()
            stopped.append(True)
        s3fs.S3FileSystem.clear_instance_cache()

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for key, value in FAST_ENV.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield endpoint, s3_bucket, stop
    stop()


def live_keys(s3_endpoint: str, prefix: str) -> list[str]:
    """Object keys under ``prefix`` as the (live) session server sees them."""
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    try:
        return sorted(fs.find(prefix))
    except FileNotFoundError:
        return []


# ------------------------------------------------------------------------ policy, unit


def test_retry_policy_backoff_is_exponential_jittered_and_capped() -> None:
    policy = RetryPolicy(attempts=10, base_delay_s=1.0, max_delay_s=5.0, deadline_s=100.0)
    for failed, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = {policy.delay_s(failed) for _ in range(50)}
        assert all(cap / 2 <= d <= cap for d in delays), (failed, delays)
        assert len(delays) > 1  # jittered


def test_retry_policy_from_env(monkeypatch) -> None:
    assert RetryPolicy.from_env({}) == RetryPolicy()
    env = {"MGC_STORAGE_RETRY_ATTEMPTS": "2", "MGC_STORAGE_RETRY_DEADLINE_S": "1.5"}
    assert RetryPolicy.from_env(env) == RetryPolicy(attempts=2, deadline_s=1.5)
    with pytest.raises(ValueError, match="MGC_STORAGE_RETRY_ATTEMPTS"):
        RetryPolicy.from_env({"MGC_STORAGE_RETRY_ATTEMPTS": "many"})
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize("error, transient", [
    (ConnectionRefusedError("refused"), True),
    (TimeoutError("timed out"), True),
    (bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
    (bce.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
    (client_error("SlowDown", 503), True),
    (client_error("InternalError", 500), True),
    (client_error("ThrottlingException", 400), True),
    (OSError(errno.EREMOTEIO, "We encountered an internal error"), True),  # s3fs's 500
    (OSError(errno.EBUSY, "Please reduce your request rate"), True),  # s3fs's 503
    (client_error("AccessDenied", 403), False),
    (FileNotFoundError("no such key"), False),
    (PermissionError("denied"), False),
    (OSError(errno.EINVAL, "bad bucket name"), False),
    (ValueError("not storage at all"), False),
])
def test_transient_errors_are_told_apart(error, transient) -> None:
    assert storage.is_transient(error) is transient


def test_a_wrapped_connection_error_is_transient_but_a_missing_object_never_is() -> None:
    try:
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as inner:
            raise OSError("read failed") from inner
    except OSError as outer:
        assert storage.is_transient(outer)
    missing = FileNotFoundError("gone")
    missing.__cause__ = ConnectionResetError("whatever happened before")
    assert not storage.is_transient(missing)


def test_storage_error_pickles_and_names_uri_and_endpoint() -> None:
    err = StorageError("cannot reach storage endpoint http://x:1: read s3://b/k", "s3://b/k", "http://x:1")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.uri, back.endpoint) == (StorageError, str(err), "s3://b/k", "http://x:1")
    assert isinstance(back, OSError)


def test_s3_options_bound_botocore_and_respect_aws_settings(monkeypatch) -> None:
    for key in ("AWS_MAX_ATTEMPTS", "MGC_S3_MAX_ATTEMPTS", "MGC_S3_CONNECT_TIMEOUT_S", "AWS_RETRY_MODE"):
        monkeypatch.delenv(key, raising=False)
    config = storage._s3_options()["config_kwargs"]
    assert config["connect_timeout"] == storage.S3_CONNECT_TIMEOUT_S
    assert config["retries"] == {"max_attempts": storage.S3_MAX_ATTEMPTS, "mode": "standard"}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")  # the standard variable wins: we set no retries
    assert "retries" not in storage._s3_options()["config_kwargs"]


def test_endpoint_of_never_shows_credentials(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://user:hunter2@minio.local:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert storage.endpoint_of("s3://b/k") == "http://minio.local:9000"
    assert storage.endpoint_of("https://u:p@cdn.example.com/a.mp3") == "https://cdn.example.com"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert "AWS S3" in storage.endpoint_of("s3://b/k")


# ------------------------------------------------------------- retries against real S3


def test_transient_s3_errors_are_retried_with_backoff_then_succeed(s3_endpoint, s3_bucket, no_sleep, monkeypatch):
    uri = f"s3://{s3_bucket}/flaky/object.bin"
    fs, _ = storage.filesystem_for(uri)
    put = Flaky(fs.pipe_file, 2, lambda: client_error("SlowDown", 503))
    monkeypatch.setattr(fs, "pipe_file", put)
    storage.write_bytes(uri, b"payload", retry=FAST)
    assert put.calls == 3 and len(no_sleep) == 2

    opened = Flaky(fs.open, 3, lambda: bce.EndpointConnectionError(endpoint_url=s3_endpoint))
    monkeypatch.setattr(fs, "open", opened)
    assert storage.read_bytes(uri, retry=FAST) == b"payload"
    assert opened.calls == 4
    # The waits grow (base 0.01 s, doubling, capped at 0.05 s).
    assert no_sleep[2] <= 0.01 and 0.005 <= no_sleep[4] <= 0.05


def test_final_errors_are_raised_at_once_unchanged(s3_endpoint, s3_bucket, no_sleep):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"s3://{s3_bucket}/no/such/key", retry=FAST)
    assert no_sleep == []
    assert storage.exists(f"s3://{s3_bucket}/no/such/key", retry=FAST) is False


def test_persistent_5xx_gives_up_within_the_deadline(s3_endpoint, s3_bucket, monkeypatch):
    uri = f"s3://{s3_bucket}/always/failing.bin"
    fs, _ = storage.filesystem_for(uri)
    put = Flaky(fs.pipe_file, 10**6, lambda: client_error("InternalError", 500))
    monkeypatch.setattr(fs, "pipe_file", put)
    policy = RetryPolicy(attempts=1000, base_delay_s=0.05, max_delay_s=0.05, deadline_s=0.4)
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        storage.write_bytes(uri, b"x", retry=policy)
    assert time.monotonic() - started < 2.0
    assert 2 <= put.calls < 1000
    message = str(caught.value)
    assert "kept failing" in message and uri in message and s3_endpoint in message
    assert caught.value.uri == uri and caught.value.endpoint == s3_endpoint


def test_download_dir_round_trip_into_new_or_empty_dirs(s3_endpoint, s3_bucket, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a")
    (src / "sub" / "b.json").write_text("{}")
    storage.upload_dir(src, f"s3://{s3_bucket}/dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (tmp_path / "new" / "deeper", empty):
        got = storage.download_dir(f"s3://{s3_bucket}/dir", target)
        assert got == target
        assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == ["a.bin", "sub/b.json"]
    assert not [p for p in tmp_path.rglob(".tmp-download-*")]


def test_local_files_are_never_retried(tmp_path, no_sleep):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "missing.bin"))
    assert no_sleep == []


# ------------------------------------------------------------- an unreachable endpoint


def test_unreachable_endpoint_fails_fast_with_clear_error_and_writes_nothing(dead_store, s3_endpoint, tmp_path):
    endpoint, bucket, stop = dead_store
    storage.write_bytes(f"s3://{bucket}/ckpt/model.pt", b"weights")
    storage.write_bytes(f"s3://{bucket}/ckpt/mgc.json", b"{}")
    stop()

    stage = tmp_path / "stage"
    (stage / "checkpoint").mkdir(parents=True)
    (stage / "checkpoint" / "model.pt").write_bytes(b"new weights")
    (stage / "metrics.json").write_text("{}")
    calls = {
        "read": lambda: storage.read_bytes(f"s3://{bucket}/ckpt/model.pt"),
        "write": lambda: storage.write_bytes(f"s3://{bucket}/out/part-0.parquet", b"rows"),
        "exists": lambda: storage.exists(f"s3://{bucket}/ckpt/model.pt"),
        "download": lambda: storage.download_dir(f"s3://{bucket}/ckpt", tmp_path / "download"),
        "upload": lambda: storage.upload_dir(stage, f"s3://{bucket}/run"),
    }
    for op, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StorageError) as caught:
            call()
        seconds = time.monotonic() - started
        message = str(caught.value)
        assert f"cannot reach storage endpoint {endpoint}" in message, (op, message)
        assert f"s3://{bucket}/" in message and caught.value.endpoint == endpoint, (op, message)
        assert seconds < 15, (op, seconds)  # policy deadline 2 s, botocore 1 try, 2 s connect timeout

    # Nothing partial anywhere: no objects written, no local download left behind.
    assert live_keys(s3_endpoint, f"{bucket}/out") == []
    assert live_keys(s3_endpoint, f"{bucket}/run") == []
    assert not (tmp_path / "download").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_upload_dir_writes_metadata_last_and_never_looks_complete_when_cut(
        s3_endpoint, s3_bucket, monkeypatch, tmp_path):
    """An upload that dies half-way over an older run leaves neither set of metadata behind."""
    run = f"s3://{s3_bucket}/runs/exp"
    for name, data in {"checkpoint/model.pt": b"old", "checkpoint/mgc.json": b"{}", "metrics.json": b"{}"}.items():
        storage.write_bytes(f"{run}/{name}", data)
    stage = tmp_path / "stage"
    (stage / "checkpoint").mkdir(parents=True)
    for name in ("checkpoint/model.pt", "checkpoint/mgc.json", "metrics.json", "learning_curves.png"):
        (stage / name).write_bytes(b"new " + name.encode())

    fs, _ = storage.filesystem_for(run)
    real_put = fs.pipe_file
    order: list[str] = []

    def put(path, data, **kwargs):
        order.append(path.split("/runs/exp/", 1)[1])
        if path.endswith("checkpoint/mgc.json"):
            raise PermissionError("the store refused the write half-way")
        return real_put(path, data, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", put)
    with pytest.raises(PermissionError):
        storage.upload_dir(stage, run, retry=FAST)
    assert order == ["checkpoint/model.pt", "learning_curves.png", "checkpoint/mgc.json"]
    left = [key.split("/runs/exp/", 1)[1] for key in live_keys(s3_endpoint, f"{s3_bucket}/runs/exp")]
    # Neither the old metadata (beside new weights) nor the new one: visibly incomplete.
    assert "checkpoint/mgc.json" not in left and "metrics.json" not in left, left

    monkeypatch.setattr(fs, "pipe_file", real_put)
    storage.upload_dir(stage, run, retry=FAST)
    assert storage.read_bytes(f"{run}/metrics.json") == b"new metrics.json"
    assert storage.read_bytes(f"{run}/checkpoint/model.pt") == b"new checkpoint/model.pt"


def make_checkpoint(directory: Path) -> str:
    """A real (untrained) genre + mood checkpoint: tagging mechanics need no good model."""
    import torch

    from mgc.models.checkpoint import CheckpointMeta, save_checkpoint
    from mgc.config import AudioConfig, TaskSpec
    from mgc.models.zoo import build_model

    tasks = {"genre": TaskSpec("multiclass", ("ambient", "techno")), "mood": TaskSpec("multiclass", ("happy", "sad"))}
    torch.manual_seed(0)
    model = build_model("cnn", {t: len(s.labels) for t, s in tasks.items()})
    save_checkpoint(directory, model, CheckpointMeta("cnn", AudioConfig(), tasks, name="cnn"))
    return str(directory)


def tag_until_the_store_dies(dead_store, s3_endpoint, small_demo, tmp_path, output: str, written) -> str:
    """Run `jobs/tag.py` on a 64-track catalog whose manifest and audio are on the store that
    ``dead_store`` can stop; stop it as soon as ``written()`` lists a Parquet file of ``output``.

    Returns the job's log; asserts it failed naming the endpoint and the URI it could not reach.
    """
    import shutil

    import pandas as pd

    from mgc.io.manifest import write_manifest

    endpoint, bucket, stop = dead_store
    demo = copy_tree(small_demo.parent, tmp_path / "demo")
    tracks = pd.read_csv(demo / small_demo.name, dtype=str)[["track_id", "uri"]]  # uris relative: audio on S3
    copies = [tracks.assign(track_id=tracks.track_id + f"-{i}") for i in range(4)]
    write_manifest(pd.concat(copies, ignore_index=True), str(demo / "catalog.parquet"))
    s3fs.S3FileSystem(endpoint_url=endpoint).put(str(demo) + "/", f"{bucket}/cat/", recursive=True)
    checkpoint = make_checkpoint(tmp_path / "ckpt")
    log_path = tmp_path / "job.log"

    ray_tmp = Path("/tmp") / f"mgcs-{os.getpid()}"  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, **S3_ENV, **FAST_ENV, "AWS_ENDPOINT_URL": endpoint, "RAY_TMPDIR": str(ray_tmp),
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    job = subprocess.Popen(
        [sys.executable, "jobs/tag.py", "--manifest", f"s3://{bucket}/cat/catalog.parquet", "--checkpoint", checkpoint,
         "--output", output, "--rows-per-file", "2", "--decode-batch-size", "2", "--decode-concurrency", "1",
         "--concurrency", "1", "--batch-size", "16"],
        cwd=REPO, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None and not written():
            time.sleep(0.1)
        assert job.poll() is None, "the job ended before the store went down:\n" + log_path.read_text()[-4000:]
        stop()  # the endpoint goes away mid-run
        job.wait(timeout=240)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    log = log_path.read_text(errors="replace")
    assert job.returncode != 0, log[-4000:]
    assert "StorageError" in log and f"cannot reach storage endpoint {endpoint}" in log, log[-4000:]
    assert f"s3://{bucket}/" in log, log[-4000:]
    return log


def assert_whole_files_of_fine_tracks(tables: list) -> None:
    """Only complete Parquet files, and no row blaming a track for the store's outage."""
    assert tables, "the files written before the outage are gone"
    for table in tables:
        assert 1 <= table.num_rows <= 2
        assert table.column("error").null_count == table.num_rows, table.column("error").to_pylist()


@pytest.mark.slow
def test_tag_job_fails_cleanly_when_the_store_goes_down_mid_run(dead_store, s3_endpoint, small_demo, tmp_path):
    """`jobs/tag.py` reading audio from and writing predictions to S3; the endpoint dies after
    the first files land. The job exits non-zero naming the endpoint, and leaves only whole
    Parquet files of fine tracks: no half-written object, no `.tmp` object. The partition's
    lease cannot be released on a dead store; what is left of it must be a whole lease whose
    holder (this job, now gone) a rerun on this host recognises as abandoned."""
    _, bucket, _ = dead_store
    prefix = f"{bucket}/preds"
    tag_until_the_store_dies(dead_store, s3_endpoint, small_demo, tmp_path, f"s3://{prefix}",
                             lambda: any(k.endswith(".parquet") for k in live_keys(s3_endpoint, prefix)))
    keys = live_keys(s3_endpoint, prefix)
    leases = [key for key in keys if key.rsplit("/", 1)[1] == lease.LEASE_NAME]
    keys = [key for key in keys if key not in leases]
    assert keys and all(key.rsplit("/", 1)[1].startswith("part-") and key.endswith(".parquet")
                        for key in keys), keys
    live = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    for key in leases:
        info = lease.LeaseInfo.decode(live.cat_file(key))
        assert info.holder.gone(), info
    assert_whole_files_of_fine_tracks([pq.read_table(live.open(key, "rb")) for key in keys])


@pytest.mark.slow
def test_tag_job_with_local_output_blames_no_track_when_the_audio_store_goes_down(
        dead_store, s3_endpoint, small_demo, tmp_path):
    """Audio on S3, predictions local: when S3 dies mid-run the job must fail, not go on
    writing `fetch_failed` rows that a rerun would then skip as already tagged."""
    output = tmp_path / "preds"
    tag_until_the_store_dies(dead_store, s3_endpoint, small_demo, tmp_path, str(output),
                             lambda: any(output.rglob("part-*.parquet")))
    assert not list(output.rglob(".tmp-*"))
    assert_whole_files_of_fine_tracks([pq.read_table(path) for path in sorted(output.rglob("*.parquet"))])


def test_stale_temporaries_are_removed_and_fresh_ones_and_real_files_kept(tmp_path, s3_endpoint, s3_bucket):
    old, fresh, real = tmp_path / ".tmp-old", tmp_path / ".tmp-fresh", tmp_path / "part-1.parquet"
    for path in (old, fresh, real):
        path.write_bytes(b"x")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    os.utime(real, (hours_ago, hours_ago))
    assert storage.remove_stale_temporaries(str(tmp_path)) == 1
    assert not old.exists() and fresh.exists() and real.exists()
    assert storage.remove_stale_temporaries(str(tmp_path / "absent")) == 0
    assert storage.remove_stale_temporaries(f"s3://{s3_bucket}/preds") == 0
