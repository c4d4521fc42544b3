"""Fetch, decode, validate and window: every failure reason from the input that causes it."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mgc.audio import decode as audio
from mgc.audio.decode import (
    CORRUPT,
    EMPTY,
    FETCH_FAILED,
    MISSING,
    NOT_AUDIO,
    REASONS,
    RETRYABLE,
    SILENT,
    TOO_SHORT,
    AudioError,
    DecodedTrack,
    cut_windows,
    decode,
    fetch,
)
from mgc.audio.track import load_track
from mgc.config import AudioConfig

GTZAN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gtzan-mini"
CFG = AudioConfig()
SR = CFG.sample_rate
# libsndfile writes LAME gapless info, so MP3 round trips are near exact; allow one frame.
MP3_SLACK = 1152


def tone(duration_s: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    """A 440 Hz tone with a little noise, ``[frames]`` or ``[frames, channels]``."""
    t = np.arange(int(round(duration_s * sr))) / sr
    rng = np.random.default_rng(0)
    y = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)
    y = y.astype(np.float32)
    return y if channels == 1 else np.repeat(y[:, None], channels, axis=1)


def encode(y: np.ndarray, sr: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, y, sr, format=fmt, subtype=subtype)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def reason_of(uri: str, cfg: AudioConfig = CFG) -> str:
    with pytest.raises(AudioError) as info:
        load_track(uri, cfg)
    assert info.value.uri == uri
    assert str(info.value) == f"{info.value.reason}: {info.value.detail}"
    return info.value.reason


# --- AudioError ---------------------------------------------------------------------


def test_reasons_and_error_contract():
    assert REASONS == (MISSING, EMPTY, NOT_AUDIO, CORRUPT, TOO_SHORT, SILENT, FETCH_FAILED,
                       "storage", "timeout", "too_large", "crashed")
    assert RETRYABLE == {MISSING, FETCH_FAILED, "storage", "timeout"}
    err = AudioError(CORRUPT, "s3://b/k.wav", "truncated")
    assert (err.reason, err.uri, err.detail, str(err)) == (
        "corrupt", "s3://b/k.wav", "truncated", "corrupt: truncated"
    )
    back = pickle.loads(pickle.dumps(err))  # Ray ships exceptions between processes
    assert (back.reason, back.uri, back.detail, str(back)) == (
        err.reason, err.uri, err.detail, str(err)
    )
    with pytest.raises(ValueError):
        AudioError("broken", "x", "y")


# --- one input per reason -------------------------------------------------------------


def test_missing(tmp_path):
    uri = str(tmp_path / "nope.wav")
    assert reason_of(uri) == MISSING
    assert reason_of("file://" + uri) == MISSING


def test_empty(tmp_path):
    assert reason_of(write(tmp_path / "zero.wav", b"")) == EMPTY


def test_fetch_failed_for_other_io_errors(tmp_path):
    with pytest.raises(AudioError) as info:
        fetch(str(tmp_path))  # a directory: exists, but is not a readable object
    assert info.value.reason == FETCH_FAILED
    with pytest.raises(AudioError) as info:
        fetch("nosuchproto://bucket/key.wav")
    assert info.value.reason == FETCH_FAILED


def test_text_file_named_mp3_is_not_audio(tmp_path):
    uri = write(tmp_path / "x.mp3", b"this is a text file, not an mp3\n" * 50)
    assert reason_of(uri) == NOT_AUDIO


@pytest.mark.parametrize(
    "name, fmt, subtype, damage",
    [
        ("truncated.wav", "WAV", "PCM_16", "truncate"),
        ("truncated.flac", "FLAC", "PCM_16", "truncate"),
        ("garbled.flac", "FLAC", "PCM_16", "garble"),
        ("truncated.mp3", "MP3", "MPEG_LAYER_III", "truncate"),
        ("garbled.ogg", "OGG", "VORBIS", "garble"),
    ],
)
def test_broken_body_is_corrupt(tmp_path, name, fmt, subtype, damage):
    data = encode(tone(5.0), SR, fmt, subtype)
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # keep the header, replace the body with noise
        body = np.random.default_rng(1).integers(0, 256, len(data) - 200, dtype=np.uint8)
        data = data[:200] + body.tobytes()
    assert reason_of(write(tmp_path / name, data)) == CORRUPT


def test_nan_samples_are_corrupt(tmp_path):
    y = tone(4.0)
    y[100] = np.nan
    assert reason_of(write(tmp_path / "nan.wav", encode(y, SR, "WAV", "FLOAT"))) == CORRUPT


def test_too_short(tmp_path):
    assert reason_of(write(tmp_path / "short.wav", encode(tone(0.5), SR, "WAV"))) == TOO_SHORT


def test_silent(tmp_path):
    zeros = np.zeros(SR * 5, dtype=np.float32)
    assert reason_of(write(tmp_path / "zeros.wav", encode(zeros, SR, "WAV"))) == SILENT
    hiss = tone(5.0) * 1e-4  # about -80 dBFS: below the -60 dBFS threshold
    assert reason_of(write(tmp_path / "hiss.flac", encode(hiss, SR, "FLAC", "PCM_24"))) == SILENT


# --- decoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, subtype, slack",
    [("WAV", "PCM_16", 0), ("FLAC", "PCM_16", 0), ("MP3", "MPEG_LAYER_III", MP3_SLACK),
     ("OGG", "VORBIS", 0)],
)
def test_formats_decode_to_right_length(fmt, subtype, slack):
    y = tone(4.0)
    out = decode(encode(y, SR, fmt, subtype), SR, name=f"x.{fmt.lower()}")
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(y)) <= slack
    assert np.sqrt(np.mean(out**2)) == pytest.approx(np.sqrt(np.mean(y**2)), rel=0.1)


def test_stereo_44k_comes_back_mono_22k(tmp_path):
    stereo = np.stack([tone(4.0, sr=44100), np.zeros(4 * 44100, np.float32)], axis=1)
    track = load_track(write(tmp_path / "s.wav", encode(stereo, 44100, "WAV", "FLOAT")), CFG)
    assert track.duration_s == pytest.approx(4.0, abs=1e-3)
    assert track.windows.shape == (1, CFG.window_samples)
    y = decode(encode(stereo, 44100, "WAV", "FLOAT"), SR)
    assert len(y) == 4 * SR
    # Downmix is the channel mean: one silent channel halves the level.
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(tone(4.0) ** 2)) / 2, rel=0.02)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_six_channel_96k_decodes(fmt):
    data = encode(tone(1.5, sr=96000, channels=6), 96000, fmt, "PCM_24")
    y = decode(data, SR)
    assert y.ndim == 1 and len(y) == int(1.5 * SR)


def test_fallback_decoder_is_used_when_soundfile_fails(monkeypatch):
    """A format libsndfile lacks goes through librosa/audioread (stdlib WAV reader here)."""

    class Refusing(sf.SoundFile):  # still a type: librosa isinstance-checks it
        def __init__(self, *args, **kwargs):
            raise sf.LibsndfileError(0, "pretend libsndfile lacks this format")

    data = encode(tone(2.0, sr=16000), 16000, "WAV", "PCM_16")
    monkeypatch.setattr(audio.sf, "SoundFile", Refusing)
    y = decode(data, SR, name="x.wav")
    assert len(y) == 2 * SR


# --- windows ------------------------------------------------------------------------


def test_cut_windows_back_to_back_tail_dropped():
    width = CFG.window_samples
    y = np.arange(width * 4 + 100, dtype=np.float32)
    windows = cut_windows(y, CFG)
    assert windows.shape == (4, width) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows[2], y[2 * width : 3 * width])


def test_cut_windows_max_windows_evenly_spaced():
    width = CFG.window_samples
    y = np.repeat(np.arange(10, dtype=np.float32), width)  # window i is all i
    picked = cut_windows(y, AudioConfig(max_windows=4))
    assert picked.shape == (4, width)
    np.testing.assert_array_equal(picked[:, 0], [0, 3, 6, 9])  # linspace(0, 9, 4)
    assert cut_windows(y, AudioConfig(max_windows=20)).shape == (10, width)
    with pytest.raises(ValueError):
        cut_windows(y, AudioConfig(max_windows=0))


def test_cut_windows_pads_one_window_between_min_duration_and_window():
    cfg = AudioConfig(min_duration_s=1.0)
    y = np.ones(2 * SR, dtype=np.float32)
    windows = cut_windows(y, cfg)
    assert windows.shape == (1, cfg.window_samples)
    assert windows[0, : 2 * SR].all() and not windows[0, 2 * SR :].any()
    assert cut_windows(y[: SR // 2], cfg).shape == (0, cfg.window_samples)


def test_short_track_above_min_duration_loads_padded(tmp_path):
    cfg = AudioConfig(min_duration_s=1.0)
    track = load_track(write(tmp_path / "two.ogg", encode(tone(2.0), SR, "OGG")), cfg)
    assert track.windows.shape == (1, cfg.window_samples)
    assert track.duration_s == pytest.approx(2.0, abs=0.01)


def test_gtzan_clip_loads_into_windows():
    clip = GTZAN / "jazz" / "jazz.00005.wav"
    if not clip.is_file():
        pytest.skip(f"{clip} not present")
    track = load_track(str(clip), CFG)
    assert isinstance(track, DecodedTrack)
    assert track.duration_s == pytest.approx(sf.info(str(clip)).duration, abs=1e-3)
    n = int(track.duration_s // CFG.window_s)
    assert track.windows.shape == (n, CFG.window_samples) and n >= 1
    assert track.windows.dtype == np.float32
