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


def per_label_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    task_type: str,
    labels: Sequence[str],
    thresholds: Sequence[float] | None = None,
) -> dict[str, dict]:
    """Scores of every label: ``{label: {precision, recall, f1, support, roc_auc, pr_auc}}``.

    Decisions are the top-1 label (multiclass) or each tag over its threshold
    (multilabel, 0.5 when none is given; the threshold is reported too). ``support`` is
    the number of tracks carrying the label. ``roc_auc``/``pr_auc`` are one-vs-rest and
    ``None`` for a label without both positives and negatives. Precision, recall and F1
    are 0 where undefined, as sklearn's ``zero_division=0`` counts them in the macro F1.
    """
    y_true = np.asarray(y_true, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float32)
    if task_type == "multiclass":
        pred = np.zeros_like(probs, dtype=bool)
        if len(probs):
            pred[np.arange(len(probs)), probs.argmax(axis=1)] = True
        cut = None
    else:
        cut = np.asarray(thresholds if thresholds is not None else [0.5] * len(labels), dtype=np.float32)
        pred = probs >= cut
    result: dict[str, dict] = {}
    for k, label in enumerate(labels):
        truth = y_true[:, k] > 0
        tp = int((truth & pred[:, k]).sum())
        n_pred, support = int(pred[:, k].sum()), int(truth.sum())
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / support if support else 0.0
        both = 0 < support < len(truth)
        scores = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0,
            "support": support,
            "roc_auc": float(skm.roc_auc_score(truth, probs[:, k])) if both else None,
            "pr_auc": float(skm.average_precision_score(truth, probs[:, k])) if both else None,
        }
        if cut is not None:
            scores["threshold"] = float(cut[k])
        result[str(label)] = scores
    return result


def _macro(per_label: dict[str, dict], key: str) -> float | None:
    """Mean of ``key`` over the labels where it is defined (None when none is)."""
    scores = [s[key] for s in per_label.values() if s[key] is not None]
    return float(np.mean(scores)) if scores else None


def task_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    task_type: str,
    labels: Sequence[str],
    thresholds: Sequence[float] | None = None,
    top_k: int = 3,
) -> dict:
    """Metrics for one task on one split (DESIGN section 4).

    Headline numbers at the top level (``roc_auc``/``pr_auc`` are macro averages over
    labels with positives and negatives), every label's own scores under ``per_label``
    (see :func:`per_label_metrics`).
    """
    y_true = np.asarray(y_true, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float32)
    result: dict = {"n_tracks": int(len(y_true)), "labels": list(labels), "type": task_type}
    if len(y_true) == 0:
        return result
    per_label = per_label_metrics(y_true, probs, task_type, labels, thresholds)
    result["top_k"] = int(min(top_k, probs.shape[1]))
    result["top_k_accuracy"] = top_k_accuracy(y_true, probs, top_k)
    result["roc_auc"] = _macro(per_label, "roc_auc")
    result["pr_auc"] = _macro(per_label, "pr_auc")
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
    result["per_label"] = per_label
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class(result: dict, title: str, path: str | Path) -> Path:
    """Per-label bars from a :func:`task_metrics` result: precision, recall and F1 (the
    decisions the metrics judged), with the one-vs-rest ROC-AUC as a marker and each
    label's support under its name."""
    plt = _pyplot()
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


LEGEND_MAX_LABELS = 15
"""Above this many labels the ROC/PR legend names only the macro averages."""


def plot_roc_pr(truth: np.ndarray, probs: np.ndarray, labels: Sequence[str], title: str, path: str | Path) -> Path:
    """One-vs-rest ROC and precision-recall curves per label, side by side.

    Labels without both positives and negatives have no curve and are left out; the
    legend gives each drawn label's AUC (up to :data:`LEGEND_MAX_LABELS` labels) and the
    macro ROC-AUC / PR-AUC over the drawn labels (the numbers :func:`task_metrics` reports).
    """
    plt = _pyplot()
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
