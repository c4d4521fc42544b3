"""MTG-Jamendo builder: fixture TSVs shaped like the release, then the real split-0 metadata."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pytest

from conftest import SHARED
from mgc.datasets.jamendo import JamendoConfig, build_jamendo, read_tsv, split_folder, split_tag
from mgc.io.manifest import read_manifest
from mgc.datasets.splits import assign_folds, assign_splits
from test_datasets_helpers import run_job

JAMENDO = SHARED / "data" / "mtg-jamendo"
HEADER = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"

# family -> split -> rows (metadata fields + tags)
FIXTURE = {
    "genre": {
        "train": [("track_0000214", "artist_000014", "album_000031", "14/214.mp3", "124.6", "genre---punkrock"),
                  ("track_0000215", "artist_000014", "album_000031", "15/215.mp3", "231.0",
                   "genre---punkrock", "genre---rock")],
        "validation": [("track_0000948", "artist_000087", "album_000149", "48/948.mp3", "212.7", "genre---pop")],
        "test": [("track_0001000", "artist_000090", "album_000150", "00/1000.mp3", "180.0",
                  "genre---electronic", "genre---house")],
    },
    "moodtheme": {
        "train": [("track_0000215", "artist_000014", "album_000031", "15/215.mp3", "231.0", "mood/theme---energetic"),
                  ("track_0002000", "artist_000200", "album_000300", "00/2000.mp3", "99.5",
                   "mood/theme---calm", "mood/theme---relaxing")],
        "validation": [("track_0000948", "artist_000087", "album_000149", "48/948.mp3", "212.7", "mood/theme---happy")],
        "test": [("track_0003000", "artist_000300", "album_000400", "00/3000.mp3", "10.0", "mood/theme---dark")],
    },
    "top50tags": {
        "train": [("track_0000215", "artist_000014", "album_000031", "15/215.mp3", "231.0",
                   "genre---rock", "instrument---guitar", "mood/theme---energetic", "instrument---drums")],
        "validation": [("track_0000948", "artist_000087", "album_000149", "48/948.mp3", "212.7", "genre---pop")],
        "test": [("track_0001000", "artist_000090", "album_000150", "00/1000.mp3", "180.0", "instrument---synthesizer")],
    },
}


def write_tsvs(folder: Path, fixture: dict = FIXTURE) -> Path:
    """One split-N folder of ``autotagging_<family>-<split>.tsv`` files, CRLF line ends."""
    folder.mkdir(parents=True, exist_ok=True)
    for family, splits in fixture.items():
        for split, rows in splits.items():
            lines = [HEADER] + ["\t".join(row) for row in rows]
            (folder / f"autotagging_{family}-{split}.tsv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return folder


@pytest.fixture
def splits_dir(tmp_path) -> Path:
    """``splits/split-0`` as the mtg-jamendo repo has it, plus a different ``split-1``."""
    write_tsvs(tmp_path / "splits" / "split-0")
    other = {"genre": {s: [] for s in ("train", "validation", "test")}}
    other["genre"]["test"] = [FIXTURE["genre"]["train"][0]]
    write_tsvs(tmp_path / "splits" / "split-1", other)
    return tmp_path / "splits"


def build(splits_dir: Path, subset: str, **kw) -> pd.DataFrame:
    return build_jamendo(JamendoConfig(str(splits_dir), "s3://bucket/jamendo", subset=subset, **kw)).manifest


def test_read_tsv_variable_tag_columns_and_crlf(splits_dir):
    records = read_tsv(str(splits_dir / "split-0" / "autotagging_top50tags-train.tsv"))
    assert records[0]["PATH"] == "15/215.mp3"
    assert records[0]["tags"] == ["genre---rock", "instrument---guitar", "mood/theme---energetic", "instrument---drums"]
    assert split_tag("mood/theme---happy") == ("moods", "happy")
    with pytest.raises(ValueError, match="prefix"):
        split_tag("decade---80s")


def test_genre_subset(splits_dir):
    df = build(splits_dir, "genre").set_index("track_id")
    assert len(df) == 4
    row = df.loc["track_0000215"]
    assert row["genres"] == ["punkrock", "rock"] and row["moods"] == []
    assert row["uri"] == "s3://bucket/jamendo/15/215.mp3"
    assert row["artist_id"] == "artist_000014" and row["album_id"] == "album_000031"
    assert row["duration_s"] == 231.0 and row["split"] == "train"
    assert df.loc["track_0000948", "split"] == "validation"
    assert "instruments" not in df.columns


def test_moodtheme_and_low_quality_suffix(splits_dir):
    df = build(splits_dir / "split-0", "moodtheme", audio_suffix=".low.mp3").set_index("track_id")
    assert df.loc["track_0002000", "moods"] == ["calm", "relaxing"]
    assert df.loc["track_0002000", "uri"] == "s3://bucket/jamendo/00/2000.low.mp3"
    assert df["genres"].map(len).sum() == 0


def test_top50_sorts_tags_into_columns(splits_dir):
    df = build(splits_dir, "top50tags").set_index("track_id")
    row = df.loc["track_0000215"]
    assert row["genres"] == ["rock"] and row["moods"] == ["energetic"]
    assert row["instruments"] == ["guitar", "drums"]
    assert df.loc["track_0000948", "instruments"] == []


def test_genre_plus_moodtheme_unites_tracks(splits_dir):
    df = build(splits_dir, "genre+moodtheme").set_index("track_id")
    assert len(df) == 6
    assert df.loc["track_0000215", "genres"] == ["punkrock", "rock"]
    assert df.loc["track_0000215", "moods"] == ["energetic"]
    assert df.loc["track_0003000", "genres"] == [] and df.loc["track_0003000", "moods"] == ["dark"]


def test_split_number_and_conflicts(splits_dir, tmp_path):
    df = build(splits_dir, "genre", split=1)
    assert df["split"].tolist() == ["test"]
    with pytest.raises(ValueError, match="not split 0"):
        split_folder(str(splits_dir / "split-1"), 0)
    # the same track in train for genre, test for moods: dropped, not on both sides
    fixture = {family: {s: list(rows) for s, rows in splits.items()} for family, splits in FIXTURE.items()}
    fixture["moodtheme"]["test"].append(FIXTURE["genre"]["train"][0][:5] + ("mood/theme---sad",))
    folder = write_tsvs(tmp_path / "conflict" / "split-0", fixture)
    result = build_jamendo(JamendoConfig(str(folder), "/a", subset="genre+moodtheme"))
    assert result.dropped == {"in different splits across subsets": ("track_0000214",)}
    assert "track_0000214" not in set(result.manifest["track_id"])


def test_job_writes_instruments_pipe_joined(splits_dir, tmp_path):
    output = tmp_path / "top50.csv"
    assert run_job("jamendo", splits_dir, "--audio", "/music", "--subset", "top50tags", "--output", output) == 0
    text = output.read_text()
    assert "guitar|drums" in text
    df = read_manifest(str(output)).set_index("track_id")
    assert df.loc["track_0000215", "uri"] == "/music/15/215.mp3"
    assert df.loc["track_0000215", "instruments"] == "guitar|drums"


# ------------------------------------------------------------------- real metadata

REAL_COUNTS = {
    # subset: (train, validation, test, {column: distinct tags})
    "genre": (32572, 11043, 11479, {"genres": 87}),
    "moodtheme": (9949, 3802, 4231, {"moods": 56}),
    "top50tags": (32136, 10888, 11356, {"genres": 31, "moods": 5, "instruments": 14}),
    "genre+moodtheme": (32711, 11078, 11551, {"genres": 87, "moods": 56}),
}


@functools.cache
def real_manifest(subset: str) -> pd.DataFrame:
    """The real split-0 manifest of ``subset`` (built once per test session)."""
    if not (JAMENDO / "split-0").is_dir():
        pytest.skip(f"{JAMENDO} is not present")
    return build_jamendo(JamendoConfig(str(JAMENDO), "/jamendo", subset=subset, split=0)).manifest


@pytest.mark.parametrize("subset", list(REAL_COUNTS))
def test_real_split0_counts(subset):
    df = real_manifest(subset)
    train, validation, test, tags = REAL_COUNTS[subset]
    assert df["split"].value_counts().to_dict() == {"train": train, "validation": validation, "test": test}
    for column, n in tags.items():
        assert len({tag for labels in df[column] for tag in labels}) == n, column
    assert df.groupby("artist_id")["split"].nunique().max() == 1, "official split leaks an artist"
    assert df["uri"].str.match(r"^/jamendo/\d+/\d+\.mp3$").all()


def test_real_regrouped_split_and_folds_keep_artists_apart():
    """Our own split of the real genre metadata: grouped by 3,546 artists, 87 tags kept."""
    df = real_manifest("genre").drop(columns="split")
    out = assign_folds(assign_splits(df, seed=0), 5, seed=0)
    assert out.groupby("artist_id")["split"].nunique().max() == 1
    assert out[out["fold"] >= 0].groupby("artist_id")["fold"].nunique().max() == 1
    shares = out["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.02 and abs(shares["test"] - 0.15) < 0.02
    for split in ("validation", "test"):
        assert len({tag for tags in out.loc[out["split"] == split, "genres"] for tag in tags}) >= 85
