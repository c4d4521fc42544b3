"""The way users run mgc: `ray start --head`, then `ray job submit -- python jobs/train.py`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, free_port, wait_for_dashboard

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent




@pytest.fixture
def ray_head(tmp_path):
    """A separate Ray cluster started like a user would, torn down with its `--block` process."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    dashboard = free_port()
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
         "--port", str(free_port()), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         # Every agent port free too: the session's own local Ray may hold the defaults.
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
         "--ray-client-server-port", str(free_port()),
         "--temp-dir", "/tmp/ray-mgc-job-test", "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_dashboard(url, head)
        yield url, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # a graceful drain takes ~30 s; the cluster holds nothing worth draining
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def test_ray_job_submit_trains_and_writes_checkpoint(ray_head, small_demo, tmp_path):
    url, env = ray_head
    output = tmp_path / "run"
    job_id = f"mgc-test-{os.getpid()}"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--submission-id", job_id,
         "--working-dir", ".", "--",
         "python", "jobs/train.py", "--manifest", str(small_demo), "--output", str(output),
         "--arch", "cnn", "--epochs", "1", "--batch-size", "8", "--decode-concurrency", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", "--address", url, job_id],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert f"Job '{job_id}' succeeded" in status.stdout, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert (output / "checkpoint" / "model.pt").exists()
    assert (output / "checkpoint" / "mgc.json").exists()
    assert (output / "metrics.json").exists()
