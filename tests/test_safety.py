"""Safe inputs and secrets.

- Manifest uris are limited to the allowed schemes (file, s3, gs; http(s) only when
  enabled) and may not carry passwords; refused rows are reported with row numbers.
- Secrets in the environment never reach logs, metrics, checkpoints or Parquet: the real
  jobs run with distinctive fake AWS secrets set (against the S3 test server, so the
  secrets are really used to sign requests) and every byte they leave behind is searched.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import s3fs

from conftest import REPO, S3_ENV
from mgc.io.manifest import read_manifest, write_manifest
from mgc.io.uris import ALLOW_HTTP_ENV, uri_schemes
from mgc.io.validate import ManifestError, validate_manifest

# ------------------------------------------------------------------ uri scheme allowlist


def frame(uris: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"track_id": [f"t{i}" for i in range(len(uris))], "uri": uris})


def test_allowed_schemes_pass_unchanged(monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_HTTP_ENV, raising=False)
    uris = ["a/b.wav", "/abs/c.flac", "file:///d.mp3", "local:///e.wav", "s3://bkt/f.wav", "s3a://bkt/g.wav",
            "gs://bkt/h.ogg", "gcs://bkt/i.wav", "S3://bkt/upper.wav"]
    assert list(validate_manifest(frame(uris))["uri"]) == uris


@pytest.mark.parametrize("uri, scheme", [
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http"),
    ("https://cdn.example.com/a.mp3", "https"),
    ("ssh://host/etc/passwd", "ssh"),
    ("ftp://host/a.wav", "ftp"),
    ("memory://a.wav", "memory"),
    ("github://org:repo@main/a.wav", "github"),
    ("simplecache::s3://bkt/a.wav", "simplecache"),
    ("data:audio/wav;base64,UklGRg==", "data"),
])
def test_other_schemes_refused_with_row_numbers(monkeypatch, uri: str, scheme: str) -> None:
    monkeypatch.delenv(ALLOW_HTTP_ENV, raising=False)
    with pytest.raises(ManifestError) as caught:
        validate_manifest(frame(["s3://bkt/ok.wav", uri, "ok.wav", uri]), source="m.csv")
    problem = "\n".join(caught.value.problems)
    assert f"uri scheme not allowed: {scheme!r} at rows 2, 4" in problem, problem
    if scheme in ("http", "https"):
        assert ALLOW_HTTP_ENV in problem  # says how to enable it


def test_http_only_when_enabled(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ALLOW_HTTP_ENV, raising=False)
    df = frame(["https://cdn.example.com/a.mp3", "http://cdn.example.com/b.mp3"])
    assert list(validate_manifest(df, allow_http=True)["uri"]) == list(df.uri)
    manifest = tmp_path / "m.csv"
    df.to_csv(manifest, index=False)
    with pytest.raises(ManifestError, match="rows 1, 2"):
        read_manifest(str(manifest))
    assert list(read_manifest(str(manifest), allow_http=True)["uri"]) == list(df.uri)
    monkeypatch.setenv(ALLOW_HTTP_ENV, "1")  # how jobs enable it
    assert list(read_manifest(str(manifest))["uri"]) == list(df.uri)
    with pytest.raises(ManifestError):  # an explicit False wins over the environment
        read_manifest(str(manifest), allow_http=False)
    with pytest.raises(ManifestError):  # enabling http enables nothing else
        validate_manifest(frame(["ftp://h/a.wav"]))


def test_manifest_location_is_checked_too(monkeypatch) -> None:
    monkeypatch.delenv(ALLOW_HTTP_ENV, raising=False)
    with pytest.raises(ManifestError, match="uri scheme not allowed: 'https'"):
        read_manifest("https://example.com/catalog.parquet")
    with pytest.raises(ManifestError, match="uri scheme not allowed: 'memory'"):
        read_manifest("memory://catalog.csv")


def test_credentials_in_uris_refused_and_never_echoed(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ALLOW_HTTP_ENV, raising=False)
    secret = "hunter2-do-not-print"
    df = frame(["s3://bkt/ok.wav", f"https://user:{secret}@cdn.example.com/a.mp3", f"s3://AKIA:{secret}@bkt/b.wav"])
    with pytest.raises(ManifestError) as caught:
        validate_manifest(df, source="m.csv", allow_http=True)
    assert "uri carries a password" in str(caught.value) and "rows 2, 3" in str(caught.value)
    assert secret not in str(caught.value)
    with pytest.raises(ManifestError) as caught:
        read_manifest(f"https://user:{secret}@example.com/m.csv", allow_http=True)
    assert secret not in str(caught.value) and "***@example.com" in str(caught.value)
    with pytest.raises(ManifestError):  # nor can such a manifest be written
        write_manifest(df, str(tmp_path / "m.parquet"), allow_http=True)


def test_uri_schemes() -> None:
    assert uri_schemes("audio/a.wav") == ["file"]
    assert uri_schemes("S3://b/k") == ["s3"]
    assert uri_schemes("filecache::https://h/x") == ["filecache", "https"]


# ----------------------------------------------------------------- secrets never leak

FAKE_SECRET = "mgcFAKEsecretKEY9Zq7Xw2Vt5Rs8Pn4Lm6Kj3Hg1Fd0"
FAKE_TOKEN = "mgcFAKEsessionTOKENb8Wc6Xd4Ye2Zf0Ag9Bh7Ci5Dj3Ek1"
SECRETS = (FAKE_SECRET, FAKE_TOKEN)


RUN_JOBS = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise
"""


def find_secrets(data: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode() in data]


def parquet_text(data: bytes) -> bytes:
    """Everything a Parquet file says, decoded (its pages may be compressed)."""
    table = pq.read_table(io.BytesIO(data))
    text = table.to_pandas().to_string() + repr(table.schema.metadata)
    return text.encode()


def scan_tree(root: Path, leaks: list[str]) -> int:
    files = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        found = set(find_secrets(data) + (find_secrets(parquet_text(data)) if path.suffix == ".parquet" else []))
        leaks += [f"{path}: {s[:12]}..." for s in sorted(found)]
        files += 1
    return files


def test_leak_scanner_sees_through_compressed_parquet_and_trees(tmp_path: Path) -> None:
    import pyarrow as pa

    sink = io.BytesIO()
    pq.write_table(pa.table({"uri": [f"s3://b/{FAKE_TOKEN}" for _ in range(50)]}), sink, compression="zstd")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "p.parquet").write_bytes(sink.getvalue())
    (tmp_path / "log.txt").write_text(f"key={FAKE_SECRET}\n")
    (tmp_path / "clean.txt").write_text("nothing here\n")
    leaks: list[str] = []
    assert scan_tree(tmp_path, leaks) == 3
    assert len(leaks) == 2 and any("p.parquet" in leak for leak in leaks), leaks


@pytest.mark.slow
def test_secrets_never_reach_logs_metrics_checkpoints_or_parquet(s3_endpoint, s3_bucket, small_demo):
    ray_tmp = Path("/tmp") / f"mgcsafe-{os.getpid()}"  # Ray's socket paths must fit 107 bytes
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
           "AWS_SESSION_TOKEN": FAKE_TOKEN, "RAY_TMPDIR": str(ray_tmp), "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    run = f"s3://{s3_bucket}/runs/safe"
    tags = f"s3://{s3_bucket}/tags"
    jobs = [
        ["jobs/train.py", "--manifest", str(small_demo), "--output", run, "--arch", "cnn", "--epochs", "1",
         "--batch-size", "8", "--decode-concurrency", "1"],
        ["jobs/tag.py", "--manifest", str(small_demo), "--checkpoint", f"{run}/checkpoint", "--output", tags,
         "--rows-per-file", "8", "--embeddings"],
    ]
    leaks: list[str] = []
    try:
        # Both jobs run exactly as `python jobs/X.py ...` would (runpy, __main__), one after
        # the other in one interpreter: a second interpreter and local Ray would add ~40 s
        # on the 2-core CI machine and change nothing about where secrets could go.
        done = subprocess.run([sys.executable, "-c", RUN_JOBS, json.dumps(jobs)], cwd=REPO, env=env,
                              capture_output=True, timeout=300)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log.decode(errors="replace")[-4000:]
        assert b'"tagged": 16' in log, log.decode(errors="replace")[-4000:]
        leaks += [f"job output: {s[:12]}..." for s in find_secrets(log)]
        scanned = scan_tree(ray_tmp, leaks)
        assert scanned > 20, f"expected Ray's session logs under {ray_tmp}, found {scanned} files"
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    objects = sorted(fs.find(f"{s3_bucket}/runs/safe") + fs.find(f"{s3_bucket}/tags"))
    names = {key.rsplit("/", 1)[1] for key in objects}
    assert {"model.pt", "mgc.json", "metrics.json", "history.json"} <= names, names
    assert any(name.endswith(".parquet") for name in names), names
    for key in objects:
        data = fs.cat_file(key)
        found = set(find_secrets(data) + (find_secrets(parquet_text(data)) if key.endswith(".parquet") else []))
        leaks += [f"s3://{key}: {s[:12]}..." for s in sorted(found)]
    assert not leaks, "secrets leaked into:\n" + "\n".join(leaks)
