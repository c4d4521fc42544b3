"""Read only the windows a track keeps (``AudioConfig.max_windows``), by seeking.

Why: a 60-minute stereo FLAC decoded whole is 2.3 GB of float32 before it is cut down to a
few windows. libsndfile can seek in WAV, FLAC, OGG and MP3, so the kept windows are read
with a margin on each side (the resampler's filter sees the real neighbouring signal and an
MP3 decoder refills its bit reservoir), and they equal the whole-track decode to ~1e-7.
Anything that cannot be read this way returns None and is decoded whole.
"""

from __future__ import annotations

import math
import os

import numpy as np
import soundfile as sf
import soxr

from mgc.audio.decode import (
    CORRUPT,
    EMPTY,
    FETCH_FAILED,
    MISSING,
    TOO_LARGE,
    AudioError,
    DecodedTrack,
    NonFinite,
    Truncated,
    check_shortfall,
    check_track,
    downmix,
    resampled_length,
    wav_truncation,
)
from mgc.config import AudioConfig
from mgc.io.storage import (
    StorageError,
    filesystem_for,
    is_local,
    is_transient,
    with_retries,
)

_HEAD_BYTES = 1 << 16  # enough for the WAV chunk headers before ``data`` in practice


# Output samples decoded beyond each side of a kept window, then dropped: soxr's filter
# sees the real neighbouring signal and an MP3 decoder has refilled its bit reservoir
# after the seek, so the window equals the whole-track decode (to ~1e-7).
_MARGIN = 4096


class _Reader:
    """A file object for libsndfile's virtual I/O that remembers I/O errors.

    Exceptions raised inside cffi callbacks cannot propagate (libsndfile just sees a
    short read), so they are kept here and reported as ``fetch_failed`` afterwards.
    """

    def __init__(self, handle) -> None:
        self._handle = handle
        self.error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            return self._handle.read(size)
        except Exception as exc:  # noqa: BLE001 - reported after the decoder returns
            self.error = self.error or exc
            return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return self._handle.seek(offset, whence)
        except Exception as exc:  # noqa: BLE001
            self.error = self.error or exc
            return self._handle.tell()

    def tell(self) -> int:
        return self._handle.tell()


class _Unseekable(Exception):
    """Internal: this file has to be decoded whole (no seeking, unknown length, ...)."""


class _ReadFailed(Exception):
    """Internal: an I/O error while reading windows (``cause``), classified by the caller."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def load_sampled(uri: str, cfg: AudioConfig, max_bytes: int | None = None) -> DecodedTrack | None:
    """The ``max_windows`` windows of ``uri`` read by seeking, or ``None`` to decode it whole.

    ``None`` when every window is needed anyway (a short track), when libsndfile cannot
    open or seek the file (the whole-file path then decodes or classifies it), or when a
    read failed transiently: the whole-file path retries it, and raises StorageError if
    the store stays down.
    """
    try:
        return _read_sampled(uri, cfg, max_bytes)
    except _ReadFailed as failed:
        if is_transient(failed.cause):
            return None
        raise AudioError(FETCH_FAILED, uri, f"{type(failed.cause).__name__}: {failed.cause}") from None


def _read_sampled(uri: str, cfg: AudioConfig, max_bytes: int | None) -> DecodedTrack | None:
    try:
        fs, path = filesystem_for(uri)
        handle = with_retries("open", uri, lambda: fs.open(path, "rb"))
    except FileNotFoundError as exc:
        raise AudioError(MISSING, uri, f"no such object: {uri}") from exc
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - as in fetch()
        raise AudioError(FETCH_FAILED, uri, f"{type(exc).__name__}: {exc}") from exc
    with handle:
        try:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(0)
            head = handle.read(_HEAD_BYTES)
            handle.seek(0)
        except Exception as exc:  # noqa: BLE001
            raise _ReadFailed(exc) from exc
        if not size:
            raise AudioError(EMPTY, uri, f"zero bytes: {uri}")
        if max_bytes is not None and size > max_bytes:
            raise AudioError(TOO_LARGE, uri, f"{uri} holds {size:,} bytes, over the limit of {max_bytes:,} (--max-bytes)")
        wav_problem = wav_truncation(head, size)
        if wav_problem:
            raise AudioError(CORRUPT, uri, f"truncated: {wav_problem}")
        reader = _Reader(handle)
        # Local files go through libsndfile's own I/O; others through the fsspec handle.
        source = path if is_local(uri) else reader
        try:
            snd = sf.SoundFile(source)
        except Exception:  # noqa: BLE001 - not for this path; decode() will say what it is
            if reader.error is not None:
                raise _ReadFailed(reader.error) from None
            return None
        try:
            with snd:
                windows, n_out = _read_kept_windows(snd, cfg)
        except _Unseekable:
            return None
        except Truncated as exc:
            raise AudioError(CORRUPT, uri, f"truncated: {exc}") from None
        except NonFinite:
            raise AudioError(CORRUPT, uri, "decoded samples contain NaN or Inf") from None
        except Exception as exc:  # noqa: BLE001 - a decoder failure mid-file
            if reader.error is not None:
                raise _ReadFailed(reader.error) from None
            raise AudioError(CORRUPT, uri, f"soundfile: {type(exc).__name__}: {exc}") from None
        if reader.error is not None:
            raise _ReadFailed(reader.error)
    duration_s = n_out / cfg.sample_rate
    check_track(uri, windows, duration_s, cfg)
    return DecodedTrack(windows=windows, duration_s=duration_s)


def _read_kept_windows(snd: sf.SoundFile, cfg: AudioConfig) -> tuple[np.ndarray, int]:
    """``([max_windows, window_samples], track length at cfg.sample_rate)`` by seeking.

    Raises ``_Unseekable`` when the whole track must be decoded instead.
    """
    sr_in, frames, sr_out = snd.samplerate, snd.frames, cfg.sample_rate
    if not snd.seekable() or frames <= 0:
        raise _Unseekable()
    n_out = resampled_length(frames, sr_in, sr_out)
    width = cfg.window_samples
    n_windows = n_out // width
    if n_windows <= cfg.max_windows:
        raise _Unseekable()  # every window is needed: the whole-track path is as cheap
    keep = np.rint(np.linspace(0, n_windows - 1, cfg.max_windows)).astype(np.int64)
    # Output sample step*j lies exactly on input sample in_step*j: segments that start
    # there put their resampled samples on the whole track's output grid.
    common = math.gcd(sr_in, sr_out)
    step, in_step = sr_out // common, sr_in // common
    windows = np.empty((len(keep), width), dtype=np.float32)
    for row, k in enumerate(keep):
        start = int(k) * width
        # A margin on both sides: soxr's filter sees the real neighbouring signal, and a
        # lossy decoder (MP3's bit reservoir) has settled before the window begins.
        first = max(0, (start - _MARGIN) // step * step)
        src_start = first // step * in_step
        src_stop = min(frames, -(-(start + width + _MARGIN) * sr_in // sr_out))
        snd.seek(src_start)
        block = snd.read(src_stop - src_start, dtype="float32", always_2d=True)
        if len(block) < src_stop - src_start:
            # Reached the end early: a header that overstates the length (within the
            # slack: decode whole) or a truncated body (corrupt).
            check_shortfall(frames, src_start + len(block))
            raise _Unseekable()
        if not np.isfinite(block).all():
            raise NonFinite()
        mono = downmix(block)
        if sr_in != sr_out:
            mono = soxr.resample(np.ascontiguousarray(mono), sr_in, sr_out)
        piece = mono[start - first : start - first + width]
        if len(piece) < width:
            raise _Unseekable()
        windows[row] = piece
    return windows, n_out
