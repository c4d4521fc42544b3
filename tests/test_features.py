"""The numpy and torch log-mel paths against librosa's per-window definition.

Tolerances (max absolute difference in dB over every mel bin and frame):

* TOL_DB = 1e-3 for numpy vs librosa. The numpy path runs its FFT in float32 while
  librosa's runs in float64; the worst difference over every window of the 100
  gtzan-mini clips was ~1.6e-4 dB (and ~1e-4 on the synthetic signal).
* TORCH_TOL_DB = 5e-3 for torch vs numpy. torch's float32 FFT is a little less exact:
  bins up to 80 dB below a window's peak carry relative rounding of ~1e-4 in
  magnitude, measured ~6e-4 dB worst on CPU; the margin covers other FFT backends
  (cuFFT on GPU).

Real mistakes are a thousand times larger: reflect instead of zero padding moves the
edge frames by ~6 dB, and a batch-global top_db floor moves quiet windows by tens of dB.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from mgc.config import AudioConfig
from mgc.audio.logmel import LogMel, log_mel, mel_filterbank

TOL_DB = 1e-3
TORCH_TOL_DB = 5e-3
GTZAN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gtzan-mini"
CFG = AudioConfig()
SMALL_CFG = AudioConfig(n_mels=64, fmin=30.0, fmax=8000.0, hop_length=256, n_fft=1024, top_db=60.0)


def reference(windows: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """librosa, one window at a time: the definition both paths must meet."""
    return np.stack(
        [
            librosa.power_to_db(
                librosa.feature.melspectrogram(
                    y=w, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                    n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, power=2.0,
                ),
                ref=1.0, amin=cfg.amin, top_db=cfg.top_db,
            )
            for w in windows
        ]
    )


def synthetic(n: int, sr: int) -> np.ndarray:
    """A chirp, a stretch of digital silence and quiet noise: edges, floors and dynamics."""
    t = np.arange(n) / sr
    chirp = 0.5 * np.sin(2 * np.pi * (50 + 2000 * t) * t)
    noise = 1e-4 * np.random.default_rng(0).standard_normal(n)
    y = np.where(t < 1.0, chirp, np.where(t < 2.0, 0.0, noise))
    return y.astype(np.float32)


def gtzan_windows(cfg: AudioConfig, per_clip: int = 2) -> np.ndarray:
    if not GTZAN.is_dir():
        pytest.skip(f"{GTZAN} not present")
    clips = ["blues/blues.00000.wav", "classical/classical.00003.wav", "metal/metal.00007.wav"]
    out = []
    for clip in clips:
        y, sr = sf.read(GTZAN / clip, dtype="float32")
        assert sr == cfg.sample_rate
        n = len(y) // cfg.window_samples
        out.append(y[: n * cfg.window_samples].reshape(n, -1)[:per_clip])
    return np.concatenate(out)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def test_filterbank_is_librosas_float32_and_read_only():
    fb = mel_filterbank(CFG)
    assert fb.shape == (CFG.n_mels, 1 + CFG.n_fft // 2) and fb.dtype == np.float32
    expected = librosa.filters.mel(sr=CFG.sample_rate, n_fft=CFG.n_fft, n_mels=CFG.n_mels)
    np.testing.assert_allclose(fb, expected, rtol=1e-6)
    assert mel_filterbank(AudioConfig()) is fb  # cached per config value
    with pytest.raises(ValueError):
        fb[0, 0] = 1.0


def test_numpy_matches_librosa_on_real_audio():
    windows = gtzan_windows(CFG)
    assert max_diff(log_mel(windows, CFG), reference(windows, CFG)) <= TOL_DB


@pytest.mark.parametrize("cfg", [CFG, SMALL_CFG], ids=["default", "small"])
def test_numpy_matches_librosa_on_synthetic_signal(cfg):
    windows = synthetic(cfg.window_samples, cfg.sample_rate)[None]
    assert max_diff(log_mel(windows, cfg), reference(windows, cfg)) <= TOL_DB


def test_numpy_matches_librosa_for_any_length():
    y = synthetic(10_001, CFG.sample_rate)[None]
    assert max_diff(log_mel(y, CFG), reference(y, CFG)) <= TOL_DB


def test_output_shape_and_dtype():
    windows = np.zeros((3, CFG.window_samples), dtype=np.float32)
    out = log_mel(windows, CFG)
    assert out.shape == (3, CFG.n_mels, CFG.frames_per_window)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    nested = log_mel(np.zeros((2, 3, CFG.window_samples), dtype=np.float32), CFG)
    assert nested.shape == (2, 3, CFG.n_mels, CFG.frames_per_window)
    assert log_mel(windows[0], CFG).shape == (CFG.n_mels, CFG.frames_per_window)


def test_top_db_floor_is_per_window():
    loud = synthetic(CFG.window_samples, CFG.sample_rate) * 2.0
    quiet = loud * 1e-2  # 40 dB down: a batch-global floor would sit 40 dB too high
    out = log_mel(np.stack([loud, quiet]), CFG)
    for i, single in enumerate((loud, quiet)):
        plane = out[i]
        assert plane.min() == pytest.approx(plane.max() - CFG.top_db, abs=1e-3)
        assert max_diff(plane, log_mel(single[None], CFG)[0]) <= TOL_DB
    assert out[1].max() == pytest.approx(out[0].max() - 40.0, abs=0.01)
    assert out[1].min() < out[0].max() - CFG.top_db - 30.0  # not the batch's floor


@pytest.mark.parametrize("cfg", [CFG, SMALL_CFG], ids=["default", "small"])
def test_torch_matches_numpy(cfg):
    windows = np.concatenate(
        [gtzan_windows(cfg, per_clip=1), synthetic(cfg.window_samples, cfg.sample_rate)[None]]
    )
    expected = log_mel(windows, cfg)
    got = LogMel(cfg)(torch.from_numpy(windows)).numpy()
    assert got.dtype == np.float32
    assert max_diff(got, expected) <= TORCH_TOL_DB
    # Leading dims are kept and top_db stays per window when windows are nested.
    nested = LogMel(cfg)(torch.from_numpy(windows[:4].reshape(2, 2, -1)))
    assert nested.shape == (2, 2, cfg.n_mels, cfg.frames_per_window)
    assert max_diff(nested.numpy().reshape(expected[:4].shape), expected[:4]) <= TORCH_TOL_DB


def test_torch_module_buffers_follow_device_but_not_state_dict():
    module = LogMel(CFG)
    assert {name for name, _ in module.named_buffers()} == {"window", "mel_fb"}
    assert module.state_dict() == {}
    module = module.to(torch.float32)
    assert module.mel_fb.shape == (CFG.n_mels, 1 + CFG.n_fft // 2)
    empty = module(torch.zeros(0, CFG.window_samples))
    assert empty.shape == (0, CFG.n_mels, CFG.frames_per_window)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_on_gpu_matches_numpy():
    windows = synthetic(CFG.window_samples, CFG.sample_rate)[None].repeat(2, axis=0)
    windows[1] *= 1e-3
    got = LogMel(CFG).cuda()(torch.from_numpy(windows).cuda()).cpu().numpy()
    assert max_diff(got, log_mel(windows, CFG)) <= TORCH_TOL_DB
