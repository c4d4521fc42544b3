"""Track-level metrics and threshold tuning (no plotting: this runs inside Ray Train workers).

Why track-level: a model scores 3 s windows, but users tag tracks, and window-level
numbers overstate accuracy when windows of one song are correlated. Everything here takes
one row per track: ``y_true`` multi-hot ``[tracks, labels]`` and ``probs`` the mean of the
track's window probabilities.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as skm


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
    """Metrics for one task on one split (docs/architecture.md, "Quality bar").

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


