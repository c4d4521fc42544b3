"""The benchmark runs (``--quick``, as CI does) and writes valid JSON with its ratios;
and the speed-ups it measures keep the numbers they speed up.

Only that it runs: the figures of a quick run on a shared CI machine are not claims (the
full run's table in README is), so nothing here asserts a speedup.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import GTZAN_MINI, REPO
from benchmarks.benchmark import _steady_rate
from mgc.config import AudioConfig, TagConfig
from mgc.audio.logmel import LogMel, log_mel
from mgc.models.zoo import build_model
from mgc.models.inference import predict_tracks
from mgc.tagging.actors import CPU_MAX_BATCH, _Float32, optimized_for_cpu
from mgc.tagging.job import _rows_per_call

RATIOS = ("decode_mel_speedup_vs_librosa", "ray_decode_scaling_efficiency", "tagging_speedup_vs_loop")


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_benchmark_writes_ratios_and_raw_figures(tmp_path):
    if not GTZAN_MINI.is_dir():
        pytest.skip(f"{GTZAN_MINI} is not present")
    output = tmp_path / "bench.json"
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    run = subprocess.run([sys.executable, "jobs/benchmark.py", "--quick", "--output", str(output)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=580)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| Measure | Baseline | mgc | Ratio |" in run.stdout

    result = json.loads(output.read_text())
    for key in RATIOS:
        assert positive(result[key]), (key, result[key])
    assert result["quick"] is True
    decode = result["decode"]
    assert positive(decode["librosa_tracks_per_s"]) and positive(decode["mgc_tracks_per_s"])
    assert decode["max_abs_db_diff"] < 1e-2, "mgc's log-mels match librosa's"
    scaling = result["scaling"]
    assert positive(scaling["tracks_per_s_1"]) and scaling["errors"] == 0
    tagging = result["tagging"]["cnn"]
    assert tagging["failed"] == {} and tagging["tracks"] == result["files"]["total"] * 2
    for key in ("mgc_tracks_per_s", "loop_tracks_per_s", "mgc_peak_tree_rss_mb", "loop_peak_rss_mb"):
        assert positive(tagging[key]), (key, tagging[key])
    assert tagging["max_abs_prob_diff_vs_loop"] < 1e-3, "same model, same features, same probabilities"
    assert positive(result["training"]["runs"]["cnn_cpu"]["samples_per_s"])
    assert result["table_markdown"].startswith("| Measure |")


def random_mels(n: int, cfg: AudioConfig = AudioConfig()) -> np.ndarray:
    noise = np.random.default_rng(0).standard_normal((n, cfg.window_samples)).astype(np.float32)
    return log_mel(0.1 * noise, cfg)


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_cpu_optimised_model_scores_like_the_eager_model(arch):
    torch.manual_seed(0)
    model = build_model(arch, {"genre": 4, "mood": 3}).eval()
    fast = optimized_for_cpu(model, torch.from_numpy(random_mels(2)))
    assert fast is not model, "the default architectures are optimised"
    tracks = [random_mels(5), random_mels(3)]
    types = {"genre": "multiclass", "mood": "multilabel"}
    expected = predict_tracks(model, tracks, types, batch_size=64)
    got = predict_tracks(fast, tracks, types, batch_size=CPU_MAX_BATCH)
    for task in types:
        np.testing.assert_allclose(got[task], expected[task], atol=1e-5)


class DataDependent(torch.nn.Module):
    """A backbone torch.fx cannot trace (control flow on values)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) if x.sum() > 0 else self.inner(-x)


def test_a_backbone_that_cannot_be_optimised_is_used_as_is():
    model = build_model("cnn", {"genre": 2}).eval()
    model.backbone = DataDependent(model.backbone)
    assert optimized_for_cpu(model, torch.from_numpy(random_mels(2))) is model


def test_mel_front_end_stays_float32_under_bf16_autocast():
    cfg = AudioConfig()
    windows = torch.from_numpy(np.random.default_rng(1).standard_normal((2, cfg.window_samples)).astype(np.float32))
    expected = LogMel(cfg)(windows)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = _Float32(LogMel(cfg))(windows)
    assert got.dtype == torch.float32
    assert float((got - expected).abs().max()) < 1e-4


def test_rows_per_call_keep_every_actor_busy_on_small_catalogs():
    cfg = TagConfig(rows_per_file=256)
    assert _rows_per_call(cfg, 40, 2) == 5  # 8 calls for 2 actors
    assert _rows_per_call(cfg, 1, 2) == 1
    assert _rows_per_call(cfg, 1_000_000, 2) == 256  # a catalog: rows_per_file per file


def test_steady_rate_starts_once_every_actor_wrote_a_file():
    files = [(10.0, 4), (11.0, 4), (12.0, 4), (13.0, 4), (15.0, 4)]  # (tagged_at, rows)
    assert _steady_rate(files, actors=2) == pytest.approx(12 / 4.0)  # files 3-5, from t=11 to t=15
    assert np.isnan(_steady_rate(files[:2], actors=2))
