"""``report.md``: one page per run that a person reads first.

Why Markdown: it renders on GitHub, in JupyterLab and in most object-store browsers, it
diffs, and it embeds the run's PNGs by relative link, so the report stays valid when the
run directory is copied or uploaded as a whole. It is built only from ``metrics.json``'s
content and the plot files, so a training run, the feature baseline and the evaluate
job (docs/architecture.md, "Jobs") share one report.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

REPORT_FILE = "report.md"

SPLIT_ORDER = ("train", "validation", "test", "all")
"""Metric sections in this order; any other split follows, by name."""

MISSING = "–"


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return MISSING if value != value else f"{value:.{digits}f}"  # NaN
    return str(value)


def _cell(text: Any) -> str:
    """Markdown table cell: pipes escaped, no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], text_columns: int = 1) -> list[str]:
    """A Markdown table; the first ``text_columns`` columns left-aligned, numbers right."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def metric_splits(metrics: dict) -> list[str]:
    """Keys of ``metrics`` that hold ``{task: task_metrics}`` (the splits), in report order."""
    found = [
        key for key, value in metrics.items()
        if isinstance(value, dict) and value
        and all(isinstance(v, dict) and "n_tracks" in v for v in value.values())
    ]
    return sorted(found, key=lambda k: (SPLIT_ORDER.index(k) if k in SPLIT_ORDER else len(SPLIT_ORDER), k))


def _task_type(result: dict) -> str:
    return result.get("type") or ("multiclass" if "confusion_matrix" in result else "multilabel")


def _summary(metrics: dict) -> list[str]:
    config = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    baseline = metrics.get("baseline") if isinstance(metrics.get("baseline"), dict) else {}
    items: list[tuple[str, str]] = []
    arch = metrics.get("arch") or config.get("arch") or baseline.get("arch")
    if arch:
        items.append(("architecture", str(arch)))
    for key, label in (("checkpoint", "checkpoint"), ("model_id", "model id"), ("manifest", "manifest")):
        if metrics.get(key):
            items.append((label, f"`{metrics[key]}`"))
    if not metrics.get("manifest") and config.get("manifest"):
        items.append(("manifest", f"`{config['manifest']}`"))
    if metrics.get("evaluated_split"):
        items.append(("evaluated split", str(metrics["evaluated_split"])))
    history = metrics.get("history") if isinstance(metrics.get("history"), list) else []
    epochs = config.get("epochs") or (len(history) or None)
    if epochs:
        ran = f" ({len(history)} in the history)" if history and len(history) != epochs else ""
        items.append(("epochs", f"{epochs}{ran}"))
    if metrics.get("best_epoch") is not None:
        items.append(("best epoch", str(metrics["best_epoch"])))
    counts = metrics.get("counts")
    if isinstance(counts, dict) and counts:
        items.append(("tracks", ", ".join(f"{k} {v}" for k, v in counts.items())))
    skipped = metrics.get("skipped")
    if isinstance(skipped, list):
        reasons = Counter(str(row.get("error") or "unknown").split(":")[0] for row in skipped)
        tally = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
        items.append(("skipped", f"{len(skipped)}" + (f" ({tally})" if tally else "")))
    unknown = metrics.get("unknown_labels")
    if isinstance(unknown, dict) and any(unknown.values()):
        items.append(("labels unknown to the checkpoint (ignored)", "; ".join(
            f"{task}: " + ", ".join(f"{label} {n}" for label, n in labels.items())
            for task, labels in unknown.items() if labels)))
    seconds = metrics.get("seconds")
    if isinstance(seconds, (int, float)):
        items.append(("seconds", f"{seconds:.1f}"))
    elif isinstance(baseline.get("seconds"), dict):
        items.append(("seconds", ", ".join(f"{k} {_number(v, 1)}" for k, v in baseline["seconds"].items())))
    return [f"- **{label}**: {value}" for label, value in items]


def _split_table(per_task: dict) -> list[str]:
    top_ks = {r.get("top_k") for r in per_task.values() if r.get("top_k")}
    same_k = len(top_ks) == 1  # else k (capped at each task's label count) goes into the cells
    top_k = f"top-{next(iter(top_ks))} accuracy" if same_k else "top-k accuracy"
    header = ["task", "type", "tracks", "accuracy", top_k, "F1 macro", "ROC-AUC", "PR-AUC",
              "vote accuracy", "vote F1 macro"]
    rows = []
    for task, result in per_task.items():
        vote = result.get("vote") or {}
        rows.append([task, _task_type(result), result.get("n_tracks", 0), _number(result.get("accuracy")),
                     _number(result.get("top_k_accuracy")) + ("" if same_k or not result.get("top_k")
                                                               else f" (k={result['top_k']})"),
                     _number(result.get("f1_macro")),
                     _number(result.get("roc_auc")), _number(result.get("pr_auc")),
                     _number(vote.get("accuracy")), _number(vote.get("f1_macro"))])
    lines = _table(header, rows, text_columns=2)
    multilabel = {t: r for t, r in per_task.items() if _task_type(r) == "multilabel" and "f1_micro" in r}
    if multilabel:
        lines += ["", "Multilabel: accuracy is exact-match over all tags; F1 uses the per-tag decision "
                  "thresholds tuned on validation (0.5 where none was tuned); F1 micro: " + ", ".join(
                      f"{t} {_number(r['f1_micro'])}" for t, r in multilabel.items()) + "."]
    return lines


def _per_label_details(split: str, task: str, result: dict) -> list[str]:
    per_label = result.get("per_label") or {}
    if not per_label:
        return []
    threshold = any("threshold" in s for s in per_label.values())
    header = ["label", "support", "precision", "recall", "F1", "ROC-AUC", "PR-AUC"] + (["threshold"] if threshold else [])
    rows = [[label, s.get("support"), _number(s.get("precision")), _number(s.get("recall")), _number(s.get("f1")),
             _number(s.get("roc_auc")), _number(s.get("pr_auc"))] + ([_number(s.get("threshold"))] if threshold else [])
            for label, s in per_label.items()]
    return ["", f"<details><summary>{task} ({split}): per label</summary>", "", *_table(header, rows), "",
            "</details>"]


def _plot_groups(directory: Path, plots: Sequence[Path], splits: Sequence[str]) -> list[tuple[str, list[Path]]]:
    """Plots grouped under the split their file name ends with; the others (learning
    curves) first."""
    existing = [Path(p) for p in plots if Path(p).is_file()]
    by_split: dict[str, list[Path]] = {}
    general: list[Path] = []
    for plot in existing:
        split = next((s for s in splits if plot.stem.endswith(f"_{s}")), None)
        (by_split.setdefault(split, []) if split else general).append(plot)
    groups = [("training", general)] if general else []
    groups += [(split, by_split[split]) for split in splits if split in by_split]
    return groups


def _link(directory: Path, plot: Path) -> str:
    try:
        relative = os.path.relpath(plot.resolve(), directory.resolve())
    except ValueError:  # another drive on Windows
        relative = str(plot)
    return relative.replace(os.sep, "/").replace(" ", "%20")


def render_report(directory: str | Path, metrics: dict, plots: Sequence[Path], title: str) -> str:
    """The Markdown text of :func:`write_report`."""
    directory = Path(directory)
    splits = metric_splits(metrics)
    lines = [f"# {title}", ""]
    summary = _summary(metrics)
    if summary:
        lines += ["## Run", "", *summary, ""]
    lines += ["## Metrics", "",
              "Track-level: window probabilities are averaged per track (vote columns: majority vote "
              "over windows instead).", ""]
    if not splits:
        lines += ["No split was evaluated (no decodable, labeled tracks).", ""]
    for split in splits:
        lines += [f"### {split}", "", *_split_table(metrics[split])]
        for task, result in metrics[split].items():
            lines += _per_label_details(split, task, result)
        lines.append("")
    groups = _plot_groups(directory, plots, splits)
    if groups:
        lines += ["## Plots", ""]
        for group, files in groups:
            lines += [f"### {group}", ""]
            for plot in files:
                alt = plot.stem.replace("_", " ")
                lines += [f"![{alt}]({_link(directory, plot)})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(directory: str | Path, metrics: dict, plots: Sequence[Path], title: str) -> Path:
    """Write ``report.md`` into the local ``directory``: the run summary (architecture,
    epochs, track counts, skipped tracks by reason, seconds, best epoch), one table of
    headline metrics per split and task (mean and vote aggregation), per-label tables,
    and the existing ``plots`` embedded by relative link. ``metrics`` is what the run
    wrote to ``metrics.json`` (training run, feature baseline or evaluate job)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REPORT_FILE
    path.write_text(render_report(directory, metrics, plots, title), encoding="utf-8")
    return path
