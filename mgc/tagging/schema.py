"""The predictions table: its schema and how scored tracks become its rows.

Why a module of its own: the schema is a contract (docs/architecture.md, "Data contracts") that users query
with pandas, so it is built in one place from the checkpoints' task specs and every
file of a run has exactly the same columns and types, failed tracks included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa

from mgc.config import TASKS, TaskSpec, label_column
from mgc.io.storage import redact

PARTITION = "model_id"
# Per-task top-1 columns the predictions contract names (docs/architecture.md); a task's
# tag columns must not collide with them.
TOP1_COLUMNS = {"genre": ("genre", "genre_score")}
TOP1_FIELDS = [(name, kind) for task in TASKS if task in TOP1_COLUMNS
               for name, kind in zip(TOP1_COLUMNS[task], (pa.string(), pa.float32()))]
# Per task, the list of its tags over their thresholds (``genres``, ``moods``).
LIST_COLUMNS = [label_column(task) for task in TASKS]
RESERVED = {name for name, _ in TOP1_FIELDS} | set(LIST_COLUMNS) | {"embedding", "error"}


def tag_column(task: str, tag: str) -> str:
    """``genre_<tag>``: tag lowercased, every non-alphanumeric character as ``_``."""
    return f"{task}_{re.sub(r'[^0-9a-z]', '_', tag.lower())}"


@dataclass(frozen=True)
class PredictionSchema:
    """Columns of one tagging run, from the tasks its checkpoints predict."""

    tasks: Mapping[str, TaskSpec]
    embedding: bool = False

    def __post_init__(self) -> None:
        names = [tag_column(task, tag) for task, spec in self.tasks.items() for tag in spec.labels]
        clashes = sorted({n for n in names if names.count(n) > 1} | (set(names) & RESERVED))
        if clashes:
            raise ValueError(f"tag names map to clashing prediction columns: {clashes}")

    def tag_columns(self, task: str) -> list[str]:
        return [tag_column(task, tag) for tag in self.tasks[task].labels]

    def arrow(self) -> pa.Schema:
        fields = [
            pa.field("track_id", pa.string(), nullable=False),
            pa.field("uri", pa.string()),
            pa.field("tagged_at", pa.timestamp("us", tz="UTC")),
            pa.field("duration_s", pa.float32()),
            pa.field("n_segments", pa.int32()),
            *(pa.field(name, kind) for name, kind in TOP1_FIELDS),
            *(pa.field(name, pa.list_(pa.string())) for name in LIST_COLUMNS),
        ]
        for task in self.tasks:
            fields += [pa.field(name, pa.float32()) for name in self.tag_columns(task)]
        if self.embedding:
            fields.append(pa.field("embedding", pa.list_(pa.float32())))
        fields.append(pa.field("error", pa.string()))
        return pa.schema(fields)


def tags_over_threshold(probs: np.ndarray, spec: TaskSpec, top_k: int) -> list[list[str]]:
    """Per track: the tags whose probability reaches their threshold, highest first, at most ``top_k``."""
    cut = np.asarray(spec.decision_thresholds(), dtype=np.float32)
    order = np.argsort(-probs, axis=1)[:, :top_k]
    return [[spec.labels[k] for k in row if probs[i, k] >= cut[k]] for i, row in enumerate(order)]


def build_table(
    schema: PredictionSchema,
    track_ids: Sequence[str],
    uris: Sequence[str],
    durations: Sequence[float],
    n_segments: Sequence[int],
    errors: Sequence[str | None],
    probs: Mapping[str, np.ndarray],
    embeddings: np.ndarray | None = None,
    top_k: int = 3,
    tagged_at: datetime | None = None,
) -> pa.Table:
    """One row per track. ``probs[task]`` and ``embeddings`` hold rows for the tracks
    without an error only, in order; failed tracks get nulls there."""
    n = len(track_ids)
    ok = np.array([e is None for e in errors], dtype=bool)
    position = np.cumsum(ok) - 1  # row in probs for each ok track

    def spread(values: Sequence | np.ndarray) -> list:
        return [values[position[i]] if ok[i] else None for i in range(n)]

    stamp = tagged_at or datetime.now(timezone.utc)
    columns: dict[str, list] = {
        "track_id": list(track_ids),
        "uri": [redact(u) for u in uris],  # presigned-URL signatures do not belong in outputs
        "tagged_at": [stamp] * n,
        "duration_s": [None if not np.isfinite(d) else float(d) for d in durations],
        "n_segments": [int(s) for s in n_segments],
        **{name: [None] * n for name, _ in TOP1_FIELDS},
        **{name: [None] * n for name in LIST_COLUMNS},
    }
    for task, spec in schema.tasks.items():
        task_probs = np.asarray(probs[task], dtype=np.float32)
        for k, name in enumerate(schema.tag_columns(task)):
            columns[name] = spread(task_probs[:, k].tolist())
        columns[label_column(task)] = spread(tags_over_threshold(task_probs, spec, top_k))
        if task in TOP1_COLUMNS:
            best = task_probs.argmax(axis=1) if len(task_probs) else np.zeros(0, dtype=int)
            top_name, score_name = TOP1_COLUMNS[task]
            columns[top_name] = spread([spec.labels[k] for k in best])
            columns[score_name] = spread(task_probs[np.arange(len(best)), best].tolist())
    if schema.embedding:
        columns["embedding"] = spread([] if embeddings is None else list(np.asarray(embeddings, np.float32)))
    columns["error"] = list(errors)
    return pa.Table.from_pydict(columns, schema=schema.arrow())


def combined_tasks(per_checkpoint: Sequence[Mapping[str, TaskSpec]]) -> dict[str, TaskSpec]:
    """Tasks of several checkpoints; each task must come from exactly one of them."""
    tasks: dict[str, TaskSpec] = {}
    for specs in per_checkpoint:
        for task, spec in specs.items():
            if task in tasks:
                raise ValueError(f"two checkpoints both predict {task!r}: give one checkpoint per task")
            tasks[task] = spec
    return {task: tasks[task] for task in TASKS if task in tasks}
