"""`jobs/catalog_report.py`: what a tagged catalog holds, as ``report.md`` and PNGs.

Why counts over batches: a nightly catalog is millions of rows, so every figure is an
aggregate that folds one pyarrow batch (``ReportConfig.batch_rows`` rows of the few
columns it needs) into counters and fixed-bin histograms; memory depends on the number of
genres, moods and days, never on the number of tracks.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mgc.config import ReportConfig
from mgc.io import storage
from mgc.io.jsonio import dumps
from mgc.log import get_logger
from mgc.tagging.partition import dataset, resolve_partition

log = get_logger()

UNTAGGED = "(none)"


@dataclass
class CatalogStats:
    """The running aggregates of one partition."""

    bins: int
    rows: int = 0
    failed: int = 0
    genres: Counter = field(default_factory=Counter)
    moods: Counter = field(default_factory=Counter)
    mood_genre: Counter = field(default_factory=Counter)  # (mood, genre) -> tracks
    reasons: Counter = field(default_factory=Counter)
    per_hour: Counter = field(default_factory=Counter)  # (hour start, ok?) -> tracks
    genre_score: np.ndarray | None = None
    top_mood_score: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.genre_score = np.zeros(self.bins, dtype=np.int64)
        self.top_mood_score = np.zeros(self.bins, dtype=np.int64)

    def _histogram(self, values: np.ndarray) -> np.ndarray:
        values = values[np.isfinite(values)]
        return np.histogram(values, bins=self.bins, range=(0.0, 1.0))[0]

    def add(self, batch: pa.RecordBatch, mood_columns: list[str]) -> None:
        """Fold one batch of predictions rows in."""
        table = pa.Table.from_batches([batch])
        self.rows += table.num_rows
        failed = pc.is_valid(table.column("error"))
        self.failed += pc.sum(failed).as_py() or 0
        errors = table.column("error").filter(failed)
        if len(errors):
            reasons = pc.list_element(pc.split_pattern(errors, ":", max_splits=1), 0)  # "<reason>: <detail>"
            self.reasons.update(_value_counts(reasons))
        hours = pc.floor_temporal(table.column("tagged_at"), unit="hour")
        for (hour, ok), n in _value_counts_pairs(hours, pc.invert(failed)).items():
            self.per_hour[(hour, ok)] += n
        scored = table.filter(pc.invert(failed))
        genre = scored.column("genre") if "genre" in scored.column_names else None
        if genre is not None:
            self.genres.update(_value_counts(genre))
            self.genre_score += self._histogram(scored.column("genre_score").to_numpy(zero_copy_only=False)
                                                .astype(np.float64))
        if "moods" in scored.column_names:
            moods = scored.column("moods").combine_chunks()
            flat = pc.list_flatten(moods)
            self.moods.update(_value_counts(flat))
            no_mood = pc.equal(pc.list_value_length(moods), 0)
            self.moods[UNTAGGED] += pc.sum(no_mood).as_py() or 0
            if genre is not None and len(flat):
                owners = genre.combine_chunks().take(pc.list_parent_indices(moods))
                self.mood_genre.update(_value_counts_pairs(flat, owners))
        if mood_columns and scored.num_rows:
            stacked = np.column_stack([scored.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                                       for c in mood_columns])
            self.top_mood_score += self._histogram(np.nanmax(stacked, axis=1))


def _value_counts(values: pa.Array | pa.ChunkedArray) -> Counter:
    counts = pc.value_counts(values)
    return Counter({v.as_py() if v.as_py() is not None else UNTAGGED: c.as_py()
                    for v, c in zip(counts.field("values"), counts.field("counts"))})


def _value_counts_pairs(first, second) -> Counter:
    table = pa.table({"a": first, "b": second}).group_by(["a", "b"]).aggregate([([], "count_all")])
    return Counter({(a, b): n for a, b, n in zip(table.column("a").to_pylist(), table.column("b").to_pylist(),
                                                   table.column("count_all").to_pylist())})


def collect(partition: str, cfg: ReportConfig) -> CatalogStats:
    """One scan of the partition's report columns, batch by batch."""
    stats = CatalogStats(bins=cfg.bins)
    data = dataset(partition)
    if data is None:
        return stats
    names = data.schema.names
    mood_columns = [n for n in names if n.startswith("mood_")]
    columns = [c for c in ("error", "tagged_at", "genre", "genre_score", "moods") if c in names] + mood_columns
    for batch in data.to_batches(columns=columns, batch_size=cfg.batch_rows):
        if batch.num_rows:
            stats.add(batch, mood_columns)
    return stats


# --- plots ------------------------------------------------------------------------------


def _bar(plt, labels, values, title, xlabel, path: Path, horizontal=True) -> Path:
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(labels) + 1)))
    if horizontal:
        ax.barh(labels[::-1], values[::-1], color="tab:blue")
        ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plots(stats: CatalogStats, directory: Path) -> dict[str, Path]:
    from mgc.evaluation.plots import pyplot

    plt = pyplot()
    out: dict[str, Path] = {}
    if stats.genres:
        genres = stats.genres.most_common()
        out["genres"] = _bar(plt, [g for g, _ in genres], [n for _, n in genres], "tracks per top genre",
                             "tracks", directory / "genres.png")
    moods = [m for m, _ in stats.moods.most_common() if m != UNTAGGED][:30]
    if stats.mood_genre and moods:
        genres = [g for g, _ in stats.genres.most_common()]
        grid = np.array([[stats.mood_genre.get((m, g), 0) for g in genres] for m in moods])
        fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(genres), 1.5 + 0.3 * len(moods)))
        image = ax.imshow(grid, cmap="magma", aspect="auto")
        ax.set_xticks(range(len(genres)), genres, rotation=60, ha="right")
        ax.set_yticks(range(len(moods)), moods)
        ax.set_title("tracks per mood (rows) and top genre (columns)")
        fig.colorbar(image, ax=ax, label="tracks")
        fig.tight_layout()
        fig.savefig(directory / "mood_genre.png", dpi=90)
        plt.close(fig)
        out["mood_genre"] = directory / "mood_genre.png"
    if stats.genre_score.sum() or stats.top_mood_score.sum():
        edges = np.linspace(0, 1, stats.bins + 1)
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        for ax, counts, title in zip(axes, (stats.genre_score, stats.top_mood_score),
                                     ("top genre probability", "highest mood probability")):
            ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:green")
            ax.set_title(title)
            ax.set_xlabel("probability")
            ax.set_ylabel("tracks")
        fig.tight_layout()
        fig.savefig(directory / "scores.png", dpi=90)
        plt.close(fig)
        out["scores"] = directory / "scores.png"
    if stats.reasons:
        reasons = stats.reasons.most_common()
        out["failures"] = _bar(plt, [r for r, _ in reasons], [n for _, n in reasons], "failed tracks by reason",
                               "tracks", directory / "failures.png")
    if stats.per_hour:
        out["tagged_over_time"] = _over_time(plt, stats, directory / "tagged_over_time.png")
    return out


def _over_time(plt, stats: CatalogStats, path: Path) -> Path:
    """Tracks tagged per hour (per day once the runs span more than three days), ok and failed."""
    hours = sorted({hour for hour, _ in stats.per_hour})
    by_day = (hours[-1] - hours[0]).total_seconds() > 3 * 86400
    def bucket(hour: datetime) -> datetime:
        return hour.replace(hour=0) if by_day else hour
    buckets = sorted({bucket(h) for h in hours})
    ok = Counter()
    bad = Counter()
    for (hour, fine), n in stats.per_hour.items():
        (ok if fine else bad)[bucket(hour)] += n
    fig, ax = plt.subplots(figsize=(8, 3))
    x = np.arange(len(buckets))
    ax.bar(x, [ok[b] for b in buckets], color="tab:blue", label="tagged")
    ax.bar(x, [bad[b] for b in buckets], bottom=[ok[b] for b in buckets], color="tab:red", label="failed")
    ax.set_xticks(x, [b.strftime("%Y-%m-%d" if by_day else "%m-%d %H:00") for b in buckets], rotation=45, ha="right")
    ax.set_ylabel("tracks")
    ax.set_title(f"tracks tagged per {'day' if by_day else 'hour'} (UTC)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- report -----------------------------------------------------------------------------


def _table(rows: list[tuple], header: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def render(stats: CatalogStats, model_id: str, predictions: str, plots: dict[str, Path]) -> str:
    ok = stats.rows - stats.failed
    share = (lambda n, total: f"{100.0 * n / total:.1f}%" if total else "-")
    lines = [f"# Catalog report: model_id {model_id}", "",
             f"Predictions: `{storage.redact(predictions)}`; written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
             "", *_table([("tracks", stats.rows), ("tagged", f"{ok} ({share(ok, stats.rows)})"),
                          ("failed", f"{stats.failed} ({share(stats.failed, stats.rows)})")], ("", "count")), ""]
    if stats.genres:
        lines += ["## Genres (top-1 per track)", "",
                  *_table([(g, n, share(n, ok)) for g, n in stats.genres.most_common()], ("genre", "tracks", "share")),
                  "", "![genres](genres.png)", ""]
    if stats.moods:
        lines += ["## Moods (tags over their thresholds)", "",
                  *_table([(m, n, share(n, ok)) for m, n in stats.moods.most_common(30)], ("mood", "tracks", "share")),
                  ""]
        if "mood_genre" in plots:
            lines += ["![mood x genre](mood_genre.png)", ""]
    if "scores" in plots:
        lines += ["## Confidence", "", "How sure the model is: the top genre's probability and the highest mood "
                  "probability per track.", "", "![scores](scores.png)", ""]
    lines += ["## Failures", ""]
    if stats.reasons:
        lines += [*_table([(r, n, share(n, stats.rows)) for r, n in stats.reasons.most_common()],
                          ("reason", "tracks", "share of all")), "", "![failures](failures.png)", ""]
    else:
        lines += ["No track failed.", ""]
    if "tagged_over_time" in plots:
        lines += ["## Tagging over time", "", "![tagged over time](tagged_over_time.png)", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class ReportSummary:
    directory: str
    model_id: str
    rows: int
    failed: int
    seconds: float

    def to_dict(self) -> dict:
        return {"report": str(Path(self.directory) / "report.md"), "model_id": self.model_id, "rows": self.rows,
                "failed": self.failed, "seconds": round(self.seconds, 2)}


def write_report(cfg: ReportConfig) -> ReportSummary:
    """Scan one partition, draw the plots and write ``report.md`` + ``summary.json`` into ``cfg.output``."""
    tick = time.perf_counter()
    if not cfg.predictions:
        raise ValueError("give --predictions")
    model_id, partition = resolve_partition(cfg.predictions, cfg.model_id)
    stats = collect(partition, cfg)
    directory = Path(cfg.output)
    directory.mkdir(parents=True, exist_ok=True)
    plots = _plots(stats, directory)
    (directory / "report.md").write_text(render(stats, model_id, cfg.predictions, plots))
    summary = {"model_id": model_id, "rows": stats.rows, "failed": stats.failed, "genres": dict(stats.genres),
               "moods": dict(stats.moods), "failures": dict(stats.reasons),
               "mood_genre": [{"mood": m, "genre": g, "tracks": n} for (m, g), n in stats.mood_genre.items()],
               "genre_score_hist": stats.genre_score.tolist(), "top_mood_score_hist": stats.top_mood_score.tolist()}
    (directory / "summary.json").write_text(dumps(summary, indent=2))
    log.info("catalog report: %d tracks (%d failed) -> %s", stats.rows, stats.failed, directory / "report.md")
    return ReportSummary(str(directory), model_id, stats.rows, stats.failed, time.perf_counter() - tick)
