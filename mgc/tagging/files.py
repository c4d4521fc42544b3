"""Tag a few of one's own songs from the command line: ``mgc predict FILE... --checkpoint DIR``.

Why without Ray: for a handful of files, starting a cluster costs more than the work; the
decoder, front end and aggregation are the same ones the catalog job uses, so the numbers
match what `jobs/tag.py` would write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mgc.audio.decode import AudioError
from mgc.config import AudioConfig
from mgc.audio.track import load_track
from mgc.models.checkpoint import LoadedCheckpoint, load_checkpoint
from mgc.audio.logmel import log_mel
from mgc.evaluation.plots import pyplot
from mgc.models.inference import EMBEDDING, predict_tracks


@dataclass(frozen=True)
class FilePrediction:
    """Scores of one file: per task, (tag, probability) pairs best first; or an error."""

    path: str
    scores: dict[str, list[tuple[str, float]]]
    mel: np.ndarray | None = None
    error: str | None = None
    # The track's embedding as `jobs/tag.py --embeddings` writes it (each checkpoint's,
    # in order, side by side); only when asked.
    embedding: np.ndarray | None = None
    # The front end the mel was made with (for the plot's axes).
    audio: AudioConfig | None = None


def predict_files(paths: Sequence[str], checkpoints: Sequence[str | LoadedCheckpoint],
                  embeddings: bool = False) -> list[FilePrediction]:
    """Decode and score each file with every checkpoint (each task from one checkpoint)."""
    loaded: list[LoadedCheckpoint] = [c if isinstance(c, LoadedCheckpoint) else load_checkpoint(c)
                                      for c in checkpoints]
    audio = loaded[0].meta.audio
    if any(c.meta.audio != audio for c in loaded[1:]):
        raise ValueError("the checkpoints use different audio front ends; predict with each separately")
    results = []
    for path in paths:
        try:
            mel = log_mel(load_track(str(path), audio).windows, audio)
        except AudioError as err:
            results.append(FilePrediction(str(path), {}, error=str(err)))
            continue
        scores: dict[str, list[tuple[str, float]]] = {}
        parts = []
        for checkpoint in loaded:
            types = {task: spec.type for task, spec in checkpoint.meta.tasks.items()}
            probs = predict_tracks(checkpoint.model, [mel], types, embeddings=embeddings)
            for task, spec in checkpoint.meta.tasks.items():
                order = np.argsort(-probs[task][0])
                scores[task] = [(spec.labels[k], float(probs[task][0][k])) for k in order]
            parts.extend([probs[EMBEDDING][0]] if embeddings else [])
        results.append(FilePrediction(str(path), scores, mel=mel, audio=audio,
                                      embedding=np.concatenate(parts) if parts else None))
    return results


def format_table(results: Sequence[FilePrediction], top_k: int = 3) -> str:
    """One line per file: its top-k tags per task with probabilities."""
    tasks = sorted({task for r in results for task in r.scores})
    width = max([len(Path(r.path).name) for r in results] + [4])
    lines = [f"{'file':<{width}}  " + "  ".join(f"{task:<36}" for task in tasks)]
    for r in results:
        if r.error:
            lines.append(f"{Path(r.path).name:<{width}}  error: {r.error}")
            continue
        cells = [", ".join(f"{tag} {p:.2f}" for tag, p in r.scores[task][:top_k]) for task in tasks]
        lines.append(f"{Path(r.path).name:<{width}}  " + "  ".join(f"{c:<36}" for c in cells))
    return "\n".join(lines)


def plot_predictions(results: Sequence[FilePrediction], path: str | Path, top_k: int = 8) -> Path:
    """Per file: its log-mel spectrogram (windows side by side, time in seconds, frequency
    in Hz on the file's front end's mel scale) and probability bars per task."""
    plt = pyplot()

    shown = [r for r in results if r.error is None]
    if not shown:
        raise ValueError("no file could be decoded: nothing to plot")
    tasks = sorted({task for r in shown for task in r.scores})
    fig, axes = plt.subplots(len(shown), 1 + len(tasks), squeeze=False,
                             figsize=(5 + 3.2 * len(tasks), 2.8 * len(shown)),
                             gridspec_kw={"width_ratios": [3] + [1] * len(tasks)})
    for row, r in zip(axes, shown):
        draw_mel(row[0], np.concatenate(list(r.mel), axis=1), r.audio or AudioConfig())
        row[0].set_title(Path(r.path).name)
        for ax, task in zip(row[1:], tasks):
            pairs = r.scores.get(task, [])[:top_k][::-1]
            ax.barh([tag for tag, _ in pairs], [p for _, p in pairs], color="tab:blue")
            ax.set_xlim(0, 1)
            ax.set_title(task)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def draw_mel(ax, mel: np.ndarray, audio: AudioConfig) -> None:
    """A ``[n_mels, frames]`` log-mel on ``ax`` with time in seconds and mel-bin centres in Hz."""
    import librosa

    seconds = mel.shape[1] * audio.hop_length / audio.sample_rate
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, mel.shape[0]))
    centres = librosa.mel_frequencies(n_mels=mel.shape[0] + 2, fmin=audio.fmin,
                                      fmax=audio.fmax or audio.sample_rate / 2)[1:-1]
    ticks = np.linspace(0, mel.shape[0] - 1, 6).astype(int)
    ax.set_yticks(ticks + 0.5, [f"{centres[t]:.0f}" for t in ticks])
    ax.set_ylabel("Hz (mel scale)")
    ax.set_xlabel("seconds")
