"""Tests for mgc.datasets.splits: grouped, stratified, deterministic splits and folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mgc.io.manifest import read_manifest, write_manifest
from mgc.datasets.splits import apply_fold, assign_folds, assign_splits, split_counts

GENRE_SHARES = {"rock": 0.4, "jazz": 0.3, "pop": 0.2, "metal": 0.1}


def catalog(n_artists: int = 120, seed: int = 0, artists: bool = True) -> pd.DataFrame:
    """Artists with 1-9 tracks each, genres skewed as GENRE_SHARES, mostly one per artist."""
    rng = np.random.default_rng(seed)
    names, shares = list(GENRE_SHARES), list(GENRE_SHARES.values())
    rows = []
    for a in range(n_artists):
        home = rng.choice(names, p=shares)
        for t in range(int(rng.integers(1, 10))):
            genre = home if rng.random() < 0.85 else rng.choice(names, p=shares)
            rows.append({"track_id": f"a{a}-t{t}", "uri": f"/x/{a}/{t}.wav", "genres": [str(genre)],
                         "moods": ["happy"] if t % 2 else ["sad"], "artist_id": f"artist{a}"})
    df = pd.DataFrame(rows)
    return df if artists else df.drop(columns="artist_id")


def sides_per_artist(df: pd.DataFrame, column: str = "split") -> int:
    return int(df.groupby("artist_id")[column].nunique().max())


def label_share(df: pd.DataFrame, split: str) -> pd.Series:
    first = df.loc[df["split"] == split, "genres"].map(lambda g: g[0])
    return first.value_counts(normalize=True)


def test_assign_splits_grouped_stratified_and_sized():
    df = catalog()
    out = assign_splits(df, fractions=(0.7, 0.15, 0.15), seed=0)
    assert out["split"].isin(["train", "validation", "test"]).all()
    assert sides_per_artist(out) == 1, "an artist on two sides"
    shares = out["split"].value_counts(normalize=True)
    for split, target in (("train", 0.7), ("validation", 0.15), ("test", 0.15)):
        assert abs(shares[split] - target) < 0.03, shares
        for genre, share in label_share(out, split).items():
            assert abs(share - label_share(out.assign(split="all"), "all")[genre]) < 0.08, (split, genre)
    assert df.equals(catalog()), "input frame was modified"


def test_assign_splits_deterministic_per_seed():
    df = catalog()
    first = assign_splits(df, seed=3)["split"].tolist()
    assert assign_splits(df, seed=3)["split"].tolist() == first
    assert assign_splits(df, seed=4)["split"].tolist() != first


def test_track_level_without_artists_and_for_missing_ids():
    out = assign_splits(catalog(artists=False), fractions=(0.8, 0.1, 0.1), seed=1)
    counts = split_counts(out)
    n = len(out)
    assert abs(counts["test"] - 0.1 * n) <= 2 and abs(counts["validation"] - 0.1 * n) <= 2

    df = catalog()
    df.loc[df.index[:40], "artist_id"] = None  # missing ids: each track its own group
    out = assign_splits(df, seed=0)
    known = out[out["artist_id"].notna()]
    assert sides_per_artist(known) == 1
    assert out["split"].notna().all()


def test_existing_splits_kept_and_artists_follow_them():
    df = catalog()
    df["split"] = None
    first_artist = df["artist_id"] == "artist0"
    df.loc[df.index[first_artist][:1], "split"] = "test"
    df.loc[df["artist_id"] == "artist1", "split"] = "val"
    out = assign_splits(df, seed=0)
    assert set(out.loc[first_artist, "split"]) == {"test"}
    assert set(out.loc[df["artist_id"] == "artist1", "split"]) == {"validation"}
    assert sides_per_artist(out) == 1


def test_zero_fraction_and_moods_fallback():
    out = assign_splits(catalog(), fractions=(0.8, 0.2, 0), seed=0)
    assert set(out["split"]) == {"train", "validation"}
    moods_only = catalog().assign(genres=[[] for _ in range(len(catalog()))])
    out = assign_splits(moods_only, seed=0)
    for split in ("train", "test"):
        share = out.loc[out["split"] == split, "moods"].map(lambda m: m[0]).value_counts(normalize=True)
        assert abs(share["happy"] - 0.45) < 0.1  # stratified on moods
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(catalog(), fractions=(1, 1))


def test_multilabel_rare_tags_reach_every_side():
    df = catalog(n_artists=200)
    rare = df["artist_id"].isin([f"artist{i}" for i in range(0, 200, 10)])  # 20 artists
    df.loc[rare, "genres"] = df.loc[rare, "genres"].map(lambda g: g + ["rare"])
    out = assign_splits(df, seed=0)
    tagged = out[out["genres"].map(lambda g: "rare" in g)]
    assert set(tagged["split"]) == {"train", "validation", "test"}


def test_assign_folds_grouped_balanced_and_test_left_out():
    df = assign_splits(catalog(), seed=0)
    out = assign_folds(df, 5, seed=0)
    assert out["fold"].dtype == np.int64
    assert (out.loc[out["split"] == "test", "fold"] == -1).all()
    cv = out[out["split"] != "test"]
    assert set(cv["fold"]) == set(range(5))
    assert sides_per_artist(cv, "fold") == 1
    sizes = cv["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 0.1 * len(cv)
    assert assign_folds(df, 5, seed=0)["fold"].tolist() == out["fold"].tolist()
    no_split = assign_folds(catalog(), 3, seed=0)
    assert set(no_split["fold"]) == {0, 1, 2}
    with pytest.raises(ValueError, match="k >= 2"):
        assign_folds(df, 1)
    with pytest.raises(ValueError, match="groups"):
        assign_folds(catalog(n_artists=2), 3)


def test_apply_fold_after_csv_round_trip(tmp_path):
    df = assign_folds(assign_splits(catalog(), seed=0), 4, seed=0)
    path = tmp_path / "m.csv"
    write_manifest(df, str(path))
    back = read_manifest(str(path))  # fold comes back as text
    for k in range(4):
        out = apply_fold(back, k)
        assert (out.loc[df["fold"] == k, "split"] == "validation").all()
        assert (out.loc[(df["fold"] != k) & (df["fold"] >= 0), "split"] == "train").all()
        assert (out.loc[df["fold"] == -1, "split"] == "test").all()
        assert sides_per_artist(out) == 1
    with pytest.raises(ValueError, match="does not exist"):
        apply_fold(back, 4)
    with pytest.raises(ValueError, match="--folds"):
        apply_fold(catalog(), 0)
