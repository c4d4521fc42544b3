"""GTZAN builder: fixture layout, the fault-filtered split, and the real gtzan-mini clips."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import GTZAN_MINI, SHARED
from mgc.datasets import FinishConfig, finish
from mgc.datasets.gtzan import (
    ABSENT,
    DUPLICATE,
    MISPLACED,
    UNLISTED,
    GtzanConfig,
    build_gtzan,
    read_split_files,
)
from mgc.io.manifest import read_manifest
from test_datasets_helpers import run_job, touch

GTZAN_SPLITS = SHARED / "data" / "gtzan-splits"
GENRES = ("blues", "jazz", "rock")


@pytest.fixture
def gtzan_root(tmp_path) -> Path:
    """10 clips per genre as GTZAN lays them out, plus the oddities of real copies."""
    root = tmp_path / "genres"
    touch(root, [f"{g}/{g}.{i:05d}.wav" for g in GENRES for i in range(10)])
    touch(root, ["rock/rock.00003.au",  # same clip twice: the .wav wins
                 "jazz/rock.00042.wav",  # in the wrong folder
                 "blues/.DS_Store", "blues/._blues.00001.wav", "README.txt"])
    return root


@pytest.fixture
def split_dir(tmp_path) -> Path:
    """Filtered-split files listing some fixture clips (CRLF, blank line, one absent clip)."""
    folder = tmp_path / "splits"
    folder.mkdir()
    lists = {
        "train_filtered.txt": [f"{g}/{g}.{i:05d}.wav" for g in GENRES for i in range(0, 5)],
        "valid_filtered.txt": [f"{g}/{g}.{i:05d}.wav" for g in GENRES for i in range(5, 7)],
        "test_filtered.txt": [f"{g}/{g}.{i:05d}.wav" for g in GENRES for i in range(7, 9)] + ["pop/pop.00001.wav"],
    }
    for name, lines in lists.items():
        (folder / name).write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    return folder


def test_layout_labels_and_drops(gtzan_root):
    build = build_gtzan(GtzanConfig(str(gtzan_root)))
    df = build.manifest
    assert len(df) == 30 and "split" not in df.columns and "artist_id" not in df.columns
    row = df.set_index("track_id").loc["rock.00003"]
    assert row["uri"] == str(gtzan_root / "rock" / "rock.00003.wav")
    assert row["genres"] == ["rock"]
    assert sorted(df["genres"].map(tuple).map(lambda g: g[0]).unique()) == list(GENRES)
    assert build.dropped == {MISPLACED: ("jazz/rock.00042.wav",), DUPLICATE: ("rock/rock.00003.au",)}


def test_au_only_copy(tmp_path):
    touch(tmp_path, [f"{g}/{g}.{i:05d}.au" for g in GENRES for i in range(3)])
    df = build_gtzan(GtzanConfig(str(tmp_path))).manifest
    assert len(df) == 9 and df["uri"].str.endswith(".au").all()


def test_random_split_is_stratified(gtzan_root):
    build = finish(build_gtzan(GtzanConfig(str(gtzan_root))),
                   FinishConfig(random_split=True, fractions=(0.6, 0.2, 0.2), seed=0))
    df = build.manifest
    per = df.assign(genre=df["genres"].map(lambda g: g[0])).groupby(["split", "genre"]).size()
    assert (per.loc["test"] == 2).all() and (per.loc["validation"] == 2).all()


def test_filtered_split_from_files(gtzan_root, split_dir):
    build = build_gtzan(GtzanConfig(str(gtzan_root), split_dir=str(split_dir)))
    df = build.manifest.set_index("track_id")
    assert len(df) == 27
    assert df.loc["jazz.00000", "split"] == "train"
    assert df.loc["jazz.00005", "split"] == "validation"  # valid_filtered.txt
    assert df.loc["rock.00008", "split"] == "test"
    assert set(build.dropped[UNLISTED]) == {f"{g}.00009" for g in GENRES}
    assert build.dropped[ABSENT] == ("pop.00001",)


def test_clip_in_two_split_files_is_refused(split_dir):
    with open(split_dir / "test_filtered.txt", "a") as handle:
        handle.write("blues/blues.00000.wav\n")
    with pytest.raises(ValueError, match="two split files"):
        read_split_files(str(split_dir))


def test_real_filtered_split_files():
    if not GTZAN_SPLITS.is_dir():
        pytest.skip(f"{GTZAN_SPLITS} is not present")
    assignment = read_split_files(str(GTZAN_SPLITS))
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in ("train", "validation", "test")}
    assert counts == {"train": 443, "validation": 197, "test": 290}
    assert len(assignment) == 930


def test_gtzan_mini_manifest_by_job(gtzan_mini, tmp_path, capsys):
    if not GTZAN_SPLITS.is_dir():
        pytest.skip(f"{GTZAN_SPLITS} is not present")
    output = tmp_path / "gtzan-mini.csv"
    assert run_job("gtzan", GTZAN_MINI, "--split-dir", GTZAN_SPLITS, "--output", output, "--check-files") == 0
    printed = capsys.readouterr().out
    df = read_manifest(str(output))
    assert len(df) == 93 and df["genres"].map(len).eq(1).all()
    assert df["split"].value_counts().to_dict() == {"validation": 51, "train": 38, "test": 4}
    assert df["uri"].map(lambda u: Path(u).is_file()).all()
    assert "93 tracks" in printed and f"dropped 7 ({UNLISTED})" in printed

    output = tmp_path / "gtzan-mini-cv.parquet"
    assert run_job("gtzan", GTZAN_MINI, "--output", output, "--folds", "5", "--seed", "1") == 0
    df = read_manifest(str(output))
    assert len(df) == 100 and set(df["fold"]) == {-1, 0, 1, 2, 3, 4}
    assert df["split"].value_counts().to_dict() == {"train": 70, "validation": 15, "test": 15}
