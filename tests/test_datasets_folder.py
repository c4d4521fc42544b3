"""Folder builder: labels from sub-folders, flat catalogs, and a folder on S3."""

from __future__ import annotations

import pytest

from mgc.io import storage
from mgc.datasets import FinishConfig, finish, summary
from mgc.datasets.folder import FolderConfig, build_folder
from mgc.io.manifest import read_manifest
from test_datasets_helpers import run_job, touch


def test_subfolders_are_labels(tmp_path):
    touch(tmp_path, ["calm/a.wav", "calm/live/b.flac", "tense/c.mp3", "tense/d.MP3", "loose.ogg",
                     "tense/notes.txt", ".hidden/e.wav"])
    df = build_folder(FolderConfig(str(tmp_path), task="mood")).manifest.set_index("track_id")
    assert sorted(df.index) == ["calm/a", "calm/live/b", "loose", "tense/c", "tense/d"]
    assert df.loc["calm/live/b", "moods"] == ["calm"]
    assert df.loc["tense/d", "uri"] == str(tmp_path / "tense" / "d.MP3")
    assert df.loc["loose", "moods"] == []  # beside labeled folders: unlabeled
    assert df["genres"].map(len).sum() == 0


def test_flat_folder_is_an_unlabeled_catalog(tmp_path):
    touch(tmp_path, ["x.wav", "x.mp3", "y.flac"])
    build = finish(build_folder(FolderConfig(str(tmp_path))), FinishConfig(random_split=True))
    df = build.manifest
    assert sorted(df["track_id"]) == ["x.mp3", "x.wav", "y"]  # clashing stems keep extensions
    assert df["genres"].map(len).sum() == 0 and "split" not in df.columns
    nested = build_folder(FolderConfig(str(tmp_path), task="none")).manifest
    assert nested["genres"].map(len).sum() == 0
    with pytest.raises(ValueError, match="task"):
        build_folder(FolderConfig(str(tmp_path), task="tempo"))
    with pytest.raises(FileNotFoundError):
        build_folder(FolderConfig(str(tmp_path / "absent")))


def test_job_random_split_and_summary(tmp_path, capsys):
    touch(tmp_path / "music", [f"{g}/{i}.wav" for g in ("rock", "jazz") for i in range(10)])
    output = tmp_path / "m.tsv"
    assert run_job("folder", tmp_path / "music", "--output", output, "--fractions", "0.6", "0.2", "0.2") == 0
    df = read_manifest(str(output))
    assert df["split"].value_counts().to_dict() == {"train": 12, "validation": 4, "test": 4}
    assert "genres: 2 labels on 20 tracks" in capsys.readouterr().out


def test_folder_on_s3(s3_bucket, capsys):
    root = f"s3://{s3_bucket}/music"
    for relative in ("rock/a.mp3", "rock/b.mp3", "jazz/c.wav", "jazz/notes.txt"):
        storage.write_bytes(f"{root}/{relative}", b"stand-in")
    build = build_folder(FolderConfig(root + "/"))
    df = build.manifest.set_index("track_id")
    assert sorted(df.index) == ["jazz/c", "rock/a", "rock/b"]
    assert df.loc["jazz/c", "uri"] == f"{root}/jazz/c.wav" and df.loc["jazz/c", "genres"] == ["jazz"]
    storage.filesystem_for(root)[0].rm(f"{s3_bucket}/music/rock/b.mp3")
    checked = finish(build, FinishConfig(check_files=True, check_workers=3))
    assert sorted(checked.manifest["track_id"]) == ["jazz/c", "rock/a"]
    assert "dropped 1 (audio file not found)" in summary(checked)
