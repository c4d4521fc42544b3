"""Tests for mgc.io.catalog (the Arrow catalog reader), mgc.tagging.plan (the done-set as an
anti-join) and benchmarks/plan_benchmark.py. No Ray.

Where a rule is shared with read_manifest, read_manifest on the same file is the oracle:
same ids and uris, or the same problems with the same row numbers.
"""

from __future__ import annotations

import bz2
import gzip
import inspect
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from mgc.io.catalog import CATALOG_SCHEMA, WHITESPACE, read_catalog
from mgc.io.manifest import read_manifest
from mgc.io.validate import ManifestError
from mgc.tagging.plan import DONE_COLUMNS, partition_rows, untagged


def outcome(read, uri: str, **kwargs):
    """``(ids, uris)`` or ``("error", problems)`` of one reader on one file."""
    try:
        result = read(uri, **kwargs)
    except ManifestError as error:
        return "error", error.problems
    if isinstance(result, pa.Table):
        assert result.schema == CATALOG_SCHEMA
        return result.column("track_id").to_pylist(), result.column("uri").to_pylist()
    return list(result["track_id"]), list(result["uri"])


def manifest_rules_only(uri: str, **kwargs):
    """read_manifest without the remote-locality policy, which read_catalog leaves to its caller."""
    if "allow_local" in inspect.signature(read_manifest).parameters:
        kwargs = {"allow_local": True, "allow_other_buckets": True, **kwargs}
    return read_manifest(uri, **kwargs)


def assert_same_as_read_manifest(uri: str, **kwargs):
    got, want = outcome(read_catalog, uri, **kwargs), outcome(manifest_rules_only, uri, **kwargs)
    assert got == want
    return got


# ---------------------------------------------------------------- good manifests

ROWS = [("0001", " audio/a.wav "), (" 0002", "./b.wav"), ("a b", "../c.wav"), ("NA", "/abs/d.wav"),
        ("5", "s3://bucket/x/e.mp3"), ("6", "file:///f.flac"), ("7", "S3://Bucket/g.mp3"), ("8", "x//y/./z.wav")]


def write_text_manifest(path: Path, fmt: str) -> str:
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        text = f"track_id{sep}uri{sep}genres\n" + "".join(f"{i}{sep}{u}{sep}rock|pop\n" for i, u in ROWS)
    else:
        text = "".join(json.dumps({"track_id": i, "uri": u, "genres": ["rock"]}) + "\n\n" for i, u in ROWS)
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_good_manifest_reads_as_read_manifest_does(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    if fmt == "parquet":
        uri = str(folder / "m.parquet")
        pq.write_table(pa.table({"genres": [["rock"]] * len(ROWS), "track_id": [i for i, _ in ROWS],
                                 "uri": [u for _, u in ROWS], "duration_s": [30.0] * len(ROWS)}), uri)
    else:
        uri = write_text_manifest(folder / f"m.{fmt}", fmt)
    ids, uris = assert_same_as_read_manifest(uri)
    assert ids == ["0001", "0002", "a b", "NA", "5", "6", "7", "8"]  # strings, stripped
    assert uris == [str(folder / "audio" / "a.wav"), str(folder / "b.wav"), str(tmp_path / "c.wav"),
                    "/abs/d.wav", "s3://bucket/x/e.mp3", "file:///f.flac", "S3://Bucket/g.mp3",
                    str(folder / "x" / "y" / "z.wav")]


@pytest.mark.parametrize("name, codec", [("m.csv.gz", gzip), ("m.jsonl.bz2", bz2), ("m.tsv.xz", lzma)])
def test_compressed_text_manifests(tmp_path: Path, name: str, codec) -> None:
    plain = write_text_manifest(tmp_path / "plain", name.split(".")[1])
    (tmp_path / name).write_bytes(codec.compress(Path(plain).read_bytes()))
    ids, _ = assert_same_as_read_manifest(str(tmp_path / name))
    assert ids[:2] == ["0001", "0002"]


def test_relative_manifest_path_and_file_url(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "set").mkdir()
    write_text_manifest(tmp_path / "set" / "m.csv", "csv")
    want = outcome(manifest_rules_only, str(tmp_path / "set" / "m.csv"))
    assert outcome(read_catalog, f"file://{tmp_path}/set/m.csv") == want
    monkeypatch.chdir(tmp_path)
    assert outcome(read_catalog, "set/m.csv") == want


def test_csv_quirks_match_pandas(tmp_path: Path) -> None:
    cases = {
        "bom.csv": b"\xef\xbb\xbftrack_id,uri\r\nt1,/a.wav\r\n\r\nt2,\"/b,c.wav\"\r\n",
        "repeated.csv": b"track_id,track_id,uri\nx,y,/1\n",  # pandas: track_id, track_id.1
        "short_row.csv": b"track_id,uri,genres\n1,/a,rock\n2,/b\n",  # pandas fills the missing field
        "na_text.csv": b"track_id,uri\nNA,null\nnan,/x\n",
        "newline.csv": b"track_id,uri\n\"a\nb\",/x\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert_same_as_read_manifest(str(tmp_path / name))
    assert outcome(read_catalog, str(tmp_path / "na_text.csv"))[0] == ["NA", "nan"]


def test_typed_ids_become_text_as_read_manifest_writes_them(tmp_path: Path) -> None:
    frames = {
        "ints.parquet": {"track_id": [1, 2, 3], "uri": ["/a", "/b", "/c"]},
        "floats.parquet": {"track_id": [1.0, 2.0, 1e15], "uri": ["/a", "/b", "/c"]},
        "fractions.parquet": {"track_id": [1.5, 2.0, 3.25], "uri": ["/a", "/b", "/c"]},
        "bools.parquet": {"track_id": [True, False], "uri": ["/a", "/b"]},
    }
    for name, columns in frames.items():
        pd.DataFrame(columns).to_parquet(tmp_path / name)
        assert_same_as_read_manifest(str(tmp_path / name))
    table = pa.table({"track_id": pa.array(["a", "b"]).dictionary_encode(), "uri": pa.array(["/a", "/b"], pa.large_string())})
    pq.write_table(table, tmp_path / "dictionary.parquet")
    assert assert_same_as_read_manifest(str(tmp_path / "dictionary.parquet"))[0] == ["a", "b"]
    (tmp_path / "numbers.jsonl").write_text('{"track_id": 1, "uri": "/a"}\n{"track_id": 2.0, "uri": "/b"}\n')
    assert assert_same_as_read_manifest(str(tmp_path / "numbers.jsonl"))[0] == ["1", "2"]
    (tmp_path / "mixed.jsonl").write_text('{"track_id": "0001", "uri": "/a"}\n{"track_id": 2, "uri": "/b"}\n'
                                          '{"track_id": true, "uri": "/c", "x": {"y": 1}}\n')
    assert assert_same_as_read_manifest(str(tmp_path / "mixed.jsonl"))[0] == ["0001", "2", "True"]


def test_whitespace_is_what_str_strip_removes() -> None:
    assert set(WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}


def test_http_uris_only_when_allowed(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("track_id,uri\na,https://host/a.mp3\nb,http://host/b.mp3\n")
    uri = str(tmp_path / "m.csv")
    kind, problems = assert_same_as_read_manifest(uri, allow_http=False)
    assert kind == "error" and "at rows 1, 2" in problems[0] and "allow_http" in problems[0]
    _, uris = assert_same_as_read_manifest(uri, allow_http=True)
    assert uris == ["https://host/a.mp3", "http://host/b.mp3"]


# ---------------------------------------------------------------- refusals

BAD_CSV = {
    "duplicates": "track_id,uri\na,/1\n0002,/2\nc,/3\n0002,/4\n a ,/5\n",
    "empties": "track_id,uri\na,/1\nb,\nc,   \n,/4\n",
    "missing_column": "track_id,path\na,/1\n",
    "both_missing": "id,path\na,/1\n",
    "schemes": ("track_id,uri\na,ftp://h/1\nb,/ok\nc,memory://x\nd,simplecache::s3://b/k\ne,HTTP://h/x\n"
                "f,data:abc\ng,a::b\nh,s3://ok/x\ni,Ftp://h/2\n"),
    "passwords": ("track_id,uri\na,https://user:pw@h/x\nb,s3://bucket/artist@name/x.mp3\n"
                  "c,s3://key:secret@bucket/x\nd,s3://us@er/x\ne,simplecache::s3://k:s@b/x\nf,s3://[bad@/x\n"),
    "everything": "track_id,uri\nx,\nx,ftp://u:p@h/1\n,/3\n",
    "header_only": "track_id,uri\n",
    "blank": "  \n\n",
    "repeated_columns": "track_id, track_id,uri\na,b,/1\n",
    "unnamed_column": ",track_id,path\n1,a,/x\n",
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_csv_refused_as_read_manifest_refuses_it(tmp_path: Path, case: str) -> None:
    (tmp_path / "bad.csv").write_text(BAD_CSV[case])
    kind, problems = assert_same_as_read_manifest(str(tmp_path / "bad.csv"))
    assert kind == "error" and problems


def test_refusal_wording_and_rows(tmp_path: Path) -> None:
    def problems(text: str) -> list[str]:
        (tmp_path / "m.csv").write_text(text)
        with pytest.raises(ManifestError) as info:
            read_catalog(str(tmp_path / "m.csv"))
        assert ("numbered from 1" in str(info.value)) == any("row" in p for p in info.value.problems)
        return info.value.problems

    assert problems(BAD_CSV["duplicates"]) == [
        "duplicate track_id at rows 1, 2, 4, 5 ('a' at rows 1, 5; '0002' at rows 2, 4)"]
    assert problems(BAD_CSV["empties"]) == ["empty track_id at rows 4", "empty uri at rows 2, 3"]
    assert problems(BAD_CSV["missing_column"]) == [
        "missing required column 'uri' (columns found: 'track_id', 'path')"]
    schemes = problems(BAD_CSV["schemes"])[0]
    assert schemes.startswith("uri scheme not allowed: 'ftp', 'memory', 'simplecache', 'http', 'data' at rows "
                              "1, 3, 4, 5, 6, 7, 9 (allowed:")
    assert problems(BAD_CSV["passwords"])[-1:] == [
        ("uri carries a password (scheme://user:password@...) at rows 1, 3, 5, 6; "
         "give credentials through the environment, never inside a manifest")]


def test_many_problems_are_capped_like_validate(tmp_path: Path) -> None:
    n = 30
    pq.write_table(pa.table({"track_id": ["same"] * n, "uri": [""] * (n - 3) + ["ftp://x"] * 3}),
                   tmp_path / "m.parquet")
    pq.write_table(pa.table({"track_id": [f"t{i % 7}" for i in range(40)], "uri": ["/x"] * 40}),
                   tmp_path / "many.parquet")
    for name in ("m.parquet", "many.parquet"):
        kind, problems = assert_same_as_read_manifest(str(tmp_path / name))
        assert kind == "error" and "... and" in problems[0]


@pytest.mark.parametrize("name, content", [
    ("bad.jsonl", '{"track_id": "a", "uri": "/1"}\nnot json\n[1]\n'),
    ("nulls.jsonl", '{"track_id": "a", "uri": null}\n{"track_id": "b"}\n'),
    ("absent.jsonl", '{"track_id": "a", "path": "/1"}\n'),
    ("blank.jsonl", "\n \n"),
    ("spaced_key.jsonl", '{"track_id": "a", " uri": "/1"}\n'),
])
def test_bad_jsonl_refused_as_read_manifest_refuses_it(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    assert_same_as_read_manifest(str(tmp_path / name))


def test_empty_parquet_and_unreadable_files(tmp_path: Path) -> None:
    pq.write_table(pa.table({"track_id": pa.array([], pa.string()), "uri": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    assert outcome(read_catalog, str(tmp_path / "empty.parquet")) == ("error", ["the manifest has no rows"])
    (tmp_path / "bad.parquet").write_text("not parquet")
    (tmp_path / "bad.csv").write_text("track_id,uri\na,/1\nb,/2,extra\n")
    (tmp_path / "bad_utf8.csv").write_bytes(b"track_id,uri\na,/\xff\n")
    for name, prefix in [("bad.parquet", "cannot parse as parquet: "), ("bad.csv", "cannot parse as csv: "),
                         ("bad_utf8.csv", "cannot parse as csv: "), ("missing.csv", "file not found ("),
                         ("missing.parquet", "file not found (")]:
        (kind, (got,)), (_, (want,)) = (outcome(read, str(tmp_path / name))
                                        for read in (read_catalog, manifest_rules_only))
        assert kind == "error" and got.startswith(prefix) and want.startswith(prefix), (name, got, want)


@pytest.mark.parametrize("uri", ["m.txt", "m.parquet.gz", "http://host/m.csv", "s3://key:secret@bucket/m.csv",
                                 "memory://m.csv"])
def test_refused_locations(tmp_path: Path, uri: str) -> None:
    uri = uri if "://" in uri else str(tmp_path / uri)
    kind, problems = assert_same_as_read_manifest(uri)
    assert kind == "error" and "secret" not in " ".join(problems)


# ---------------------------------------------------------------- S3 (moto server)


def test_s3_catalog_and_partition(s3_endpoint: str, s3_bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.pipe(f"{s3_bucket}/set/m.csv", b"track_id,uri\n0001,a.wav\n0002,../b.wav\n0003,s3://other/c.wav\n")
    fs.pipe(f"{s3_bucket}/set/bad.tsv", b"track_id\turi\nx\t/1\nx\t\n")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"track_id": ["0001", "0002"], "uri": ["a.wav", "/b"], "x": [1, 2]}), sink)
    fs.pipe(f"{s3_bucket}/set/m.parquet", sink.getvalue().to_pybytes())

    ids, uris = assert_same_as_read_manifest(f"s3://{s3_bucket}/set/m.csv")
    assert ids == ["0001", "0002", "0003"]
    assert uris == [f"s3://{s3_bucket}/set/a.wav", f"s3://{s3_bucket}/b.wav", "s3://other/c.wav"]
    assert assert_same_as_read_manifest(f"s3://{s3_bucket}/set/m.parquet")[1][0] == f"s3://{s3_bucket}/set/a.wav"
    assert outcome(read_catalog, f"s3://{s3_bucket}/set/bad.tsv") == (
        "error", ["duplicate track_id at rows 1, 2 ('x' at rows 1, 2)", "empty uri at rows 2"])
    assert outcome(read_catalog, f"s3://{s3_bucket}/set/none.csv")[1][0].startswith("file not found")

    partition = f"s3://{s3_bucket}/out/model_id=m"
    assert partition_rows(partition).num_rows == 0
    fs.pipe(f"{s3_bucket}/out/model_id=m/part-1.parquet", _parquet_bytes(predictions(["0002"])))
    fs.pipe(f"{s3_bucket}/out/model_id=m/_lease.json", b"{}")
    assert partition_rows(partition).column("track_id").to_pylist() == ["0002"]
    todo = untagged(read_catalog(f"s3://{s3_bucket}/set/m.csv"), partition_rows(partition))
    assert sorted(todo.column("track_id").to_pylist()) == ["0001", "0003"]


# ---------------------------------------------------------------- plan


def predictions(ids: list[str], error: str | None = None) -> pa.Table:
    from datetime import datetime, timezone

    n = len(ids)
    return pa.table({
        "track_id": ids, "uri": [f"/a/{i}.mp3" for i in ids],
        "tagged_at": pa.array([datetime(2025, 1, 1, tzinfo=timezone.utc)] * n, pa.timestamp("us", tz="UTC")),
        "genre_rock": pa.array([0.5] * n, pa.float32()), "error": pa.array([error] * n, pa.string()),
    })


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def test_partition_rows_of_an_absent_folder_is_empty(tmp_path: Path) -> None:
    rows = partition_rows(str(tmp_path / "out" / "model_id=x"))
    assert rows.num_rows == 0 and rows.column_names == list(DONE_COLUMNS)
    assert rows.schema.field("track_id").type == pa.string()
    assert rows.schema.field("tagged_at").type == pa.timestamp("us", tz="UTC")
    assert partition_rows(str(tmp_path / "nowhere"), columns=["track_id", "uri"]).column_names == ["track_id", "uri"]


def test_partition_rows_reads_part_files_only(tmp_path: Path) -> None:
    folder = tmp_path / "model_id=x"
    folder.mkdir()
    (folder / ".tmp-x").write_bytes(b"half a file")
    (folder / "_lease.json").write_text("{}")
    assert partition_rows(str(folder)).num_rows == 0  # nothing written yet
    pq.write_table(predictions(["a", "b"]), folder / "part-1.parquet")
    pq.write_table(predictions(["c"], error="decode: bad"), folder / "part-2.parquet")
    rows = partition_rows(str(folder))
    assert rows.column_names == list(DONE_COLUMNS)
    assert sorted(rows.column("track_id").to_pylist()) == ["a", "b", "c"]
    assert sorted(rows.column("error").to_pylist(), key=str) == [None, None, "decode: bad"]
    assert partition_rows(str(folder), columns=["track_id"]).column_names == ["track_id"]


def test_untagged_is_an_anti_join_keeping_both_columns(tmp_path: Path) -> None:
    catalog = pa.table({"track_id": ["a", "b", "c", "d"], "uri": ["/a", "/b", "/c", "/d"]}, schema=CATALOG_SCHEMA)
    done = pa.table({"track_id": pa.array(["b", "d", "zz", "b"], pa.large_string()), "error": [None] * 4})
    todo = untagged(catalog, done)
    assert todo.column_names == ["track_id", "uri"]
    assert sorted(todo.to_pylist(), key=lambda r: r["track_id"]) == [
        {"track_id": "a", "uri": "/a"}, {"track_id": "c", "uri": "/c"}]
    assert untagged(catalog, partition_rows(str(tmp_path / "absent"))).num_rows == 4
    assert untagged(catalog, catalog).num_rows == 0


# ---------------------------------------------------------------- the benchmark


@pytest.mark.timeout(120)
def test_plan_benchmark_small_run(tmp_path: Path) -> None:
    output = tmp_path / "plan.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "benchmarks.plan_benchmark", "--sizes", "2000", "--done", "1000",
                          "--output", str(output)], cwd=REPO, env=env, capture_output=True, text=True, timeout=110, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| Catalog rows |" in run.stdout
    result = json.loads(output.read_text())
    (row,) = result["rows"]
    assert row["today"]["status"] == row["arrow"]["status"] == "ok"
    assert row["today"]["todo"] == row["arrow"]["todo"] == 1000 and row["todo_agree"] is True
    for path in ("today", "arrow"):
        assert row[path]["seconds"] > 0 and row[path]["peak_rss_mb"] > 0
