"""Decode memory is bounded when ``AudioConfig.max_windows`` is set (issue #6).

A 60-minute track or a 6-channel 96 kHz file must neither crash a decode actor nor use
memory in proportion to its length: with ``max_windows`` set, only the kept windows are
read (seeking), so the peak is a few windows' worth whatever the track's length.

Bounds (peak RSS growth of a fresh process while it decodes one track, measured as
VmHWM after resetting it with /proc/self/clear_refs; not ``ru_maxrss``, which a child
inherits from its parent's memory at fork time on Linux):

* MAX_GROWTH_MB = 64. A 3 s window read with its margins is ~1 MiB at 44.1 kHz stereo
  and ~8 MiB at 96 kHz x 6 channels (float32); 8 of them and the resampler stay far
  below. Decoding the same files whole needs the decoded track in memory: ~1.3 GB for
  the 60-minute 44.1 kHz stereo FLAC as float32, ~0.26 GB for 2 minutes of 6 x 96 kHz.

The test files are written in 10-second chunks, so the test itself stays small too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from mgc.audio.decode import cut_windows, decode, fetch
from mgc.audio.track import load_track
from mgc.config import AudioConfig

MAX_GROWTH_MB = 64
MAX_WINDOWS = 8
CFG = AudioConfig(max_windows=MAX_WINDOWS)

MEASURE = textwrap.dedent(
    """
    import json, re, sys
    import numpy as np
    from mgc.audio.track import load_track
    from mgc.config import AudioConfig

    def status_kb(field):
        with open("/proc/self/status") as f:
            return int(re.search(field + r":\\s+(\\d+)", f.read()).group(1))

    warm_uri, uri, max_windows = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = AudioConfig(max_windows=max_windows or None)
    load_track(warm_uri, cfg)  # codecs and resampler initialised outside the measurement
    before = status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # peak (VmHWM) := current RSS
        f.write("5")
    track = load_track(uri, cfg)
    print(json.dumps({
        "growth_mb": (status_kb("VmHWM") - before) / 1024,
        "shape": list(track.windows.shape),
        "duration_s": track.duration_s,
        "rms": float(np.sqrt(np.mean(track.windows ** 2))),
    }))
    """
)


def write_long(path: Path, minutes: float, sr: int, channels: int, subtype: str) -> Path:
    """A tone with a little noise, written 10 s at a time (the test never holds the track)."""
    chunk = 10 * sr
    t = np.arange(chunk) / sr
    rng = np.random.default_rng(0)
    y = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.003 * rng.standard_normal(chunk)).astype(np.float32)
    block = np.repeat(y[:, None], channels, axis=1)
    with sf.SoundFile(path, "w", sr, channels, format="FLAC", subtype=subtype) as out:
        for _ in range(int(round(minutes * 6))):
            out.write(block)
    return path


@pytest.fixture(autouse=False)
def linux_peak_rss():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak RSS is measured through Linux's /proc/self/clear_refs")


def measure(warm: Path, uri: Path, max_windows: int | None = MAX_WINDOWS) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(warm), str(uri), str(max_windows or 0)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "minutes, sr, channels, subtype",
    [(60.0, 44100, 2, "PCM_16"), (2.0, 96000, 6, "PCM_24")],
    ids=["60min-44k-stereo", "2min-96k-6ch"],
)
def test_long_or_wide_track_decodes_in_bounded_memory(linux_peak_rss, tmp_path, minutes, sr, channels, subtype):
    track = write_long(tmp_path / "long.flac", minutes, sr, channels, subtype)
    warm = write_long(tmp_path / "warm.flac", 1.0, sr, channels, subtype)
    got = measure(warm, track)
    assert got["shape"] == [MAX_WINDOWS, CFG.window_samples]
    assert got["duration_s"] == pytest.approx(minutes * 60, abs=0.01)
    assert 0.15 < got["rms"] < 0.25, "the windows hold the tone, not silence"
    whole_track_mb = minutes * 60 * sr * channels * 4 / 2**20
    assert got["growth_mb"] < MAX_GROWTH_MB, (
        f"peak RSS grew {got['growth_mb']:.0f} MB decoding {MAX_WINDOWS} windows "
        f"(bound {MAX_GROWTH_MB} MB; the whole track as float32 is {whole_track_mb:.0f} MB)"
    )
    if channels == 6:  # the measurement is meaningful: decoding every window costs far more
        unbounded = measure(warm, track, max_windows=None)
        assert unbounded["shape"][0] == minutes * 20 and unbounded["growth_mb"] > 2 * MAX_GROWTH_MB


def tone(seconds: float, sr: int, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + 0.1 * np.sin(t)))
    noise = 0.05 * np.random.default_rng(1).standard_normal((len(t), channels))
    return (y[:, None] + noise).astype(np.float32)


@pytest.mark.parametrize(
    "fmt, sr, channels, subtype, tol",
    [
        ("WAV", 22050, 1, "PCM_16", 0.0),  # no resampling: the very same samples
        ("WAV", 44100, 2, "FLOAT", 1e-6),
        ("FLAC", 96000, 6, "PCM_24", 1e-6),
        ("MP3", 44100, 2, None, 1e-6),
        ("MP3", 22050, 1, None, 1e-6),  # MPEG-2 layer III: 576-sample frames
        ("OGG", 48000, 2, None, 1e-6),
    ],
)
def test_seeking_gives_the_windows_of_the_whole_decode(tmp_path, fmt, sr, channels, subtype, tol):
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, tone(31.3, sr, channels), sr, format=fmt, subtype=subtype)
    sampled = load_track(str(path), CFG)
    whole = decode(fetch(str(path)), CFG.sample_rate)
    expected = cut_windows(whole, CFG)
    assert sampled.windows.shape == expected.shape == (MAX_WINDOWS, CFG.window_samples)
    assert float(np.abs(sampled.windows - expected).max()) <= tol
    assert sampled.duration_s == pytest.approx(len(whole) / CFG.sample_rate, abs=1e-6)


def test_short_track_and_errors_keep_their_meaning_with_max_windows(tmp_path):
    short = tmp_path / "short.flac"
    sf.write(short, tone(10.0, 44100, 2), 44100)  # 3 windows < max_windows: decoded whole
    track = load_track(str(short), CFG)
    assert track.windows.shape == (3, CFG.window_samples)
    assert load_track(str(short), AudioConfig(max_windows=2)).windows.shape == (2, CFG.window_samples)

    def reason(path: Path, cfg: AudioConfig = CFG) -> str:
        from mgc.audio.decode import AudioError

        with pytest.raises(AudioError) as info:
            load_track(str(path), cfg)
        return info.value.reason

    assert reason(tmp_path / "missing.flac") == "missing"
    (tmp_path / "empty.wav").write_bytes(b"")
    assert reason(tmp_path / "empty.wav") == "empty"
    (tmp_path / "text.mp3").write_text("not audio\n" * 100)
    assert reason(tmp_path / "text.mp3") == "not_audio"
    sf.write(tmp_path / "silent.flac", np.zeros(44100 * 40, np.float32), 44100)
    assert reason(tmp_path / "silent.flac") == "silent"
    long_wav = tmp_path / "cut.wav"
    sf.write(long_wav, tone(40.0, 22050, 1), 22050, subtype="PCM_16")
    data = long_wav.read_bytes()
    long_wav.write_bytes(data[: len(data) // 2])  # a partial upload: header says 40 s
    assert reason(long_wav) == "corrupt"
    assert reason(short, AudioConfig(max_windows=1, min_duration_s=12.0)) == "too_short"


def test_seeking_through_s3(s3_endpoint, s3_bucket, tmp_path):
    import s3fs

    path = tmp_path / "long.flac"
    sf.write(path, tone(40.0, 44100, 2), 44100)
    s3fs.S3FileSystem(endpoint_url=s3_endpoint).put(str(path), f"{s3_bucket}/long.flac")
    remote = load_track(f"s3://{s3_bucket}/long.flac", CFG)
    local = load_track(str(path), CFG)
    np.testing.assert_array_equal(remote.windows, local.windows)
    assert remote.duration_s == local.duration_s


@pytest.mark.parametrize("sr, channels, quality", [(22050, 1, 0.99), (44100, 2, 0.99), (44100, 2, 0.5)])
def test_mp3_whole_decode_is_one_read(tmp_path, sr, channels, quality):
    """libsndfile 1.2's MPEG decoder corrupts samples where one read call ends and the next
    begins (up to 0.4 full scale at low bitrates), so MP3 must not be decoded block by block."""
    path = tmp_path / "x.mp3"
    with sf.SoundFile(path, "w", sr, channels, format="MP3", compression_level=quality) as out:
        out.write(tone(31.3, sr, channels))
    data = path.read_bytes()
    expected = sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1, dtype=np.float32)
    got = decode(data, sr)  # no resampling: the decoder's samples, downmixed
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-6
