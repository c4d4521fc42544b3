"""From manifest labels to training targets: task types, vocabularies, multi-hot targets.

Why: the model sees fixed-width targets and a mask (a track may lack one task's labels:
its loss for that task is masked, not guessed), while users write labels as strings; a
task's type and label order are fixed here once and travel in every checkpoint.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mgc.config import TASK_TYPES, TASKS, TaskSpec, label_column
from mgc.io.validate import parse_labels


def infer_task_type(labels: Iterable[Sequence[str]]) -> str:
    """``multiclass`` when every labeled track has exactly one label, else ``multilabel``.

    Unlabeled tracks (empty list or missing) do not count either way (docs/architecture.md, "Data contracts").
    Cells are normalised like :func:`parse_labels`, so a raw ``|``-joined column works.
    Raises ValueError when no track is labeled: there is nothing to train.
    """
    labeled = False
    for value in labels:
        count = len(parse_labels(value))
        if count == 0:
            continue
        labeled = True
        if count > 1:
            return "multilabel"
    if not labeled:
        raise ValueError("no track has a label; cannot infer a task type")
    return "multiclass"


def label_vocabulary(labels: Iterable[Sequence[str]]) -> list[str]:
    """Sorted distinct labels over all tracks; the order fixes a model's output indices."""
    vocabulary: set[str] = set()
    for value in labels:
        vocabulary.update(parse_labels(value))
    return sorted(vocabulary)


def target_column(task: str) -> str:
    return f"target_{task}"


def mask_column(task: str) -> str:
    return f"mask_{task}"


def resolve_tasks(
    manifest: pd.DataFrame,
    tasks: Sequence[str] = (),
    forced_types: Mapping[str, str] | None = None,
) -> dict[str, TaskSpec]:
    """Task specs (type + vocabulary) for the tasks to train.

    With no ``tasks`` given, every task whose label column has any label is trained.
    The type is inferred from the labels unless ``forced_types`` names it.
    """
    forced_types = dict(forced_types or {})
    wanted = list(tasks) or [t for t in TASKS if manifest[label_column(t)].map(len).sum() > 0]
    if not wanted:
        raise ValueError("the manifest has no labels in 'genres' or 'moods': nothing to train")
    specs: dict[str, TaskSpec] = {}
    for task in wanted:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        labels = manifest[label_column(task)]
        if labels.map(len).sum() == 0:
            raise ValueError(f"task {task!r} has no labels in column {label_column(task)!r}")
        task_type = forced_types.get(task) or infer_task_type(labels)
        if task_type not in TASK_TYPES:
            raise ValueError(f"task type {task_type!r} is not one of {TASK_TYPES}")
        specs[task] = TaskSpec(type=task_type, labels=tuple(label_vocabulary(labels)))
    return specs


def encode_targets(manifest: pd.DataFrame, specs: Mapping[str, TaskSpec]) -> pd.DataFrame:
    """Add ``target_<task>`` (float32 multi-hot) and ``mask_<task>`` (1.0 when labeled)."""
    out = manifest.copy()
    for task, spec in specs.items():
        index = {label: i for i, label in enumerate(spec.labels)}
        targets = np.zeros((len(out), len(spec.labels)), dtype=np.float32)
        for row, labels in enumerate(out[label_column(task)]):
            for label in labels:
                if label in index:
                    targets[row, index[label]] = 1.0
        out[target_column(task)] = list(targets)
        out[mask_column(task)] = (targets.sum(axis=1) > 0).astype(np.float32)
    return out


def targets_matrix(column: Sequence[np.ndarray]) -> np.ndarray:
    """Stack a target column back into ``[tracks, labels]``."""
    return np.stack([np.asarray(v, dtype=np.float32) for v in column])
