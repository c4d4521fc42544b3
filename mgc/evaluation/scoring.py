"""Score decoded tracks with a model and turn the scores into track-level metrics.

Why one place: the per-epoch validation inside Ray Train workers and the final
evaluation of the best checkpoint must compute the same track-level numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import numpy as np
import ray
import torch

from mgc.models.checkpoint import LoadedCheckpoint, unwrap
from mgc.config import TaskSpec
from mgc.evaluation.metrics import headline_score, task_metrics, tune_thresholds
from mgc.models.inference import aggregate_mean, aggregate_vote
from mgc.models.inference import predict_windows
from mgc.labels import mask_column, target_column, targets_matrix


@dataclass(frozen=True)
class Predictions:
    """Track-level truth and scores of one task, labeled tracks only.

    ``probs`` is the mean window probability (the headline aggregation), ``votes`` the
    majority-vote shares over windows; both are reported.
    """

    truth: np.ndarray
    probs: np.ndarray
    votes: np.ndarray


def collect_predictions(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, np.ndarray]],
    tasks: Mapping[str, TaskSpec],
    device: str | torch.device = "cpu",
) -> dict[str, Predictions]:
    """Mean-probability and vote aggregation per track and task, for tracks labeled in that task."""
    task_types = {task: spec.type for task, spec in tasks.items()}
    parts: dict[str, dict[str, list[np.ndarray]]] = {t: {"truth": [], "probs": [], "votes": []} for t in tasks}
    for batch in batches:
        mels = [np.asarray(m) for m in batch["mel"]]
        window_scores = predict_windows(unwrap(model), np.concatenate(mels), task_types, device=device)
        bounds = np.cumsum([len(m) for m in mels])[:-1]
        for task, spec in tasks.items():
            keep = np.asarray(batch[mask_column(task)]) > 0
            per_track = np.split(window_scores[task], bounds)
            parts[task]["truth"].append(targets_matrix(batch[target_column(task)])[keep])
            parts[task]["probs"].append(aggregate_mean(per_track)[keep])
            parts[task]["votes"].append(aggregate_vote(per_track, spec.type)[keep])
    return {
        task: Predictions(*(np.concatenate(p[key]) for key in ("truth", "probs", "votes")))
        for task, p in parts.items()
        if p["truth"]
    }


VOTE_KEYS = ("accuracy", "top_k_accuracy", "f1_macro")


def metrics_for(
    predictions: Mapping[str, Predictions], tasks: Mapping[str, TaskSpec], top_k: int = 3
) -> dict[str, dict]:
    """Metrics per task (docs/architecture.md, "Quality bar"): mean-probability aggregation, plus the
    majority-vote figures under ``"vote"``."""
    results = {}
    for task, p in predictions.items():
        spec = tasks[task]
        result = task_metrics(p.truth, p.probs, spec.type, spec.labels, spec.thresholds, top_k)
        vote = task_metrics(p.truth, p.votes, spec.type, spec.labels, None, top_k)
        result["vote"] = {key: vote[key] for key in VOTE_KEYS if key in vote}
        results[task] = result
    return results


def validation_summary(results: Mapping[str, dict]) -> dict[str, float]:
    """The per-epoch validation figures of a history entry: ``val_score`` (what picks the
    best epoch) and ``val_<task>_<accuracy|roc_auc|f1_macro>``."""
    summary = {"val_score": headline_score(results)}
    for task, result in results.items():
        for key in ("accuracy", "roc_auc", "f1_macro"):
            if result.get(key) is not None:
                summary[f"val_{task}_{key}"] = result[key]
    return summary


@dataclass(frozen=True)
class Evaluation:
    """Final metrics per split and task specs carrying thresholds tuned on validation.

    ``predictions`` (``{split: {task: Predictions}}``) keeps the track-level scores the
    metrics came from, for the ROC/PR plots; empty when the caller did not keep them.
    """

    tasks: dict[str, TaskSpec]
    metrics: dict[str, dict[str, dict]]
    predictions: dict[str, dict[str, Predictions]] = field(default_factory=dict)


def evaluate_predictions(
    tasks: Mapping[str, TaskSpec], predictions: Mapping[str, Mapping[str, Predictions]], top_k: int = 3
) -> Evaluation:
    """Metrics of track-level ``predictions`` (``{split: {task: Predictions}}``).

    Multilabel thresholds are tuned per tag on validation (when there is one) and then
    applied, unchanged, to test: test data never influences a decision threshold.
    """
    tasks = dict(tasks)
    for task, spec in tasks.items():
        if spec.type == "multilabel" and task in predictions.get("validation", {}):
            p = predictions["validation"][task]
            tasks[task] = replace(spec, thresholds=tuple(float(t) for t in tune_thresholds(p.truth, p.probs)))
    metrics = {split: metrics_for(preds, tasks, top_k) for split, preds in predictions.items()}
    return Evaluation(tasks=tasks, metrics=metrics, predictions=dict(predictions))


def evaluate_splits(
    loaded: LoadedCheckpoint, datasets: Mapping[str, ray.data.Dataset], top_k: int = 3, batch_size: int = 32
) -> Evaluation:
    """Evaluate a checkpoint on the decoded validation and test splits (:func:`evaluate_predictions`)."""
    tasks = dict(loaded.meta.tasks)
    predictions = {
        split: collect_predictions(loaded.model, datasets[split].iter_batches(batch_size=batch_size, batch_format="numpy"), tasks)
        for split in ("validation", "test")
        if split in datasets and datasets[split].count() > 0
    }
    return evaluate_predictions(tasks, predictions, top_k)
