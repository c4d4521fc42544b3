"""Track-level metrics, threshold tuning and plots.

Why track-level: a model scores 3 s windows, but users tag tracks, and window-level
numbers overstate accuracy when windows of one song are correlated. Everything here takes
one row per track: ``y_true`` multi-hot ``[tracks, labels]`` and ``probs`` the mean of the
track's window probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn import metrics as skm


def aggregate_mean(window_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean probability over each track's windows: list of ``[windows, labels]`` -> ``[tracks, labels]``."""
    return np.stack([np.asarray(p, dtype=np.float32).mean(axis=0) for p in window_probs])


def aggregate_vote(window_probs: Sequence[np.ndarray], task_type: str) -> np.ndarray:
    """Majority vote over each track's windows, as vote shares ``[tracks, labels]``.

    Multiclass: the share of windows whose top label is each label. Multilabel: the
    share of windows where each tag's probability reaches 0.5. A track's voted label is
    the argmax of its shares (ties go to the lower label index).
    """
    shares = []
    for probs in window_probs:
        probs = np.asarray(probs, dtype=np.float32)
        if task_type == "multiclass":
            votes = np.zeros_like(probs)
            votes[np.arange(len(probs)), probs.argmax(axis=1)] = 1.0
        else:
            votes = (probs >= 0.5).astype(np.float32)
        shares.append(votes.mean(axis=0))
    return np.stack(shares)


def _per_label_scores(y_true: np.ndarray, probs: np.ndarray, scorer) -> float | None:
    """Macro average of ``scorer`` over labels that have positives and negatives."""
    scores = [
        scorer(y_true[:, k], probs[:, k])
        for k in range(y_true.shape[1])
        if 0 < y_true[:, k].sum() < len(y_true)
    ]
    return float(np.mean(scores)) if scores else None


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of tracks with at least one true label among the k highest scores."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    hits = np.take_along_axis(y_true, top, axis=1).max(axis=1) > 0
    return float(hits.mean())


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-label threshold that maximises F1 on (validation) data.

    Labels without positives keep ``default``: there is nothing to tune them on.
    """
    thresholds = np.full(y_true.shape[1], default, dtype=np.float32)
    for k in range(y_true.shape[1]):
        if y_true[:, k].sum() == 0:
            continue
        precision, recall, cuts = skm.precision_recall_curve(y_true[:, k], probs[:, k])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f1[:-1])) if len(cuts) else None
        if best is not None:
            thresholds[k] = float(cuts[best])
    return thresholds


def task_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    task_type: str,
    labels: Sequence[str],
    thresholds: Sequence[float] | None = None,
    top_k: int = 3,
) -> dict:
    """Metrics for one task on one split (DESIGN section 4)."""
    y_true = np.asarray(y_true, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float32)
    result: dict = {"n_tracks": int(len(y_true)), "labels": list(labels)}
    if len(y_true) == 0:
        return result
    result["top_k"] = int(min(top_k, probs.shape[1]))
    result["top_k_accuracy"] = top_k_accuracy(y_true, probs, top_k)
    result["roc_auc"] = _per_label_scores(y_true, probs, skm.roc_auc_score)
    result["pr_auc"] = _per_label_scores(y_true, probs, skm.average_precision_score)
    if task_type == "multiclass":
        truth = y_true.argmax(axis=1)
        pred = probs.argmax(axis=1)
        result["accuracy"] = float((truth == pred).mean())
        result["f1_macro"] = float(
            skm.f1_score(truth, pred, labels=range(len(labels)), average="macro", zero_division=0)
        )
        result["confusion_matrix"] = skm.confusion_matrix(
            truth, pred, labels=range(len(labels))
        ).tolist()
    else:
        cut = np.asarray(thresholds if thresholds is not None else [0.5] * len(labels))
        pred = (probs >= cut).astype(np.float32)
        result["f1_macro"] = float(skm.f1_score(y_true, pred, average="macro", zero_division=0))
        result["f1_micro"] = float(skm.f1_score(y_true, pred, average="micro", zero_division=0))
        result["accuracy"] = float((pred == y_true).all(axis=1).mean())
    return result


def headline_score(task_results: dict[str, dict]) -> float:
    """One number to pick the best epoch: mean over tasks of accuracy (multiclass) or
    ROC-AUC (multilabel, falling back to F1)."""
    scores = []
    for result in task_results.values():
        if "confusion_matrix" in result:
            scores.append(result["accuracy"])
        elif result.get("roc_auc") is not None:
            scores.append(result["roc_auc"])
        elif "f1_macro" in result:
            scores.append(result["f1_macro"])
    return float(np.mean(scores)) if scores else float("nan")


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str, path: str | Path) -> Path:
    """Draw a confusion matrix (rows: truth, columns: prediction) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
