"""Train/validation/test splits and cross-validation folds that never split an artist.

Why its own module: a split decides what a reported accuracy means. Seed projects put
segments (or songs) of one artist on both sides and overstated accuracy (docs/architecture.md, "Quality bar"),
so every split and fold mgc makes is *grouped* (an artist's tracks all land on one side)
and *stratified* (each side keeps roughly the label proportions of the whole), and is
deterministic for a seed so that a run can be reproduced.

One greedy assignment (:func:`_assign_groups`) serves both: a split is three bins with
the requested fractions, K folds are K equal bins. Groups are visited in a seeded random
order (not biggest first, so held-out artists are not systematically the small ones) and
each goes to the bin that most reduces the gap between every bin's share of every label
(and of all tracks) and its target share. Multi-label tracks count once under each of
their labels, so rare tags are spread too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from mgc.config import TASKS, label_column
from mgc.config import SPLITS
from mgc.io.validate import SPLIT_ALIASES, parse_labels

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
"""Default train/validation/test fractions."""

FOLD_COLUMN = "fold"
"""Manifest column written by :func:`assign_folds`: 0..k-1, or -1 for held-out test rows."""

NO_FOLD = -1
"""Fold of a row outside cross-validation (already in the test split)."""

# Weight of the "share of all tracks" term against one label's term: sizes matter more
# than any single label, or many rare labels could pull the fractions off.
_SIZE_WEIGHT = 4.0


def assign_splits(
    df: pd.DataFrame,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    stratify_on: str | None = None,
    group_on: str = "artist_id",
) -> pd.DataFrame:
    """Return a copy of ``df`` whose every row has a ``split`` (train/validation/test).

    Rows that already have a split keep it, and a group (artist) that already has rows
    on one side puts its other rows on that same side; only the rest are assigned, in
    ``fractions`` (train, validation, test; normalised to sum 1, a zero means none).
    ``stratify_on`` names a label column (``genres``/``moods``); None picks ``genres``
    when any track has one, else ``moods``. Rows without a ``group_on`` value (or all
    rows, when the column is absent) are their own group: track-level splitting.
    """
    weights = _normalised(fractions, 3, "fractions")
    out = df.copy().reset_index(drop=True)
    current = _current_splits(out)
    groups = _group_keys(out, group_on)
    todo = np.array([value is None for value in current])
    current = _inherit_group_sides(current, groups, todo)
    todo = np.array([value is None for value in current])
    if todo.any():
        labels = _label_lists(out, stratify_on)
        bins = _assign_groups(
            [labels[i] for i in np.flatnonzero(todo)], groups[todo], weights, seed
        )
        for row, index in zip(np.flatnonzero(todo), bins):
            current[row] = SPLITS[index]
    out["split"] = pd.Series(current, dtype=object)
    return out


def assign_folds(
    df: pd.DataFrame,
    k: int,
    seed: int = 0,
    stratify_on: str | None = None,
    group_on: str = "artist_id",
) -> pd.DataFrame:
    """Return a copy of ``df`` with an integer ``fold`` column for grouped K-fold CV.

    Rows in the ``test`` split stay out of cross-validation (fold -1): the test set is
    fixed and the folds rotate over the rest (train + validation, or every row when
    there is no split). Folds are grouped by ``group_on`` and stratified like
    :func:`assign_splits`; use :func:`apply_fold` to turn one fold into validation.
    """
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, got {k}")
    out = df.copy().reset_index(drop=True)
    in_cv = np.array([value != "test" for value in _current_splits(out)], dtype=bool)
    groups = _group_keys(out, group_on)
    if len(np.unique(groups[in_cv])) < k:
        raise ValueError(
            f"{k} folds need at least {k} groups ({group_on!r} values or tracks) outside "
            f"the test split; found {len(np.unique(groups[in_cv]))}"
        )
    labels = _label_lists(out, stratify_on)
    folds = np.full(len(out), NO_FOLD, dtype=np.int64)
    folds[in_cv] = _assign_groups(
        [labels[i] for i in np.flatnonzero(in_cv)], groups[in_cv], (1.0 / k,) * k, seed
    )
    out[FOLD_COLUMN] = folds
    return out


def apply_fold(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Return a copy of ``df`` split for cross-validation round ``k``.

    Fold ``k`` becomes ``validation``, every other fold ``train``; rows outside the
    folds (fold -1: the fixed test set) keep ``test``. The ``fold`` column may hold
    strings (a CSV manifest is read as text) or numbers.
    """
    if FOLD_COLUMN not in df.columns:
        raise ValueError(
            f"the manifest has no {FOLD_COLUMN!r} column; build it with "
            "`jobs/build_manifest.py ... --folds K` (or mgc.datasets.splits.assign_folds)"
        )
    folds = pd.to_numeric(df[FOLD_COLUMN], errors="raise").astype(np.int64).to_numpy()
    n_folds = int(folds.max()) + 1 if len(folds) else 0
    if not 0 <= k < n_folds:
        raise ValueError(f"fold {k} does not exist; the manifest has folds 0..{n_folds - 1}")
    out = df.copy().reset_index(drop=True)
    split = np.where(folds == k, "validation", "train").astype(object)
    split[folds == NO_FOLD] = "test"
    out["split"] = pd.Series(split, dtype=object)
    out[FOLD_COLUMN] = folds
    return out


def split_counts(df: pd.DataFrame) -> dict[str, int]:
    """Tracks per split (``none`` for rows without one), in train/validation/test order."""
    values = _current_splits(df)
    counts = {name: sum(1 for v in values if v == name) for name in SPLITS}
    missing = sum(1 for v in values if v is None)
    if missing:
        counts["none"] = missing
    return counts


# ----------------------------------------------------------------------------- helpers


def _normalised(values: Sequence[float], n: int, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != n or any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"{name} must be {n} non-negative numbers with a positive sum, got {values}")
    total = sum(values)
    return tuple(v / total for v in values)


def _current_splits(df: pd.DataFrame) -> list[str | None]:
    """The ``split`` column as a list of split names or None (missing column: all None)."""
    if "split" not in df.columns:
        return [None] * len(df)
    out: list[str | None] = []
    for value in df["split"].tolist():
        text = value.strip().lower() if isinstance(value, str) else None
        out.append(SPLIT_ALIASES.get(text, text) if text else None)
    return out


def _group_keys(df: pd.DataFrame, group_on: str) -> np.ndarray:
    """One key per row: its ``group_on`` value, or a key of its own when that is missing."""
    values = df[group_on].tolist() if group_on in df.columns else [None] * len(df)
    keys = []
    for i, value in enumerate(values):
        key = _text_or_none(value)
        keys.append(f"group:{key}" if key is not None else f"row:{i}")
    return np.array(keys, dtype=object)


def _text_or_none(value: object) -> str | None:
    """A cell as stripped text, None when missing or blank."""
    if isinstance(value, str):
        return value.strip() or None
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _inherit_group_sides(
    current: list[str | None], groups: np.ndarray, todo: np.ndarray
) -> list[str | None]:
    """Unassigned rows of a group that already has a side join its most common side."""
    placed: dict[str, dict[str, int]] = {}
    for value, group in zip(current, groups):
        if value is not None:
            placed.setdefault(group, {}).setdefault(value, 0)
            placed[group][value] += 1
    if not placed:
        return current
    out = list(current)
    for row in np.flatnonzero(todo):
        sides = placed.get(groups[row])
        if sides:
            out[row] = max(sides, key=lambda side: (sides[side], -SPLITS.index(side)))
    return out


def _label_lists(df: pd.DataFrame, stratify_on: str | None) -> list[list[str]]:
    """Per-row labels to stratify on; ``None`` picks genres, else moods, else none."""
    if stratify_on is None:
        for task in TASKS:
            column = label_column(task)
            if column in df.columns and any(len(parse_labels(v)) for v in df[column].tolist()):
                stratify_on = column
                break
        else:
            return [[] for _ in range(len(df))]
    if stratify_on not in df.columns:
        raise ValueError(f"cannot stratify on {stratify_on!r}: no such column")
    return [parse_labels(value) for value in df[stratify_on].tolist()]


def _assign_groups(
    labels: Sequence[Sequence[str]],
    groups: np.ndarray,
    weights: Sequence[float],
    seed: int,
) -> np.ndarray:
    """Bin index per row: whole groups, greedily balanced per label and in size.

    Each group is a count vector over (all tracks, label 1, ..., label L). Visiting
    groups in a seeded random order, a group goes to the bin whose squared gap between
    achieved and target share, summed over the group's labels, drops the most. Bins
    with weight 0 receive nothing.
    """
    weights_arr = np.asarray(weights, dtype=np.float64)
    vocabulary = sorted({label for row in labels for label in row})
    column = {label: j + 1 for j, label in enumerate(vocabulary)}
    group_ids, row_group = np.unique(groups.astype(str), return_inverse=True)
    counts = np.zeros((len(group_ids), len(vocabulary) + 1), dtype=np.float64)
    for row, row_labels in enumerate(labels):
        counts[row_group[row], 0] += 1.0
        for label in row_labels:
            counts[row_group[row], column[label]] += 1.0
    totals = counts.sum(axis=0)
    scale = np.where(totals > 0, 1.0 / np.maximum(totals, 1.0), 0.0)
    scale[0] *= np.sqrt(_SIZE_WEIGHT)
    share = counts * scale  # each group's share of every total

    targets = weights_arr[:, None] * scale[None, :] * totals[None, :]  # [bins, columns]
    achieved = np.zeros_like(targets)
    usable = weights_arr > 0
    order = np.random.default_rng(seed).permutation(len(group_ids))
    group_bin = np.empty(len(group_ids), dtype=np.int64)
    for g in order:
        nz = np.flatnonzero(share[g])
        delta = achieved[:, nz] - targets[:, nz]
        # Change of sum((achieved - target)^2) if the group joins each bin.
        cost = (2.0 * delta * share[g, nz] + share[g, nz] ** 2).sum(axis=1)
        cost[~usable] = np.inf
        b = int(np.argmin(cost))
        group_bin[g] = b
        achieved[b, nz] += share[g, nz]
    return group_bin[row_group]


__all__ = [
    "DEFAULT_FRACTIONS",
    "FOLD_COLUMN",
    "NO_FOLD",
    "apply_fold",
    "assign_folds",
    "assign_splits",
    "split_counts",
]
