"""Score windows with a model and aggregate them per track.

Why here: evaluation after training and the batch tagging job must turn windows into track
probabilities the same way (mean probability over windows, DESIGN section 4).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from mgc.evaluate import aggregate_mean
from mgc.models import TaggerModel, probabilities


@torch.inference_mode()
def predict_windows(
    model: TaggerModel,
    mels: np.ndarray,
    task_types: Mapping[str, str],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Probabilities per window: ``[windows, n_mels, frames]`` -> ``{task: [windows, labels]}``."""
    model.eval()
    outputs: dict[str, list[np.ndarray]] = {task: [] for task in task_types}
    for start in range(0, len(mels), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(mels[start : start + batch_size], dtype=np.float32))
        logits = model(chunk.to(device))
        for task, task_type in task_types.items():
            outputs[task].append(probabilities(logits[task].float(), task_type).cpu().numpy())
    return {
        task: np.concatenate(parts) if parts else np.zeros((0, model.heads[task].out_features), np.float32)
        for task, parts in outputs.items()
    }


def predict_tracks(
    model: TaggerModel,
    track_mels: Sequence[np.ndarray],
    task_types: Mapping[str, str],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Mean window probability per track: list of ``[windows, ...]`` -> ``{task: [tracks, labels]}``.

    All windows of the given tracks are scored in shared batches, then split back.
    """
    counts = [len(m) for m in track_mels]
    if not counts or min(counts) == 0:
        raise ValueError("need at least one track, each with at least one window")
    stacked = np.concatenate([np.asarray(m) for m in track_mels])
    window_probs = predict_windows(model, stacked, task_types, batch_size, device)
    bounds = np.cumsum(counts)[:-1]
    return {task: aggregate_mean(np.split(probs, bounds)) for task, probs in window_probs.items()}
