"""The run's pictures: confusion matrices, per-label bars, ROC/PR curves, learning curves.

Why apart from the metrics: metrics run inside Ray Train workers every epoch and must not
import matplotlib; plots are drawn once per run, on the driver, with the Agg backend (no
screen on a cluster). :func:`pyplot` is the one place that backend is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn import metrics as skm

from mgc.evaluation.scoring import Evaluation

LEGEND_MAX_LABELS = 15
"""Above this many labels the ROC/PR legend names only the macro averages."""


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str, path: str | Path) -> Path:
    """Draw a confusion matrix (rows: truth, columns: prediction) to a PNG."""
    plt = pyplot()
    matrix = np.asarray(matrix)
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_history(history: Sequence[dict], path: str | Path) -> Path:
    """Learning curves: training loss and validation score per epoch."""
    plt = pyplot()

    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h.get("val_score", float("nan")) for h in history], "s--", color="tab:orange",
             label="validation score")
    ax2.set_ylabel("validation score")
    fig.legend(loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only; clusters have no screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class(result: dict, title: str, path: str | Path) -> Path:
    """Per-label bars from a :func:`task_metrics` result: precision, recall and F1 (the
    decisions the metrics judged), with the one-vs-rest ROC-AUC as a marker and each
    label's support under its name."""
    plt = pyplot()
    per_label = result.get("per_label") or {}
    if not per_label:
        raise ValueError(f"{title}: the metrics carry no per-label scores (no tracks?)")
    names = list(per_label)
    n = len(names)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(min(40.0, max(6.0, 0.7 * n + 2)), 4.5))
    width = 0.27
    for offset, key, color in ((-width, "precision", "tab:blue"), (0.0, "recall", "tab:orange"),
                               (width, "f1", "tab:green")):
        ax.bar(x + offset, [per_label[name][key] for name in names], width, label=key, color=color)
    auc = [per_label[name]["roc_auc"] for name in names]
    if any(v is not None for v in auc):
        ax.plot(x, [np.nan if v is None else v for v in auc], "kD", markersize=5, label="ROC-AUC")
    ax.set_xticks(x, [f"{name}\n(n={per_label[name]['support']})" for name in names],
                  rotation=45 if n > 8 else 0, ha="right" if n > 8 else "center", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    kind = result.get("type") or ("multiclass" if "confusion_matrix" in result else "multilabel")
    decision = "top-1 label" if kind == "multiclass" else "tags over their thresholds"
    ax.set_title(f"{title}: per-label scores ({decision})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_roc_pr(truth: np.ndarray, probs: np.ndarray, labels: Sequence[str], title: str, path: str | Path) -> Path:
    """One-vs-rest ROC and precision-recall curves per label, side by side.

    Labels without both positives and negatives have no curve and are left out; the
    legend gives each drawn label's AUC (up to :data:`LEGEND_MAX_LABELS` labels) and the
    macro ROC-AUC / PR-AUC over the drawn labels (the numbers :func:`task_metrics` reports).
    """
    plt = pyplot()
    truth = np.asarray(truth, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float32)
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    drawable = [k for k in range(len(labels)) if len(truth) and 0 < truth[:, k].sum() < len(truth)]
    named = len(drawable) <= LEGEND_MAX_LABELS
    style = {} if named else {"linewidth": 0.8, "alpha": 0.5}
    roc_scores, pr_scores = [], []
    for k in drawable:
        positive = truth[:, k] > 0
        fpr, tpr, _ = skm.roc_curve(positive, probs[:, k])
        precision, recall, _ = skm.precision_recall_curve(positive, probs[:, k])
        roc_scores.append(float(skm.roc_auc_score(positive, probs[:, k])))
        pr_scores.append(float(skm.average_precision_score(positive, probs[:, k])))
        roc_ax.plot(fpr, tpr, label=f"{labels[k]} ({roc_scores[-1]:.2f})" if named else None, **style)
        pr_ax.step(recall, precision, where="post", label=f"{labels[k]} ({pr_scores[-1]:.2f})" if named else None,
                   **style)
    roc_ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    roc_ax.set_xlabel("false positive rate")
    roc_ax.set_ylabel("true positive rate")
    pr_ax.set_xlabel("recall")
    pr_ax.set_ylabel("precision")
    for ax, name, scores in ((roc_ax, "ROC", roc_scores), (pr_ax, "PR", pr_scores)):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if scores:
            ax.plot([], [], " ", label=f"macro {name}-AUC {np.mean(scores):.3f}")
            ax.legend(loc="lower right" if name == "ROC" else "lower left", fontsize=7)
        else:
            ax.text(0.5, 0.5, "no label with both positives and negatives", ha="center", va="center",
                    fontsize=9, transform=ax.transAxes)
        skipped = len(labels) - len(drawable)
        ax.set_title(f"{title}: {name}" + (f" ({skipped} label(s) without curve)" if skipped else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_plots(evaluation: Evaluation, history: list[dict], directory: str | Path) -> list[Path]:
    """The run's PNGs, for every split and task: ``confusion_<task>_<split>.png``
    (multiclass), ``per_class_<task>_<split>.png`` (per-label precision/recall/F1),
    ``roc_pr_<task>_<split>.png`` (when ``evaluation.predictions`` holds the scores), and
    ``learning_curves.png`` when there is a history."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for split, per_task in evaluation.metrics.items():
        for task, result in per_task.items():
            name = f"{task}_{split}.png"
            title = f"{task} ({split})"
            if "confusion_matrix" in result:
                written.append(plot_confusion_matrix(
                    result["confusion_matrix"], result["labels"], title, directory / f"confusion_{name}",
                ))
            if result.get("per_label"):
                written.append(plot_per_class(result, title, directory / f"per_class_{name}"))
            scores = evaluation.predictions.get(split, {}).get(task)
            if scores is not None and len(scores.truth):
                written.append(plot_roc_pr(scores.truth, scores.probs, result["labels"], title,
                                           directory / f"roc_pr_{name}"))
    if history:
        written.append(plot_history(history, directory / "learning_curves.png"))
    return written
