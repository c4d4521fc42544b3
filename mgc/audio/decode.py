"""Fetch and decode audio bytes, cut windows, and name every way a track can fail.

Why typed errors: a catalog run touches millions of objects and some are always broken.
The pipeline records the failure of each track and goes on, so every failure here is an
:class:`AudioError` whose ``reason`` is one of :data:`REASONS`; those reasons are what
an operator counts and fixes (re-upload the truncated ones, drop the text files, ...),
so they must say precisely what went wrong.
"""

from __future__ import annotations

import io
import math
import os
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mgc.config import AudioConfig
from mgc.io.storage import ObjectTooLarge, StorageError, reachable, read_bytes, redact


__all__ = [
    "AudioError",
    "MISSING",
    "EMPTY",
    "NOT_AUDIO",
    "CORRUPT",
    "TOO_SHORT",
    "SILENT",
    "FETCH_FAILED",
    "STORAGE",
    "TIMEOUT",
    "TOO_LARGE",
    "CRASHED",
    "REASONS",
    "RETRYABLE",
    "is_retryable",
    "DecodedTrack",
    "fetch",
    "decode",
    "cut_windows",
    "track_error",
]


MISSING = "missing"
"""The object or file does not exist."""


EMPTY = "empty"
"""The object exists but has zero bytes."""


NOT_AUDIO = "not_audio"
"""The bytes are not a recognised audio format (a text file named ``.mp3``)."""


CORRUPT = "corrupt"
"""The bytes claim to be audio but do not decode (truncated, garbled, NaN samples)."""


TOO_SHORT = "too_short"
"""Decoded fine but is shorter than ``AudioConfig.min_duration_s``."""


SILENT = "silent"
"""Decoded fine but its RMS is below ``AudioConfig.silence_threshold_db`` dBFS."""


FETCH_FAILED = "fetch_failed"
"""Any other failure to read the bytes (permissions, network, bad URI)."""


STORAGE = "storage"
"""One key kept failing with storage errors while the store itself answered."""


TIMEOUT = "timeout"
"""Fetching and decoding took longer than the per-track limit (a FIFO, a stalled read)."""


TOO_LARGE = "too_large"
"""The object is over the size limit (``--max-bytes``), refused before it is read."""


CRASHED = "crashed"
"""Processing this track killed its worker (a segfault, out of memory), again and again."""


REASONS: tuple[str, ...] = (
    MISSING, EMPTY, NOT_AUDIO, CORRUPT, TOO_SHORT, SILENT, FETCH_FAILED, STORAGE, TIMEOUT, TOO_LARGE, CRASHED,
)

RETRYABLE: frozenset[str] = frozenset({MISSING, FETCH_FAILED, STORAGE, TIMEOUT})
"""Reasons that can go away by themselves (an upload, an expired token, a stalled store):
a later run tries these tracks again; the others are properties of the file itself."""


def is_retryable(error: str | None) -> bool:
    """Whether an ``error`` text (``"<reason>: ..."``) names a :data:`RETRYABLE` reason."""
    return isinstance(error, str) and error.split(":", 1)[0] in RETRYABLE


# Leading bytes of containers that only audio files have. If a file starts with one of
# these but neither decoder can read it, it is a broken audio file (corrupt), not some
# other kind of file (not_audio).
_AUDIO_MAGIC: tuple[bytes, ...] = (
    b"RIFF",  # WAV (RIFF also wraps AVI/WebP, rare enough among audio URIs)
    b"RF64",
    b"fLaC",
    b"OggS",
    b"ID3",  # MP3 with an ID3v2 tag
    b"FORM",  # AIFF / AIFC
    b".snd",  # AU
    b"caff",
    b"\x30\x26\xb2\x75\x8e\x66\xcf\x11",  # ASF (WMA)
)


# A decoder that returns fewer frames than the header declared has met a truncated
# body. MP3 lengths are an estimate when there is no Xing/LAME header, so allow a
# little slack before calling a short read corrupt.
_TRUNCATION_SLACK = 0.02


_MIN_TRUNCATION_FRAMES = 2 * 1152  # two MPEG-1 layer III frames


_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers and RF64 put these in `data`


class AudioError(Exception):
    """A track that cannot be used, with a machine-readable ``reason``.

    ``str(err)`` is ``"<reason>: <detail>"`` so that logs and per-track failure records
    read the same. Picklable, because Ray ships exceptions between processes.
    """

    def __init__(self, reason: str, uri: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown AudioError reason {reason!r}; expected one of {REASONS}")
        if uri and uri in detail:  # the text lands in logs and output rows: no credentials in it
            detail = detail.replace(uri, redact(uri))
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.uri = uri
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"

    def __reduce__(self):
        return (type(self), (self.reason, self.uri, self.detail))


@dataclass(frozen=True, eq=False)
class DecodedTrack:
    """A validated track cut into model windows.

    ``eq=False``: comparing numpy arrays with ``==`` is elementwise, so the generated
    equality would be meaningless; identity equality and hashing are kept instead.
    """

    windows: np.ndarray  # [n_windows, window_samples] float32
    duration_s: float  # of the whole decoded track, before windowing


def fetch(uri: str, max_bytes: int | None = None) -> bytes:
    """Read the whole object behind ``uri`` (local path, ``file://``, ``s3://``, ...).

    Through :func:`mgc.io.storage.read_bytes`, so S3 endpoints are honoured and transient
    errors are retried. A store that stays down raises :class:`mgc.io.storage.StorageError`,
    which is the job's failure, not this track's: recording it as a ``fetch_failed`` row
    would let a rerun skip the track as done. Any other failure but "does not exist"
    (a bad URI, a permission error on this object) is this track's ``fetch_failed``; an
    object over ``max_bytes`` is ``too_large`` and is not read.
    """
    try:
        data = read_bytes(uri, max_bytes=max_bytes)
    except FileNotFoundError as exc:
        raise AudioError(MISSING, uri, f"no such object: {uri}") from exc
    except ObjectTooLarge as exc:
        raise AudioError(TOO_LARGE, uri, str(exc)) from exc
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other I/O trouble is this track's failure
        raise AudioError(FETCH_FAILED, uri, f"{type(exc).__name__}: {exc}") from exc
    if not data:
        raise AudioError(EMPTY, uri, f"zero bytes: {uri}")
    return data


def track_error(err: Exception) -> str:
    """The per-track ``error`` text of a failure while loading one track, or re-raise.

    The one rule every per-track pipeline (training decode, tagging, the feature
    baseline) applies: an :class:`AudioError` is ``"<reason>: <detail>"``; a
    :class:`mgc.io.storage.StorageError` is the job's failure when the store is down as a
    whole (see :func:`fetch`) and propagates, but when the store still answers
    (:func:`mgc.io.storage.reachable`) only this key is failing: a retryable ``storage``
    row; anything else is ``decode_failed: ...``, so one bad track never stops the job.
    """
    if isinstance(err, StorageError):
        if err.uri and reachable(err.uri):
            return f"{STORAGE}: {err}"
        raise err
    if isinstance(err, AudioError):
        return str(err)
    return f"decode_failed: {type(err).__name__}: {err}"


def _looks_like_audio(data: bytes) -> bool:
    """True when ``data`` starts like an audio container or an MPEG audio frame."""
    if data.startswith(_AUDIO_MAGIC):
        return True
    if len(data) >= 8 and data[4:8] == b"ftyp":  # MP4 / M4A
        return True
    # MPEG audio frame sync: 11 set bits.
    return len(data) >= 2 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0


def wav_truncation(data: bytes, size: int | None = None) -> str | None:
    """Describe a RIFF/WAVE file whose ``data`` chunk is cut short, else ``None``.

    libsndfile silently shortens such files to the bytes present, so a partial upload
    would otherwise pass as a valid, shorter track. Only the chunk headers are read, so
    ``data`` may be just the head of the file when ``size`` gives the whole file's size.
    """
    size = len(data) if size is None else size
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (chunk_size,) = struct.unpack_from("<I", data, pos + 4)
        if chunk_id == b"data":
            available = size - pos - 8
            if chunk_size not in _WAV_UNKNOWN_SIZES and available < chunk_size:
                return f"WAV data chunk declares {chunk_size} bytes but only {available} present"
            return None
        pos += 8 + chunk_size + (chunk_size & 1)
    return None


def downmix(block: np.ndarray) -> np.ndarray:
    """``[frames, channels]`` float32 -> ``[frames]``: the channel mean.

    A matrix-vector product, not ``mean(axis=1)``: numpy's reduction over a short inner
    axis is ~20x slower, and for stereo the weights 0.5 give the mean bit for bit.
    """
    channels = block.shape[1]
    if channels == 1:
        return block[:, 0]
    return block @ np.full(channels, 1.0 / channels, dtype=np.float32)


class _MonoResampler:
    """Collect mono float32 blocks at ``sr_in`` as one array at ``sr_out``.

    soxr's streaming resampler gives the one-shot ``soxr.resample`` output bit for bit,
    so a track can be decoded block by block (no whole multichannel float32 copy). The
    output goes straight into one array sized from the header's frame count (grown if
    the header undercounts), so the track is not held twice at the end either.
    """

    def __init__(self, sr_in: int, sr_out: int, expected_frames: int = 0, max_expected: int | None = None) -> None:
        same = sr_in == sr_out
        self._stream = None if same else soxr.ResampleStream(sr_in, sr_out, 1, dtype="float32")
        expected = resampled_length(max(0, expected_frames), sr_in, sr_out)
        if max_expected is not None:  # a header may claim anything: do not trust it with memory
            expected = min(expected, max_expected)
        self._out = np.empty(expected, dtype=np.float32)
        self._size = 0

    def push(self, y: np.ndarray, last: bool = False) -> None:
        if self._stream is not None:
            y = self._stream.resample_chunk(np.ascontiguousarray(y, dtype=np.float32), last=last)
        end = self._size + len(y)
        if end > len(self._out):
            grown = np.empty(max(end, len(self._out) + len(self._out) // 4), dtype=np.float32)
            grown[: self._size] = self._out[: self._size]
            self._out = grown
        self._out[self._size : end] = y
        self._size = end

    def result(self) -> np.ndarray:
        if self._stream is not None:
            self.push(np.zeros(0, dtype=np.float32), last=True)
            self._stream = None
        if self._size == len(self._out):
            return self._out
        return self._out[: self._size]


def resampled_length(frames: int, sr_in: int, sr_out: int) -> int:
    """Length of ``soxr.resample`` output for ``frames`` input frames (round half up)."""
    return (2 * frames * sr_out + sr_in) // (2 * sr_in)


def _to_mono_rate(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """``[frames, channels]`` (or ``[frames]``) at ``sr_in`` -> mono float32 at ``sr_out``.

    Downmixes before resampling so the resampler sees one channel, not six.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 2:
        y = downmix(y)
    y = np.ascontiguousarray(y, dtype=np.float32)
    if sr_in != sr_out and y.size:
        y = soxr.resample(y, sr_in, sr_out)
    return np.ascontiguousarray(y, dtype=np.float32)


class Truncated(Exception):
    """Internal: the decoder read fine but the body is shorter than declared."""


class NonFinite(Exception):
    """Internal: the decoder returned NaN or Inf samples."""


# Frames decoded per read: bounds the multichannel float32 buffer (3 MiB at 6 channels)
# however long the track, instead of one [frames, channels] copy of the whole track.
_BLOCK_FRAMES = 1 << 17


def check_shortfall(declared: int, got: int) -> None:
    shortfall = declared - got
    if shortfall > max(_MIN_TRUNCATION_FRAMES, _TRUNCATION_SLACK * declared):
        raise Truncated(f"decoded {got} of {declared} declared frames")


def _decode_soundfile(data: bytes, sample_rate: int) -> np.ndarray:
    """Decode with libsndfile from memory to mono float32 at ``sample_rate``.

    Reads block by block, downmixing and resampling (streaming soxr) as it goes, so the
    peak memory is the mono output, not a float32 copy of every channel. Raises
    ``Truncated`` when the body is shorter than the header declares and ``NonFinite``
    for NaN/Inf samples.
    """
    with sf.SoundFile(io.BytesIO(data)) as handle:
        declared = handle.frames
        # At most 16 output samples per byte up front (MP3/Vorbis give ~1-3, FLAC/PCM < 1);
        # a track that really decodes to more grows the buffer.
        out = _MonoResampler(handle.samplerate, sample_rate, declared, max_expected=16 * len(data) + (1 << 20))
        # libsndfile 1.2's MPEG decoder corrupts samples where one read call ends and the
        # next begins (worse at low bitrates): an MP3 is read in one call, as before.
        block_frames = -1 if handle.format == "MP3" else _BLOCK_FRAMES
        got = 0
        while True:
            block = handle.read(block_frames, dtype="float32", always_2d=True)
            if not len(block):
                break
            if not np.isfinite(block).all():
                raise NonFinite()
            got += len(block)
            out.push(downmix(block))
            if block_frames < 0:
                break
    check_shortfall(declared, got)
    wav_problem = wav_truncation(data)
    if wav_problem:
        raise Truncated(wav_problem)
    return out.result()


def _decode_audioread(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Decode through ``librosa.load`` (audioread: ffmpeg, gstreamer, ...) via a temp file.

    For formats libsndfile lacks (AAC/M4A, WMA...). audioread needs a real file, and
    the original suffix helps backends that pick a demuxer by name. librosa's
    "PySoundFile failed" and deprecation warnings are expected here and suppressed.
    """
    import librosa  # heavy import, only needed on this rare path

    suffix = Path(name).suffix if name else ""
    if not (1 < len(suffix) <= 6 and suffix[1:].isalnum()):
        suffix = ""
    fd, tmp = tempfile.mkstemp(prefix="mgc-decode-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y, sr = librosa.load(tmp, sr=None, mono=False, dtype=np.float32)
    finally:
        os.unlink(tmp)
    y = np.asarray(y, dtype=np.float32)
    return (y.T if y.ndim == 2 else y), int(sr)


def decode(data: bytes, sample_rate: int, name: str = "") -> np.ndarray:
    """Decode audio bytes to mono float32 at ``sample_rate``.

    libsndfile (in memory) handles WAV/FLAC/OGG/MP3/AIFF/AU; anything it cannot read
    goes to audioread. When both fail, the leading bytes decide the reason: a file that
    starts like an audio container is ``corrupt``, anything else is ``not_audio``.
    A body shorter than its header declares, or non-finite samples, is ``corrupt``.
    ``name`` (usually the URI) is only used for error reports and the temp-file suffix.
    """
    if not data:
        raise AudioError(EMPTY, name, "zero bytes")
    try:
        return _decode_soundfile(data, sample_rate)
    except Truncated as exc:
        raise AudioError(CORRUPT, name, f"truncated: {exc}") from None
    except NonFinite:
        raise AudioError(CORRUPT, name, "decoded samples contain NaN or Inf") from None
    except Exception as sf_exc:  # noqa: BLE001 - decoders fail in many ways on bad input
        try:
            y, sr = _decode_audioread(data, name)
        except Exception as ar_exc:  # noqa: BLE001
            reason = CORRUPT if _looks_like_audio(data) else NOT_AUDIO
            detail = (
                f"soundfile: {type(sf_exc).__name__}: {sf_exc}; "
                f"audioread: {type(ar_exc).__name__}: {ar_exc}"
            )
            raise AudioError(reason, name, detail) from None
    if not np.isfinite(y).all():
        raise AudioError(CORRUPT, name, "decoded samples contain NaN or Inf")
    return _to_mono_rate(y, sr, sample_rate)


def cut_windows(y: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Cut a mono track into back-to-back windows ``[n, cfg.window_samples]`` float32.

    The tail shorter than a window is dropped. A track at least ``min_duration_s``
    long but shorter than one window is zero-padded to one window (when
    ``min_duration_s < window_s``); a shorter one gives ``[0, window_samples]``.
    With ``cfg.max_windows`` set, that many windows evenly spaced over the track
    (first and last included) are kept, so long tracks cost a bounded amount of
    compute while still being sampled from start to end.
    """
    width = cfg.window_samples
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    n_windows = len(y) // width
    if n_windows == 0:
        if len(y) == 0 or len(y) / cfg.sample_rate < cfg.min_duration_s:
            return np.zeros((0, width), dtype=np.float32)
        padded = np.zeros((1, width), dtype=np.float32)
        padded[0, : len(y)] = y
        return padded
    windows = y[: n_windows * width].reshape(n_windows, width)  # a view, no copy
    if cfg.max_windows is not None:
        if cfg.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {cfg.max_windows}")
        if n_windows > cfg.max_windows:
            keep = np.rint(np.linspace(0, n_windows - 1, cfg.max_windows)).astype(np.int64)
            windows = windows[keep]
    return np.ascontiguousarray(windows, dtype=np.float32)


def _rms_dbfs(y: np.ndarray) -> float:
    """RMS level in dB relative to full scale (-inf for digital silence)."""
    mean_square = float(np.mean(np.square(y), dtype=np.float64)) if y.size else 0.0
    return 10.0 * math.log10(mean_square) if mean_square > 0 else -math.inf


def check_track(uri: str, y: np.ndarray, duration_s: float, cfg: AudioConfig) -> None:
    """too_short, then silent (``y``: the samples the level is measured on)."""
    if duration_s < cfg.min_duration_s or len(y) == 0:
        raise AudioError(
            TOO_SHORT, uri, f"{duration_s:.2f} s < min_duration_s {cfg.min_duration_s} s"
        )
    level = _rms_dbfs(y)
    if level < cfg.silence_threshold_db:
        raise AudioError(
            SILENT, uri, f"RMS {level:.1f} dBFS < threshold {cfg.silence_threshold_db} dBFS"
        )
