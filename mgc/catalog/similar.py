"""`mgc similar QUERY --index URI`: the catalog tracks nearest to a track, or to a new file.

Why a file is embedded with the index's own checkpoints: distances mean something only
between vectors of one model set, so the query file goes through the same decoder, front
end and backbone that tagged the catalog (:func:`mgc.tagging.files.predict_files`), and a
checkpoint whose model_id is not the index's is refused rather than searched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow.compute as pc

from mgc.catalog import vectors
from mgc.catalog.index import CatalogIndex, IndexError_
from mgc.io import storage
from mgc.models.checkpoint import load_checkpoint
from mgc.tagging.files import FilePrediction, predict_files
from mgc.tagging.partition import dataset, partition_uri


@dataclass(frozen=True)
class Neighbour:
    """One track near the query: its rank (1 = nearest), ``1 - cosine`` distance and tags."""

    rank: int
    track_id: str
    distance: float
    genre: str | None
    genre_score: float | None
    genres: list[str]
    moods: list[str]

    def to_dict(self) -> dict:
        return {"rank": self.rank, "track_id": self.track_id, "distance": round(self.distance, 6),
                "genre": self.genre, "genre_score": None if self.genre_score is None else round(self.genre_score, 4),
                "genres": self.genres, "moods": self.moods}


@dataclass(frozen=True)
class SimilarResult:
    """The query (a track id or a file), what it was tagged, and its neighbours."""

    query: str
    kind: str  # "track" or "file"
    model_id: str
    neighbours: list[Neighbour]
    query_scores: dict[str, list[tuple[str, float]]] | None = None

    def to_dict(self) -> dict:
        return {"query": self.query, "query_kind": self.kind, "model_id": self.model_id,
                "neighbours": [n.to_dict() for n in self.neighbours]}


def _neighbours(index: CatalogIndex, query: np.ndarray, k: int, skip: int | None) -> list[Neighbour]:
    distances, positions = vectors.search(index.index, query[None, :], k + (1 if skip is not None else 0))
    rows = [(float(d), int(p)) for d, p in zip(distances[0], positions[0]) if p >= 0 and p != skip][:k]
    names = set(index.tracks.column_names)
    picked = index.tracks.take([p for _, p in rows]).to_pylist()
    return [Neighbour(rank=i + 1, track_id=row["track_id"], distance=d,
                      genre=row.get("genre") if "genre" in names else None,
                      genre_score=row.get("genre_score") if "genre_score" in names else None,
                      genres=list(row.get("genres") or []), moods=list(row.get("moods") or []))
            for i, ((d, _), row) in enumerate(zip(rows, picked))]


def similar_to_track(index: CatalogIndex, track_id: str, k: int = 10) -> SimilarResult:
    """Neighbours of a catalog track (the track itself left out)."""
    position = index.position(track_id)
    query = vectors.reconstruct(index.index, index.meta.layout, position)
    return SimilarResult(track_id, "track", index.meta.model_id, _neighbours(index, query, k, skip=position))


def embed_query_file(index: CatalogIndex, path: str, checkpoints: Sequence[str] = ()) -> FilePrediction:
    """Embed an audio file with the index's checkpoints (or ``checkpoints``, which must be them)."""
    given = tuple(checkpoints) or index.meta.checkpoints
    if not given:
        raise IndexError_(f"the index {storage.redact(index.uri)} records no checkpoints to embed a file with: "
                          "pass --checkpoint (the ones that tagged it), or rebuild it with jobs/index.py --checkpoint")
    loaded = [load_checkpoint(c) for c in given]
    made = "--".join(c.model_id for c in loaded)
    if made != index.meta.model_id:
        raise IndexError_(f"the index {storage.redact(index.uri)} holds embeddings of model_id {index.meta.model_id}; "
                          f"the checkpoints given are {made}: use the checkpoints that tagged the catalog")
    result = predict_files([path], loaded, embeddings=True)[0]
    if result.error:
        raise IndexError_(f"cannot embed {path}: {result.error}")
    if result.embedding is None or result.embedding.shape[0] != index.meta.layout.dim:
        size = None if result.embedding is None else result.embedding.shape[0]
        raise IndexError_(f"{path} embeds to {size} dimensions, the index holds {index.meta.layout.dim}")
    return result


def similar_to_file(index: CatalogIndex, path: str, k: int = 10, checkpoints: Sequence[str] = ()) -> SimilarResult:
    """Neighbours of an audio file that need not be in the catalog."""
    embedded = embed_query_file(index, path, checkpoints)
    return SimilarResult(path, "file", index.meta.model_id,
                         _neighbours(index, embedded.embedding, k, skip=None), query_scores=embedded.scores)


def similar(index: CatalogIndex, query: str, k: int = 10, checkpoints: Sequence[str] = ()) -> SimilarResult:
    """A track id of the catalog, else an audio file (local path or uri); an unknown id that is
    not a file either gets the unknown-track error."""
    try:
        return similar_to_track(index, query, k)
    except IndexError_:
        is_file = Path(query).is_file() if storage.is_local(query) else storage.exists(query)
        if not is_file:
            raise
    return similar_to_file(index, query, k, checkpoints)


def format_result(result: SimilarResult) -> str:
    """A table for people: rank, distance, track id, genre (score) and moods."""
    lines = [f"tracks like {result.query} ({result.kind}; model_id {result.model_id}):"]
    width = max([len(n.track_id) for n in result.neighbours] + [8])
    lines.append(f"{'rank':>4}  {'distance':>8}  {'track_id':<{width}}  {'genre':<16}  moods")
    for n in result.neighbours:
        genre = "" if n.genre is None else f"{n.genre} {n.genre_score:.2f}"
        lines.append(f"{n.rank:>4}  {n.distance:>8.4f}  {n.track_id:<{width}}  {genre:<16}  {', '.join(n.moods)}")
    return "\n".join(lines)


def to_json(result: SimilarResult) -> str:
    return json.dumps(result.to_dict(), indent=2)


def tag_profiles(index: CatalogIndex, track_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per track: every tag column's score (``genre_rock``: 0.8, ...), read from the
    predictions partition the index was built from (only these tracks' rows)."""
    data = dataset(partition_uri(index.meta.predictions, index.meta.model_id))
    if data is None:
        return {}
    tags = [name for name in data.schema.names if name.startswith(("genre_", "mood_")) and name != "genre_score"]
    rows = data.to_table(columns=["track_id", *tags],
                         filter=pc.field("track_id").isin(list(track_ids)) & pc.is_null(pc.field("error")))
    return {row.pop("track_id"): row for row in rows.to_pylist()}


def plot_result(index: CatalogIndex, result: SimilarResult, path: str | Path, top_tags: int = 12) -> Path:
    """The query's and its neighbours' tag profiles as heat rows (the query's top tags)."""
    from mgc.evaluation.plots import pyplot

    profiles = tag_profiles(index, [n.track_id for n in result.neighbours] + [result.query])
    if result.kind == "file":
        scores = result.query_scores or {}
        query = {f"{task}_{tag}": p for task, pairs in scores.items() for tag, p in pairs}
    else:
        query = profiles.get(result.query, {})
    if not query:
        raise IndexError_("no tag scores for the query: nothing to plot")
    columns = sorted(query, key=lambda c: -(query[c] or 0.0))[:top_tags]
    names = [f"query {result.query if result.kind == 'track' else Path(result.query).name}"]
    matrix = [[query.get(c) or 0.0 for c in columns]]
    for n in result.neighbours:
        profile = profiles.get(n.track_id, {})
        names.append(f"{n.rank}. {n.track_id} ({n.distance:.3f})")
        matrix.append([profile.get(c) or 0.0 for c in columns])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(columns), 1.0 + 0.35 * len(names)))
    image = ax.imshow(np.asarray(matrix), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("tag profiles: the query and its nearest tracks")
    fig.colorbar(image, ax=ax, label="probability")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
