"""Tests for mgc.io.manifest: formats, normalisation, refusal with row numbers, S3."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mgc.io import uris as mf
from mgc.io.manifest import read_manifest, write_manifest
from mgc.io.validate import ManifestError, validate_manifest
from mgc.labels import infer_task_type, label_vocabulary

CONTRACT = ["track_id", "uri", "split", "genres", "moods", "artist_id", "duration_s"]


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "track_id": ["0001", "0002", "a b", "NA"],
            "uri": ["/audio/1.wav", "s3://bucket/x/2.mp3", "file:///audio/3.flac", "/4.ogg"],
            "split": ["train", "validation", "test", None],
            "genres": [["rock"], ["jazz", "blues"], [], ["hip-hop"]],
            "moods": [[], ["calm"], ["happy", "dark"], []],
            "artist_id": ["007", None, "x", "y"],
            "duration_s": [30.0, 12.345678901234567, math.nan, 0.5],
            "extra": ["e1", "e2", "e3", "e4"],
        }
    )


def assert_same_contract(got: pd.DataFrame, want: pd.DataFrame) -> None:
    for column in CONTRACT:
        g, w = list(got[column]), list(want[column])
        if column == "duration_s":
            assert len(g) == len(w)
            for a, b in zip(g, w):
                assert (math.isnan(a) and math.isnan(b)) or a == b, (column, g, w)
        else:
            assert g == w, (column, g, w)
            assert all(type(x) is type(y) for x, y in zip(g, w)), column


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "name", ["m.parquet", "m.pq", "m.csv", "m.tsv", "m.tab", "m.jsonl", "m.ndjson", "m.csv.gz",
             "m.jsonl.bz2", "m.tsv.xz"]
)
def test_round_trip_is_lossless(tmp_path: Path, name: str) -> None:
    want = validate_manifest(sample_frame())
    uri = str(tmp_path / "sub" / name)
    write_manifest(sample_frame(), uri)
    got = read_manifest(uri)
    assert_same_contract(got, want)
    assert list(got.columns[: len(CONTRACT)]) == CONTRACT
    assert list(got["extra"]) == ["e1", "e2", "e3", "e4"]
    assert list(got["track_id"]) == ["0001", "0002", "a b", "NA"]
    # Written atomically: no temp files left beside the manifest.
    assert os.listdir(tmp_path / "sub") == [name]


def test_csv_pipe_lists_and_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "track_id,uri,genres,moods,artist_id,duration_s\n"
        "0001,/a.wav, rock | pop ,,00042,29.5\n"
        "0002,/b.wav,jazz,happy|happy|calm|,,\n"
        "10,/c.wav,,,,\n"
    )
    df = read_manifest(str(path))
    assert list(df["track_id"]) == ["0001", "0002", "10"]
    assert list(df["genres"]) == [["rock", "pop"], ["jazz"], []]
    assert list(df["moods"]) == [[], ["happy", "calm"], []]
    assert list(df["artist_id"]) == ["00042", None, None]
    assert df["duration_s"].iloc[0] == 29.5 and math.isnan(df["duration_s"].iloc[1])
    assert "split" not in df.columns


def test_csv_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(
        b"\xef\xbb\xbftrack_id,uri,split,genres\r\n"
        b"t1,/a.wav,train,rock|pop\r\n"
        b"t2,/b.wav,VALID,jazz\r\n"
    )
    df = read_manifest(str(path))
    assert list(df.columns[:2]) == ["track_id", "uri"]
    assert list(df["uri"]) == ["/a.wav", "/b.wav"]
    assert list(df["split"]) == ["train", "validation"]
    assert list(df["genres"]) == [["rock", "pop"], ["jazz"]]


def test_jsonl_keeps_json_types(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"track_id": "0001", "uri": "/a.wav", "genres": ["rock", " pop "]}\n'
        "\n"
        '{"track_id": 2, "uri": "/b.wav", "genres": "jazz|blues", "artist_id": 17}\n'
    )
    df = read_manifest(str(path))
    assert list(df["track_id"]) == ["0001", "2"]
    assert list(df["genres"]) == [["rock", "pop"], ["jazz", "blues"]]
    assert list(df["artist_id"]) == [None, "17"]


def test_parquet_with_numeric_ids(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    pd.DataFrame(
        {"track_id": [1, 2], "uri": ["/a", "/b"], "artist_id": [5.0, np.nan],
         "genres": [np.array(["x"]), None]}
    ).to_parquet(path)
    df = read_manifest(str(path))
    assert list(df["track_id"]) == ["1", "2"]
    assert list(df["artist_id"]) == ["5", None]
    assert list(df["genres"]) == [["x"], []]
    assert list(df["moods"]) == [[], []]


def test_validate_normalises_without_touching_input() -> None:
    raw = pd.DataFrame(
        {"track_id": [" a ", "b"], "uri": [" /x.wav", "/y.wav"], "split": ["Val", " TEST "]},
        index=[10, 20],
    )
    before = raw.copy()
    df = validate_manifest(raw)
    pd.testing.assert_frame_equal(raw, before)
    assert list(df.index) == [0, 1]
    assert list(df["track_id"]) == ["a", "b"]
    assert list(df["uri"]) == ["/x.wav", "/y.wav"]
    assert list(df["split"]) == ["validation", "test"]
    assert list(df["genres"]) == [[], []] and list(df["moods"]) == [[], []]


# ---------------------------------------------------------------- refusals


def _write_csv(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return str(path)


def test_duplicate_ids_name_rows(tmp_path: Path) -> None:
    uri = _write_csv(tmp_path, "track_id,uri\na,/1\n0002,/2\nc,/3\n0002,/4\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(uri)
    (problem,) = info.value.problems
    assert "duplicate track_id at rows 2, 4" in problem and "'0002'" in problem
    message = str(info.value)
    assert uri in message and "numbered from 1" in message and "header" in message


def test_empty_uri_and_empty_id_name_rows(tmp_path: Path) -> None:
    uri = _write_csv(tmp_path, "track_id,uri\na,/1\nb,\nc,   \n,/4\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(uri)
    problems = info.value.problems
    assert "empty uri at rows 2, 3" in problems
    assert "empty track_id at rows 4" in problems


def test_missing_column_named_with_columns_found(tmp_path: Path) -> None:
    uri = _write_csv(tmp_path, "track_id,path\na,/1\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(uri)
    (problem,) = info.value.problems
    assert "'uri'" in problem and "'track_id', 'path'" in problem


def test_bad_split_names_rows_and_values(tmp_path: Path) -> None:
    uri = _write_csv(
        tmp_path, "track_id,uri,split\na,/1,train\nb,/2,training\nc,/3,\nd,/4,dev\ne,/5,val\n"
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(uri)
    (problem,) = info.value.problems
    assert "rows 2, 4" in problem and "'training'" in problem and "'dev'" in problem


def test_bad_duration_names_rows() -> None:
    df = pd.DataFrame({"track_id": ["a", "b", "c"], "uri": ["/1", "/2", "/3"],
                       "duration_s": ["3.5", "long", "-1"]})
    with pytest.raises(ManifestError) as info:
        validate_manifest(df)
    assert "rows 2, 3" in info.value.problems[0]


def test_all_problems_reported_at_once_and_capped() -> None:
    n = 30
    df = pd.DataFrame({"track_id": ["same"] * n, "uri": [""] * n, "split": ["nope"] * n})
    with pytest.raises(ManifestError) as info:
        validate_manifest(df, source="mem.csv")
    problems = info.value.problems
    assert len(problems) == 3
    assert all("... and 10 more" in p for p in problems)
    assert "rows 1, 2, 3" in problems[0] and ", 21" not in problems[0].split("(")[0]


def test_manifest_error_pickles() -> None:
    error = ManifestError(["empty uri at rows 3"], "s3://b/m.csv")
    clone = pickle.loads(pickle.dumps(error))
    assert clone.problems == error.problems and str(clone) == str(error)
    assert isinstance(clone, ValueError)


@pytest.mark.parametrize("name", ["m.txt", "m.json", "m", "m.parquet.gz"])
def test_unknown_extension_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("track_id,uri\na,/1\n")
    with pytest.raises(ManifestError, match="format|compress"):
        read_manifest(str(tmp_path / name))
    with pytest.raises(ManifestError):
        write_manifest(sample_frame(), str(tmp_path / ("out-" + name)))


def test_empty_and_unparseable_files_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("track_id,uri\n")
    (tmp_path / "bad.jsonl").write_text('{"track_id": "a", "uri": "/1"}\nnot json\n[1]\n')
    (tmp_path / "bad.parquet").write_text("not parquet")
    for name in ("empty.csv", "header.csv"):
        with pytest.raises(ManifestError, match="no rows"):
            read_manifest(str(tmp_path / name))
    with pytest.raises(ManifestError) as info:
        read_manifest(str(tmp_path / "bad.jsonl"))
    assert [p.split(" is ")[0] for p in info.value.problems] == ["line 2", "line 3"]
    with pytest.raises(ManifestError, match="parquet"):
        read_manifest(str(tmp_path / "bad.parquet"))
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(str(tmp_path / "missing.csv"))


def test_pipe_inside_label_refused_for_csv_only(tmp_path: Path) -> None:
    df = pd.DataFrame({"track_id": ["a"], "uri": ["/1"], "genres": [["r|b"]]})
    with pytest.raises(ManifestError, match=r"rows 1"):
        write_manifest(df, str(tmp_path / "m.csv"))
    write_manifest(df, str(tmp_path / "m.parquet"))
    assert list(read_manifest(str(tmp_path / "m.parquet"))["genres"]) == [["r|b"]]


# ---------------------------------------------------------------- relative uris


def test_relative_uris_resolve_against_manifest_dir(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "m.csv").write_text(
        "track_id,uri\n"
        "a,audio/a.wav\n"
        "b,./b.wav\n"
        "c,../c.wav\n"
        "d,/abs/d.wav\n"
        "e,s3://bucket/e.wav\n"
        "f,file:///f.wav\n"
    )
    want = [
        str(folder / "audio" / "a.wav"),
        str(folder / "b.wav"),
        str(tmp_path / "c.wav"),
        "/abs/d.wav",
        "s3://bucket/e.wav",
        "file:///f.wav",
    ]
    assert list(read_manifest(str(folder / "m.csv"))["uri"]) == want
    assert list(read_manifest(f"file://{folder}/m.csv")["uri"]) == want
    # A relative manifest path still gives absolute track paths.
    monkeypatch.chdir(tmp_path)
    assert list(read_manifest("set/m.csv")["uri"]) == want


def test_resolve_uri_remote() -> None:
    assert mf.resolve_uri("a/b.wav", "s3://bkt/dir/m.csv") == "s3://bkt/dir/a/b.wav"
    assert mf.resolve_uri("../b.wav", "s3://bkt/dir/m.csv") == "s3://bkt/b.wav"
    assert mf.resolve_uri("b.wav", "s3://bkt/m.csv") == "s3://bkt/b.wav"
    assert mf.resolve_uri("gs://o/b.wav", "s3://bkt/m.csv") == "gs://o/b.wav"


# ---------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([["rock"], ["jazz"], [], ["rock"]], "multiclass"),
        ([["rock"], ["jazz", "blues"]], "multilabel"),
        ([[], ["happy", "calm"], None], "multilabel"),
        ([["a", "a"], ["b"]], "multiclass"),  # a repeated label is one label
        (pd.Series([np.array(["x"]), np.array([], dtype=object)]), "multiclass"),
    ],
)
def test_infer_task_type(labels, expected: str) -> None:
    assert infer_task_type(labels) == expected


def test_infer_task_type_without_labels_raises() -> None:
    with pytest.raises(ValueError):
        infer_task_type([[], [], None])
    with pytest.raises(ValueError):
        infer_task_type([])


def test_label_vocabulary_sorted_unique() -> None:
    assert label_vocabulary([["rock", "pop"], [], ["jazz", "rock"], None]) == [
        "jazz", "pop", "rock"
    ]
    assert label_vocabulary([]) == []


# ---------------------------------------------------------------- S3 (moto server)


@pytest.fixture
def s3_prefix(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}"


@pytest.mark.parametrize("name", ["m.parquet", "m.csv", "m.jsonl"])
def test_s3_round_trip_and_relative_uris(s3_prefix: str, name: str) -> None:
    uri = f"{s3_prefix}/manifests/{name}"
    write_manifest(sample_frame(), uri)
    # sample_frame names local paths and another bucket: a remote manifest needs both allowed.
    open_policy = {"allow_local": True, "allow_other_buckets": True}
    assert_same_contract(read_manifest(uri, **open_policy), validate_manifest(sample_frame()))

    rel = sample_frame().assign(uri=["a.wav", "audio/b.wav", "../c.wav", "/abs/d.wav"])
    write_manifest(rel, uri)
    assert list(read_manifest(uri, allow_local=True)["uri"]) == [
        f"{s3_prefix}/manifests/a.wav",
        f"{s3_prefix}/manifests/audio/b.wav",
        f"{s3_prefix}/c.wav",
        "/abs/d.wav",
    ]
    with pytest.raises(ManifestError, match=r"local paths in a remote manifest at rows 4 "):
        read_manifest(uri)


def test_remote_manifest_uris_stay_in_its_bucket(s3_prefix: str) -> None:
    uri = f"{s3_prefix}/manifests/m.csv"
    bucket = s3_prefix.split("/")[2]
    rows = sample_frame().assign(uri=["a.wav", f"../../{bucket}-other/x.wav", "s3://elsewhere/y.wav", "/dev/zero"])
    write_manifest(rows, uri)
    with pytest.raises(ManifestError) as info:
        read_manifest(uri)
    problems = info.value.problems
    assert any(p.startswith("local paths in a remote manifest at rows 4 ") for p in problems), problems
    assert any(p.startswith(f"uris outside the manifest's bucket s3://{bucket}/ at rows 2, 3 ") for p in problems)
    assert read_manifest(uri, allow_local=True, allow_other_buckets=True)["uri"][1] == f"s3://{bucket}-other/x.wav"


def test_s3_bad_manifest_refused(s3_prefix: str) -> None:
    from mgc.io import storage

    uri = f"{s3_prefix}/bad.tsv"
    storage.write_bytes(uri, b"track_id\turi\nx\t/1\nx\t\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(uri)
    assert info.value.problems == [
        "duplicate track_id at rows 1, 2 ('x' at rows 1, 2)",
        "empty uri at rows 2",
    ]
