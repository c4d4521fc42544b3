"""Log-mel spectrogram: one definition, a numpy path and a torch path that agree.

Why two paths: CPU decode actors compute features in numpy next to the decoder, while a
GPU tagger can take raw windows and compute the same features on the accelerator. Both
must produce what the model was trained on, so both are pinned to one reference:

    librosa.power_to_db(
        librosa.feature.melspectrogram(y=w, sr, n_fft, hop_length, n_mels, fmin, fmax,
                                       power=2.0),
        ref=1.0, amin=cfg.amin, top_db=cfg.top_db)

computed independently for every window ``w``. That means a centered STFT with
librosa's default zero ("constant") padding of ``n_fft // 2`` on both sides, a periodic
Hann window, Slaney-normalised mel filters, and a ``top_db`` floor taken from each
window's own maximum (a loud window must not push a quiet one to the floor).

Neither path calls librosa per window: that is the hot path of a throughput product, so
both frame all windows at once, stay in float32 and apply the filterbank as one matmul.
The numpy path uses scipy's float32 rFFT (numpy's is several times slower in float32).

That is the ``librosa_db`` front end, mgc's default. A pretrained backbone brings its own
(``AudioConfig.frontend``, e.g. EfficientAT's in :mod:`mgc.audio.efficientat_frontend`):
:func:`log_mel` and :func:`torch_frontend` are the one entry point every consumer uses,
and they compute whatever front end the config names.
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
import scipy.fft
import torch
from numpy.lib.stride_tricks import sliding_window_view

from mgc.config import EFFICIENTAT, LIBROSA_DB, AudioConfig, FrontendError
from mgc.audio.efficientat_frontend import EfficientATLogMel, efficientat_block

__all__ = ["mel_filterbank", "log_mel", "LogMel", "torch_frontend", "frames_for"]


@functools.lru_cache(maxsize=16)
def mel_filterbank(cfg: AudioConfig) -> np.ndarray:
    """Mel filterbank ``[n_mels, 1 + n_fft // 2]`` float32, exactly librosa's.

    Cached per (frozen, hashable) config because building it costs more than a window's
    STFT; the array is read-only so that no caller can corrupt the shared copy.
    """
    fb = librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        dtype=np.float32,
    )
    fb = np.ascontiguousarray(fb, dtype=np.float32)
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=16)
def _hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window, the one librosa's ``window="hann"`` gives (read-only)."""
    window = librosa.filters.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    window.setflags(write=False)
    return window


def _floor_per_window(db: np.ndarray | torch.Tensor, top_db: float | None):
    """Clamp each ``[n_mels, frames]`` plane at its own maximum minus ``top_db``.

    Works for numpy arrays and torch tensors alike so the rule is written once.
    """
    if top_db is None:
        return db
    if isinstance(db, torch.Tensor):
        peak = db.amax(dim=(-2, -1), keepdim=True)
        return torch.maximum(db, peak - top_db)
    peak = db.max(axis=(-2, -1), keepdims=True, initial=-np.inf)
    return np.maximum(db, peak - np.float32(top_db))


# STFT frames handled per block in :func:`log_mel`: bounds its temporaries (framed audio,
# spectrum, power: ~8-16 MiB each with the defaults) however long the input, and keeps
# them small enough to stay in cache-friendly sizes.
_BLOCK_FRAMES = 2048


def frames_for(n_samples: int, cfg: AudioConfig) -> int:
    """STFT frames of a window of ``n_samples`` under ``cfg``'s front end."""
    return 1 + (n_samples - (1 if cfg.frontend == EFFICIENTAT else 0)) // cfg.hop_length


def log_mel(windows: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """The model input of ``cfg``'s front end, ``[..., samples]`` -> ``[..., n_mels, frames]`` float32.

    For ``librosa_db``: log-mel power in dB, equal per window to librosa's ``power_to_db(melspectrogram(...))`` (see module
    docstring) while framing whole blocks of windows in one strided view, one float32
    rFFT (scipy's pocketfft: vectorised over frames, several times numpy's speed in
    float32) and one matmul. Windows are processed in blocks of about ``_BLOCK_FRAMES``
    STFT frames, so the temporary memory is bounded whatever the number of windows.
    """
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("log_mel expects [..., samples], got a scalar")
    lead, n_samples = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, n_samples)
    n_frames = frames_for(n_samples, cfg)
    block = _BLOCKS[cfg.frontend]
    out = np.empty((flat.shape[0], cfg.n_mels, n_frames), dtype=np.float32)
    rows = max(1, _BLOCK_FRAMES // n_frames)
    for start in range(0, flat.shape[0], rows):
        out[start : start + rows] = block(flat[start : start + rows], cfg)
    return out.reshape(*lead, cfg.n_mels, n_frames)


def _log_mel_block(x: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """:func:`log_mel` of ``[windows, samples]`` float32 -> ``[windows, n_mels, frames]``."""
    if cfg.win_length not in (None, cfg.n_fft):
        raise FrontendError("the librosa_db front end takes no win_length other than n_fft")
    n_windows, n_samples = x.shape
    pad = cfg.n_fft // 2
    padded = np.zeros((n_windows, n_samples + 2 * pad), dtype=np.float32)  # zero ("constant") padding
    padded[:, pad : pad + n_samples] = x
    # [windows, frames, n_fft] view: no copy until the window is applied.
    frames = sliding_window_view(padded, cfg.n_fft, axis=-1)[:, :: cfg.hop_length, :]
    framed = frames * _hann(cfg.n_fft)
    spectrum = scipy.fft.rfft(framed, axis=-1, overwrite_x=True, workers=1)  # complex64
    del framed
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    del spectrum
    n_freq = power.shape[-1]
    mel = power.reshape(-1, n_freq) @ _filterbank_t(cfg)  # [windows * frames, n_mels]
    np.maximum(mel, np.float32(cfg.amin), out=mel)
    np.log10(mel, out=mel)
    mel *= np.float32(10.0)
    db = mel.reshape(n_windows, -1, cfg.n_mels).swapaxes(-1, -2)
    return _floor_per_window(db, cfg.top_db)


@functools.lru_cache(maxsize=16)
def _filterbank_t(cfg: AudioConfig) -> np.ndarray:
    """``mel_filterbank(cfg).T`` made contiguous (the matmul's fast layout), read-only."""
    fb_t = np.ascontiguousarray(mel_filterbank(cfg).T)
    fb_t.setflags(write=False)
    return fb_t


_BLOCKS = {LIBROSA_DB: _log_mel_block, EFFICIENTAT: efficientat_block}


def torch_frontend(cfg: AudioConfig) -> torch.nn.Module:
    """The torch module computing ``cfg``'s front end (what :func:`log_mel` computes in numpy)."""
    return EfficientATLogMel(cfg) if cfg.frontend == EFFICIENTAT else LogMel(cfg)


class LogMel(torch.nn.Module):
    """Torch twin of :func:`log_mel` for the ``librosa_db`` front end:
    ``[..., samples]`` -> ``[..., n_mels, frames]`` (:func:`torch_frontend` picks by config).

    Runs wherever its input lives (move the module with ``.to(device)``). The Hann
    window and filterbank are non-persistent buffers: they follow ``.to()`` but are not
    written into state dicts, because they are derived from the ``AudioConfig`` that
    every checkpoint already stores.
    """

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        if cfg.frontend != LIBROSA_DB or cfg.win_length not in (None, cfg.n_fft):
            raise FrontendError(f"LogMel computes the librosa_db front end, not {cfg.frontend!r}: use torch_frontend")
        self.n_fft = cfg.n_fft
        self.hop_length = cfg.hop_length
        self.n_mels = cfg.n_mels
        self.amin = float(cfg.amin)
        self.top_db = None if cfg.top_db is None else float(cfg.top_db)
        self.register_buffer(
            "window", torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float32),
            persistent=False,
        )
        self.register_buffer(
            "mel_fb", torch.from_numpy(mel_filterbank(cfg).copy()), persistent=False
        )

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        lead, n_samples = windows.shape[:-1], windows.shape[-1]
        n_frames = 1 + n_samples // self.hop_length
        flat = windows.reshape(-1, n_samples).to(self.window.dtype)
        if flat.shape[0] == 0:
            return flat.new_zeros((*lead, self.n_mels, n_frames))
        spectrum = torch.stft(
            flat,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",  # librosa >= 0.10 pads with zeros
            return_complex=True,
        )  # [batch, n_freq, frames]
        power = torch.view_as_real(spectrum).square().sum(dim=-1)
        mel = torch.matmul(self.mel_fb, power)  # [batch, n_mels, frames]
        db = 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
        db = _floor_per_window(db, self.top_db)
        return db.reshape(*lead, self.n_mels, n_frames)

    def extra_repr(self) -> str:
        return (
            f"n_fft={self.n_fft}, hop_length={self.hop_length}, n_mels={self.n_mels}, "
            f"top_db={self.top_db}"
        )
