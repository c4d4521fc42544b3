"""Training survives a killed worker (Ray Train restarts it) and `--resume` continues a dead run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mgc.config import DataConfig, TrainConfig
from mgc.training.driver import resume_training, run_training

pytestmark = pytest.mark.slow

EPOCHS = 5


def config(manifest: Path, output: Path, max_failures: int) -> TrainConfig:
    return TrainConfig(manifest=str(manifest), output=str(output), arch="cnn", epochs=EPOCHS, batch_size=4,
                       max_failures=max_failures, data=DataConfig(decode_concurrency=2))


def history(output: Path) -> list[dict]:
    path = output / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def checkpoint_registered(output: Path) -> bool:
    """Ray Train's controller has recorded at least one reported checkpoint of the run."""
    for snapshot in output.glob("ray_results/*/checkpoint_manager_snapshot.json"):
        try:
            return bool(json.loads(snapshot.read_text())["latest_checkpoint_result"])
        except (ValueError, KeyError):
            return False
    return False


def kill_train_worker_mid_run(output: Path, done: threading.Event) -> int:
    """SIGKILL the Ray Train worker once a checkpoint is registered; return the epochs seen then.

    Reports reach Ray Train's controller asynchronously: a worker killed right after its
    first report can take that report with it, and then there is nothing to resume from.
    """
    deadline = time.time() + 240
    while not (history(output) and checkpoint_registered(output)):
        assert time.time() < deadline and not done.is_set(), "training never reported an epoch"
        time.sleep(0.05)
    workers = processes_named("RayTrainWorker")
    assert workers, "no Ray Train worker process found"
    seen = len(history(output))
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    return seen


def processes_named(fragment: str) -> list[int]:
    """Pids whose command line (Ray sets it to ray::<Actor>...) contains ``fragment``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and fragment in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def run_in_thread(target):
    outcome: dict = {}
    done = threading.Event()

    def body():
        try:
            outcome["result"] = target()
        except BaseException as err:  # noqa: BLE001 - reported to the test below
            outcome["error"] = err
        finally:
            done.set()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, done, outcome


def test_killed_worker_is_restarted_and_training_completes_the_planned_epochs(ray_local, small_demo, tmp_path):
    output = tmp_path / "run"
    thread, done, outcome = run_in_thread(lambda: run_training(config(small_demo, output, max_failures=2)))
    seen = kill_train_worker_mid_run(output, done)
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert seen < EPOCHS, "the kill must land mid-run"
    assert [h["epoch"] for h in outcome["result"].metrics["history"]] == list(range(1, EPOCHS + 1))
    assert (output / "checkpoint" / "model.pt").exists()


def test_resume_continues_a_run_that_died_from_its_latest_checkpoint(ray_local, small_demo, tmp_path):
    output = tmp_path / "run"
    thread, done, outcome = run_in_thread(lambda: run_training(config(small_demo, output, max_failures=0)))
    seen = kill_train_worker_mid_run(output, done)
    thread.join(timeout=600)
    assert "error" in outcome, "with max_failures=0 the run must fail"
    before = history(output)
    assert seen <= len(before) < EPOCHS

    result = resume_training(str(output))

    epochs = [h["epoch"] for h in result.metrics["history"]]
    assert epochs == list(range(1, EPOCHS + 1))
    assert result.metrics["history"][0] == before[0], "epochs before the latest checkpoint are kept, not retrained"
    assert (output / "metrics.json").exists()
