"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1) and a real local Ray.

Why session-scoped: starting Ray costs seconds on a 2-core machine, so the suite shares
one local Ray; it starts after the S3 server so that its workers inherit the endpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GTZAN_MINI = SHARED / "data" / "gtzan-mini"

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_dashboard(url: str, head: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until a `ray start --head` process's dashboard answers (or the process dies)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            urllib.request.urlopen(url + "/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (token authentication refuses an anonymous request)
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"dashboard at {url} did not come up in {timeout} s")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1, with the AWS environment pointing at it for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
            patch.setenv(key, value)
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            patch.delenv(key, raising=False)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, uniquely named bucket on the moto server; returns its name."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    name = f"mgc-test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).mkdir(name)
    yield name
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """A real local Ray with 2 CPUs (the CI machine's size), shared by the session."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def gtzan_mini() -> Path:
    if not GTZAN_MINI.is_dir():
        pytest.skip(f"{GTZAN_MINI} is not present")
    return GTZAN_MINI


@pytest.fixture(scope="session")
def gtzan_mini_manifest(gtzan_mini, tmp_path_factory) -> str:
    """gtzan-mini as a manifest: 6 train / 2 validation / 2 test clips per genre (by file name)."""
    import pandas as pd

    rows = []
    for genre_dir in sorted(p for p in gtzan_mini.iterdir() if p.is_dir()):
        for i, clip in enumerate(sorted(genre_dir.glob("*.wav"))):
            split = "train" if i < 6 else "validation" if i < 8 else "test"
            rows.append({"track_id": clip.stem, "uri": str(clip), "split": split, "genres": genre_dir.name})
    path = tmp_path_factory.mktemp("gtzan") / "gtzan.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


SMALL_DEMO = dict(genres=("ambient", "techno"), moods=("happy", "sad"), tracks_per_pair=4, duration_s=4.0)

# Bad inputs every pipeline must survive, with the reason each must be recorded under.
BAD_TRACK_REASONS = {
    "bad-empty": "empty",
    "bad-text": "not_audio",
    "bad-short": "too_short",
    "bad-silent": "silent",
    "bad-missing": "missing",
}


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """A 16-track demo set (2 genres x 2 moods, 4 s clips); returns its manifest path."""
    from mgc.datasets.demo import DemoConfig, make_demo_set

    return make_demo_set(tmp_path_factory.mktemp("demo"), DemoConfig(**SMALL_DEMO))


def add_bad_tracks(manifest: Path) -> Path:
    """Write the bad files of BAD_TRACK_REASONS beside ``manifest`` and list them in it (split train)."""
    import numpy as np
    import pandas as pd
    import soundfile as sf

    root = manifest.parent
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "empty.wav").write_bytes(b"")
    (bad / "text.mp3").write_text("this is a text file, not an mp3\n" * 20)
    sf.write(bad / "short.wav", 0.3 * np.sin(np.linspace(0, 440 * 2 * np.pi * 0.5, 11025)), 22050)
    sf.write(bad / "silent.flac", np.zeros(22050 * 5), 22050)
    uris = {"bad-empty": "bad/empty.wav", "bad-text": "bad/text.mp3", "bad-short": "bad/short.wav",
            "bad-silent": "bad/silent.flac", "bad-missing": "bad/missing.wav"}
    df = pd.read_csv(manifest, dtype=str)
    first = df.iloc[0]
    rows = [{**first.to_dict(), "track_id": tid, "uri": uri, "split": "train", "artist_id": tid}
            for tid, uri in uris.items()]
    pd.concat([df, pd.DataFrame(rows)], ignore_index=True).to_csv(manifest, index=False)
    return manifest


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst
