"""FMA builder on fixture metadata shaped like FMA's (two header rows), local and on S3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgc.io import storage
from mgc.datasets.fma import FmaConfig, audio_path, build_fma
from mgc.io.manifest import read_manifest
from test_datasets_helpers import run_job, touch

# genres.csv as FMA ships it: genre_id, #tracks, parent, title, top_level.
GENRES = [
    (10, 13845, 0, "Pop", 10),
    (12, 32923, 0, "Rock", 12),
    (17, 12706, 0, "Folk", 17),
    (21, 8389, 0, "Hip-Hop", 21),
    (25, 9261, 12, "Punk", 12),
    (76, 1234, 10, "Experimental Pop", 10),
    (103, 1245, 17, "Singer-Songwriter", 17),
]

# track_id: (subset, split, genre_top, genres, genres_all, artist_id, duration)
TRACKS = {
    2: ("small", "training", "Hip-Hop", "[21]", "[21]", 1, 168),
    3: ("medium", "training", "Hip-Hop", "[21]", "[21]", 1, 237),
    5: ("small", "test", "Hip-Hop", "[21]", "[21]", 1, 206),
    10: ("small", "validation", "Pop", "[10]", "[10]", 6, 161),
    20: ("large", "training", np.nan, "[76, 103]", "[17, 10, 76, 103]", 4, 311),
    134: ("medium", "test", "Hip-Hop", "[21]", "[21]", 1, 207),
    1024: ("small", "training", "Rock", "[25]", "[12, 25]", 52, 92),
    99999: ("large", "validation", np.nan, "[]", "[]", 24000, 60),
}


def write_fma_metadata(folder: Path) -> Path:
    """``tracks.csv`` (columns under album/artist/set/track, two header rows) and ``genres.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = pd.MultiIndex.from_tuples([
        ("album", "id"), ("album", "title"),
        ("artist", "id"), ("artist", "name"),
        ("set", "split"), ("set", "subset"),
        ("track", "duration"), ("track", "genre_top"), ("track", "genres"),
        ("track", "genres_all"), ("track", "title"),
    ])
    rows = [
        [tid * 10, f"Album {tid}", artist, f"Artist {artist}", split, subset, duration,
         top, genres, genres_all, f"Track {tid}"]
        for tid, (subset, split, top, genres, genres_all, artist, duration) in TRACKS.items()
    ]
    tracks = pd.DataFrame(rows, columns=columns, index=pd.Index(list(TRACKS), name="track_id"))
    tracks.to_csv(folder / "tracks.csv")
    genres = pd.DataFrame(GENRES, columns=["genre_id", "#tracks", "parent", "title", "top_level"])
    genres.to_csv(folder / "genres.csv", index=False)
    return folder


@pytest.fixture
def metadata(tmp_path) -> Path:
    return write_fma_metadata(tmp_path / "fma_metadata")


def test_fixture_has_fma_header_rows(metadata):
    lines = (metadata / "tracks.csv").read_text().splitlines()
    assert lines[0].startswith(",album,album,artist")
    assert lines[1].startswith(",id,title,id")
    assert lines[2].startswith("track_id,")


def test_audio_path_layout():
    assert audio_path(2) == "000/000002.mp3"
    assert audio_path(155066) == "155/155066.mp3"


@pytest.mark.parametrize(
    ("subset", "expected"),
    [("small", {2, 5, 10, 1024}), ("medium", {2, 3, 5, 10, 134, 1024}),
     ("large", {2, 3, 5, 10, 134, 1024}), ("full", {2, 3, 5, 10, 134, 1024})],
)
def test_subsets_nest_and_top_labels(metadata, subset, expected):
    build = build_fma(FmaConfig(str(metadata), "/data/fma_audio", subset=subset, labels="top"))
    df = build.manifest.set_index("track_id")
    assert {int(t) for t in df.index} == expected
    if subset in ("large", "full"):
        assert build.dropped == {"no genre_top": ("000020", "099999")}
    row = df.loc["001024"]
    assert row["uri"] == "/data/fma_audio/001/001024.mp3"
    assert row["genres"] == ["Rock"] and row["split"] == "train"
    assert row["artist_id"] == "52" and row["duration_s"] == 92.0
    assert df.loc["000010", "split"] == "validation" and df.loc["000005", "split"] == "test"


def test_all_labels_are_titles_of_genres_all(metadata):
    build = build_fma(FmaConfig(str(metadata), "/a", subset="full", labels="all"))
    df = build.manifest.set_index("track_id")
    assert df.loc["000020", "genres"] == ["Folk", "Pop", "Experimental Pop", "Singer-Songwriter"]
    assert df.loc["001024", "genres"] == ["Rock", "Punk"]
    assert build.dropped == {"no genres_all": ("099999",)}


def test_bad_options_and_unknown_genre(metadata):
    with pytest.raises(ValueError, match="subset"):
        build_fma(FmaConfig(str(metadata), "/a", subset="tiny"))
    with pytest.raises(ValueError, match="labels"):
        build_fma(FmaConfig(str(metadata), "/a", labels="leaf"))
    genres = pd.read_csv(metadata / "genres.csv")
    genres[genres["genre_id"] != 25].to_csv(metadata / "genres.csv", index=False)
    with pytest.raises(ValueError, match=r"\[25\]"):
        build_fma(FmaConfig(str(metadata), "/a", labels="all"))


def test_job_with_folds_keeps_official_test(metadata, tmp_path, capsys):
    output = tmp_path / "fma.jsonl"
    assert run_job("fma", metadata, "--audio", tmp_path / "audio", "--subset", "medium",
                   "--folds", "2", "--output", output) == 0
    df = read_manifest(str(output))
    assert len(df) == 6
    assert (df.loc[df["split"] == "test", "fold"] == -1).all()
    cv = df[df["split"] != "test"]
    assert cv.groupby("artist_id")["fold"].nunique().max() == 1
    assert "6 tracks" in capsys.readouterr().out


def test_audio_and_output_on_s3_with_check_files(metadata, s3_bucket, capsys):
    bucket = f"s3://{s3_bucket}"
    for name in ("tracks.csv", "genres.csv"):
        storage.write_bytes(f"{bucket}/fma_metadata/{name}", (metadata / name).read_bytes())
    present = (2, 5, 10)  # 1024 has no audio: dropped by --check-files
    for tid in present:
        storage.write_bytes(f"{bucket}/fma_small/{audio_path(tid)}", b"ID3 stand-in")
    output = f"{bucket}/manifests/fma_small.parquet"
    assert run_job("fma", f"{bucket}/fma_metadata", "--audio", f"{bucket}/fma_small/",
                   "--output", output, "--check-files", "--check-workers", "4") == 0
    printed = capsys.readouterr().out
    df = read_manifest(output)
    assert sorted(df["track_id"]) == ["000002", "000005", "000010"]
    assert df["uri"].tolist() == [f"{bucket}/fma_small/{audio_path(t)}" for t in present]
    assert f"dropped 1 (audio file not found): {bucket}/fma_small/001/001024.mp3" in printed


def test_check_files_local(metadata, tmp_path):
    from mgc.datasets import check_files

    build = build_fma(FmaConfig(str(metadata), str(tmp_path / "audio"), subset="small"))
    touch(tmp_path / "audio", [audio_path(2), audio_path(10)])
    checked = check_files(build, workers=2)
    assert sorted(checked.manifest["track_id"]) == ["000002", "000010"]
    assert len(checked.dropped["audio file not found"]) == 2
