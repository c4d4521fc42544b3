"""Score windows with a model and aggregate them per track.

Why here: evaluation after training and the batch tagging job must turn windows into track
probabilities the same way (mean probability over windows, docs/architecture.md, "Quality bar").
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from mgc.models.zoo import TaggerModel, probabilities

EMBEDDING = "embedding"


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


@torch.inference_mode()
def predict_windows(
    model: TaggerModel,
    inputs: np.ndarray,
    task_types: Mapping[str, str],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    frontend: torch.nn.Module | None = None,
    embeddings: bool = False,
) -> dict[str, np.ndarray]:
    """Probabilities per window: ``{task: [windows, labels]}`` (+ ``embedding`` when asked).

    ``inputs`` are log-mels ``[windows, n_mels, frames]``, or raw audio windows
    ``[windows, samples]`` when ``frontend`` (:func:`mgc.audio.logmel.torch_frontend`) is given:
    then the mels are computed on ``device``, next to the model.
    """
    model.eval()
    outputs: dict[str, list[np.ndarray]] = {task: [] for task in task_types}
    if embeddings:
        outputs[EMBEDDING] = []
    for start in range(0, len(inputs), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size], dtype=np.float32))
        chunk = chunk.to(device)
        mels = frontend(chunk) if frontend is not None else chunk
        features = model.embed(mels)
        logits = model.classify(features)
        for task, task_type in task_types.items():
            outputs[task].append(probabilities(logits[task].float(), task_type).cpu().numpy())
        if embeddings:
            outputs[EMBEDDING].append(features.float().cpu().numpy())
    return {key: np.concatenate(parts) for key, parts in outputs.items() if parts}


def predict_tracks(
    model: TaggerModel,
    track_inputs: Sequence[np.ndarray],
    task_types: Mapping[str, str],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    frontend: torch.nn.Module | None = None,
    embeddings: bool = False,
) -> dict[str, np.ndarray]:
    """Mean over each track's windows: list of ``[windows, ...]`` -> ``{key: [tracks, ...]}``.

    All windows of the given tracks are scored in shared batches, then split back.
    """
    counts = [len(m) for m in track_inputs]
    if not counts or min(counts) == 0:
        raise ValueError("need at least one track, each with at least one window")
    stacked = np.concatenate([np.asarray(m) for m in track_inputs])
    window_scores = predict_windows(model, stacked, task_types, batch_size, device, frontend, embeddings)
    bounds = np.cumsum(counts)[:-1]
    return {key: aggregate_mean(np.split(values, bounds)) for key, values in window_scores.items()}
