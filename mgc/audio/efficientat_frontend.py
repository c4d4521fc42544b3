"""EfficientAT's audio front end, in numpy (CPU decode actors) and torch (GPU taggers).

Why mgc computes it itself: EfficientAT's AudioSet models only give AudioSet-quality
embeddings when they see exactly the input they were trained on, and their reference
implementation (``models/preprocess.py``, ``AugmentMelSTFT`` in evaluation mode) needs
torchaudio, which has no build for this project's torch. The definition, per window ``x``
of 32 kHz mono samples (:data:`mgc.config.EFFICIENTAT_AUDIO`):

1. pre-emphasis as a 'valid' convolution: ``y[n] = x[n + 1] - 0.97 x[n]`` (one sample
   shorter than ``x``);
2. a centred STFT of ``y``: reflect padding of ``n_fft // 2``, a symmetric Hann window of
   ``win_length`` samples centred in ``n_fft``, power ``|X|^2``;
3. a Kaldi mel bank (:func:`kaldi_mel_banks`: triangles equally spaced on the mel scale
   ``1127 ln(1 + f / 700)`` from ``fmin`` to ``fmax``, the Nyquist bin weighted 0);
4. ``(ln(mel + 1e-5) + 4.5) / 5``.

``tests/test_efficientat.py`` holds this against outputs of EfficientAT's own code.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft
import torch
from numpy.lib.stride_tricks import sliding_window_view

from mgc.config import AudioConfig

__all__ = ["PREEMPHASIS", "LOG_OFFSET", "kaldi_mel_banks", "efficientat_block", "EfficientATLogMel"]

PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
# (ln(mel + LOG_OFFSET) + SHIFT) / SCALE: EfficientAT's "fast normalization".
SHIFT = 4.5
SCALE = 5.0


def _kaldi_mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(freq, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float | None) -> np.ndarray:
    """Kaldi's triangular mel filters ``[n_mels, n_fft // 2 + 1]`` float32 (read-only).

    As Kaldi (and torchaudio's ``compliance.kaldi.get_mel_banks`` with no VTLN warp)
    defines them: ``n_mels + 2`` edges equally spaced in Kaldi mel between ``fmin`` and
    ``fmax`` (``fmax <= 0`` counts down from Nyquist; None is Nyquist), each filter the
    minimum of its rising and falling slope, clipped at 0, evaluated at the FFT bins
    below Nyquist; the Nyquist bin gets weight 0 (EfficientAT pads it so).
    """
    nyquist = 0.5 * sample_rate
    high = nyquist if fmax is None else (fmax + nyquist if fmax <= 0 else fmax)
    if not (0.0 <= fmin < nyquist and 0.0 < high <= nyquist and fmin < high):
        raise ValueError(f"Kaldi mel bank needs 0 <= fmin < fmax <= {nyquist}, got {fmin}, {high}")
    low_mel, high_mel = _kaldi_mel(fmin), _kaldi_mel(high)
    delta = (high_mel - low_mel) / (n_mels + 1)
    left = low_mel + delta * np.arange(n_mels, dtype=np.float64)[:, None]
    center, right = left + delta, left + 2.0 * delta
    bins = _kaldi_mel(sample_rate / n_fft * np.arange(n_fft // 2, dtype=np.float64))[None, :]
    rising = (bins - left) / (center - left)
    falling = (right - bins) / (right - center)
    banks = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float32)
    banks[:, :-1] = np.maximum(0.0, np.minimum(rising, falling))
    banks.setflags(write=False)
    return banks


def _banks(cfg: AudioConfig) -> np.ndarray:
    return kaldi_mel_banks(cfg.n_mels, cfg.n_fft, cfg.sample_rate, float(cfg.fmin), cfg.fmax)


@functools.lru_cache(maxsize=16)
def _padded_window(n_fft: int, win_length: int) -> np.ndarray:
    """Symmetric Hann of ``win_length`` centred in ``n_fft`` zeros (torch.stft's placement)."""
    window = np.zeros(n_fft, dtype=np.float32)
    left = (n_fft - win_length) // 2
    window[left : left + win_length] = np.hanning(win_length).astype(np.float32)
    window.setflags(write=False)
    return window


@functools.lru_cache(maxsize=16)
def _banks_t(cfg: AudioConfig) -> np.ndarray:
    banks_t = np.ascontiguousarray(_banks(cfg).T)
    banks_t.setflags(write=False)
    return banks_t


def efficientat_block(x: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """The front end of ``[windows, samples]`` float32 -> ``[windows, n_mels, frames]``.

    Vectorised like :func:`mgc.audio.logmel.log_mel`'s librosa path: one strided framing view,
    one float32 rFFT, one matmul with the mel bank.
    """
    y = x[:, 1:] - np.float32(PREEMPHASIS) * x[:, :-1]
    pad = cfg.n_fft // 2
    if y.shape[-1] <= pad:
        raise ValueError(f"a window of {x.shape[-1]} samples is too short for n_fft {cfg.n_fft} (reflect padding)")
    padded = np.pad(y, ((0, 0), (pad, pad)), mode="reflect")
    frames = sliding_window_view(padded, cfg.n_fft, axis=-1)[:, :: cfg.hop_length, :]
    framed = frames * _padded_window(cfg.n_fft, cfg.win_length or cfg.n_fft)
    spectrum = scipy.fft.rfft(framed, axis=-1, overwrite_x=True, workers=1)
    del framed
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    del spectrum
    n_windows, n_frames, n_freq = power.shape
    mel = power.reshape(-1, n_freq) @ _banks_t(cfg)
    mel += np.float32(LOG_OFFSET)
    np.log(mel, out=mel)
    mel += np.float32(SHIFT)
    mel /= np.float32(SCALE)
    return mel.reshape(n_windows, n_frames, cfg.n_mels).swapaxes(-1, -2)


class EfficientATLogMel(torch.nn.Module):
    """Torch twin of :func:`efficientat_block`: ``[..., samples]`` -> ``[..., n_mels, frames]``.

    Constants are non-persistent buffers: they follow ``.to(device)`` and are rebuilt from
    the checkpoint's audio config, never read from a state dict.
    """

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        self.n_fft = cfg.n_fft
        self.hop_length = cfg.hop_length
        self.win_length = cfg.win_length or cfg.n_fft
        self.n_mels = cfg.n_mels
        self.register_buffer("kernel", torch.tensor([[[-PREEMPHASIS, 1.0]]], dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=False, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("banks", torch.from_numpy(_banks(cfg).copy()), persistent=False)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        lead, n_samples = windows.shape[:-1], windows.shape[-1]
        n_frames = 1 + (n_samples - 1) // self.hop_length
        flat = windows.reshape(-1, n_samples).to(self.window.dtype)
        if flat.shape[0] == 0:
            return flat.new_zeros((*lead, self.n_mels, n_frames))
        emphasised = torch.nn.functional.conv1d(flat.unsqueeze(1), self.kernel).squeeze(1)
        spectrum = torch.stft(emphasised, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                              window=self.window, center=True, pad_mode="reflect", return_complex=True)
        power = torch.view_as_real(spectrum).square().sum(dim=-1)
        mel = torch.matmul(self.banks, power)
        out = (torch.log(mel + LOG_OFFSET) + SHIFT) / SCALE
        return out.reshape(*lead, self.n_mels, n_frames)

    def extra_repr(self) -> str:
        return f"n_fft={self.n_fft}, win_length={self.win_length}, hop_length={self.hop_length}, n_mels={self.n_mels}"
