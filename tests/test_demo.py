"""Tests for the embedded demo data set (mgc.datasets.demo)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mgc.datasets import demo
from mgc.datasets.demo import PEAK_CEILING_DB, DemoConfig, make_demo_set
from mgc.io.validate import CONTRACT_COLUMNS as MANIFEST_COLUMNS

SMALL = DemoConfig(tracks_per_pair=2, duration_s=4.0)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_set(tmp_path_factory.mktemp("demo_small"), SMALL)


def test_mp3_writing_is_available() -> None:
    assert "MP3" in sf.available_formats()


def test_manifest_contract(small_set: Path) -> None:
    df = pd.read_csv(small_set, dtype=str)
    assert tuple(df.columns) == MANIFEST_COLUMNS
    assert len(df) == SMALL.num_tracks == 24
    assert df["track_id"].is_unique
    assert df["artist_id"].is_unique
    assert set(df["split"]) <= {"train", "validation", "test"}
    assert set(df["genres"]) == set(SMALL.genres)
    assert set(df["moods"]) == set(SMALL.moods)
    assert np.allclose(df["duration_s"].astype(float), SMALL.duration_s)
    for row in df.itertuples():
        assert not Path(row.uri).is_absolute()
        assert row.uri == f"audio/{row.genres}/{row.track_id}.{row.uri.rsplit('.', 1)[1]}"
    # Every genre x mood pair is in train (and, with 2 per pair, in test too).
    pairs = df.groupby(["genres", "moods", "split"]).size().unstack(fill_value=0)
    assert len(pairs) == len(SMALL.genres) * len(SMALL.moods)
    assert (pairs["train"] == 1).all() and (pairs["test"] == 1).all()


def test_files_decode_in_every_format(small_set: Path) -> None:
    df = pd.read_csv(small_set)
    extensions = df["uri"].str.rsplit(".", n=1).str[1]
    assert set(extensions) == {"wav", "flac", "mp3"}
    for uri in df["uri"]:
        audio, sr = sf.read(small_set.parent / uri, dtype="float32")
        assert sr == SMALL.sample_rate
        assert audio.ndim == 1
        assert abs(len(audio) / sr - SMALL.duration_s) < 0.05
        peak = np.abs(audio).max()
        assert 0.1 < peak <= 10 ** (PEAK_CEILING_DB / 20) + 1e-4  # audible, never clipping
        assert 20 * np.log10(np.sqrt(np.mean(audio**2))) > -45  # far above silence


def test_default_split_counts() -> None:
    assert DemoConfig().split_counts() == (5, 1, 2)
    assert DemoConfig().num_tracks == 96
    assert DemoConfig(tracks_per_pair=1).split_counts() == (1, 0, 0)
    assert DemoConfig(tracks_per_pair=3).split_counts() == (1, 1, 1)
    with pytest.raises(ValueError):
        DemoConfig(genres=("polka",))
    with pytest.raises(ValueError):
        DemoConfig(formats=("wav", "wav"))


def test_deterministic_for_a_seed(small_set: Path, tmp_path: Path) -> None:
    again = make_demo_set(tmp_path / "again", SMALL)
    assert again.read_bytes() == small_set.read_bytes()
    other = make_demo_set(tmp_path / "other", dataclasses.replace(SMALL, seed=1))
    uris = pd.read_csv(small_set)["uri"]
    for uri in uris:
        x, _ = sf.read(small_set.parent / uri)
        np.testing.assert_array_equal(x, sf.read(again.parent / uri)[0])
        assert not np.allclose(x, sf.read(other.parent / uri)[0])


def test_second_call_reuses_the_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DemoConfig(genres=("techno", "folk"), moods=("happy", "sad"), tracks_per_pair=1,
                     duration_s=2.0)
    manifest = make_demo_set(tmp_path, cfg)
    stamp = json.loads((tmp_path / "demo.json").read_text())
    assert stamp["config"]["seed"] == 0 and stamp["config"]["genres"] == ["techno", "folk"]
    assert DemoConfig.from_dict(stamp["config"]) == cfg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio", "demo.json", "manifest.csv"]

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated a demo set that was already complete")

    monkeypatch.setattr(demo, "render_track", fail)
    assert make_demo_set(str(tmp_path), cfg) == manifest
    monkeypatch.undo()

    # A different config, or a set left without its manifest, is generated again.
    changed = make_demo_set(tmp_path, dataclasses.replace(cfg, seed=3))
    assert json.loads((tmp_path / "demo.json").read_text())["config"]["seed"] == 3
    manifest.unlink()
    assert make_demo_set(tmp_path, dataclasses.replace(cfg, seed=3)) == changed
    assert changed.exists()


def _features(y: np.ndarray, sr: int) -> np.ndarray:
    """Brightness, noisiness, level, low-end share and onset/periodicity statistics."""
    spec = np.abs(librosa.stft(y, n_fft=1024, hop_length=512))
    rms = librosa.feature.rms(S=spec, frame_length=1024)[0]
    onset = librosa.onset.onset_strength(S=librosa.amplitude_to_db(spec), sr=sr)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=1024)
    autocorr = librosa.autocorrelate(onset - onset.mean())
    autocorr = autocorr / (autocorr[0] + 1e-9)
    lags = [autocorr[int(round(60 / bpm * sr / 512))] for bpm in (128, 110, 90, 64)]
    return np.array([
        np.log(librosa.feature.spectral_centroid(S=spec, sr=sr).mean()),
        np.log(librosa.feature.spectral_flatness(S=spec).mean() + 1e-9),
        20 * np.log10(rms.mean() + 1e-9),
        rms.std() / (rms.mean() + 1e-9),
        (spec[freqs < 150].sum(0) / (spec.sum(0) + 1e-9)).mean(),
        np.log(onset.mean() + 1e-9),
        onset.std() / (onset.mean() + 1e-9),
        *lags,
    ])


def test_classes_are_separable_by_simple_features(tmp_path: Path) -> None:
    """Guards that genres and moods really differ: a linear model on 11 hand features
    must tag held-out tracks far above chance (1/4 genre, 1/3 mood)."""
    cfg = DemoConfig(tracks_per_pair=4, duration_s=4.0, seed=7)
    manifest = make_demo_set(tmp_path, cfg)
    df = pd.read_csv(manifest)
    x = np.stack([
        _features(sf.read(manifest.parent / uri, dtype="float32")[0], cfg.sample_rate)
        for uri in df["uri"]
    ])
    train = (df["split"] == "train").to_numpy()
    assert (~train).sum() == 24
    for column in ("genres", "moods"):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(x[train], df[column][train])
        accuracy = (clf.predict(x[~train]) == df[column][~train]).mean()
        assert accuracy >= 0.8, (column, accuracy)
