"""Frozen-embedding probe (``--probe``): heads trained on cached backbone embeddings.

Why: on a few hundred labelled songs, fine-tuning a pretrained audio backbone costs CPU
hours and overfits, while its AudioSet embeddings already separate genres and moods. The
probe embeds every track's windows once (:mod:`mgc.stages.embed`, a Ray Data stage, cached
as Parquet), then trains one linear head per task on them with the CNN's own losses
(:func:`mgc.training.worker.masked_loss`: masked genre + mood, multiclass or multilabel), in
seconds on the driver. The best epoch by validation score is kept, like a CNN run.

What it ships is an ordinary checkpoint: the pretrained backbone with the trained heads
(inputs standardised by the training windows' mean and spread, folded into each head's
weights), the backbone's front end, thresholds tuned on validation. Tagging, `jobs/
evaluate.py` and `mgc predict` use it like any other; its metrics are computed from the
same embeddings, which is what that model computes (the backbone is deterministic in
evaluation mode).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from mgc.io import storage
from mgc.models.checkpoint import CheckpointMeta
from mgc.config import ARCH_AUDIO, TaskSpec, TrainConfig
from mgc.models.efficientat import resolve_weights, sha256_of
from mgc.stages.embed import BackboneSpec, default_cache, embed_tracks
from mgc.config import SPLITS
from mgc.models.zoo import build_model
from mgc.evaluation.artifacts import CHECKPOINT_DIR, write_run_dir
from mgc.training.rundir import TrainingError, TrainResult, final_meta, run_metrics
from mgc.evaluation.scoring import collect_predictions, evaluate_predictions, metrics_for, validation_summary
from mgc.labels import mask_column, target_column
from mgc.training.worker import masked_loss
from mgc.log import get_logger

log = get_logger()


@dataclass(frozen=True)
class ProbeSplit:
    """One split's labelled tracks: window embeddings and the table rows (targets, masks)."""

    windows: list[np.ndarray]
    rows: pd.DataFrame

    def batches(self, size: int = 64):
        """Batches shaped like decoded tracks (``mel`` holds the embeddings), for
        :func:`mgc.evaluation.scoring.collect_predictions`."""
        for start in range(0, len(self.windows), size):
            part = self.rows.iloc[start : start + size]
            batch: dict[str, Any] = {column: part[column].to_numpy() for column in part.columns}
            batch["mel"] = self.windows[start : start + size]
            yield batch


class ProbeHeads(nn.Module):
    """Linear heads over standardised embeddings; ``embed``/``classify`` as a TaggerModel's,
    so the scoring code of every other model scores it too."""

    def __init__(self, dim: int, heads: Mapping[str, int], mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.heads = nn.ModuleDict({task: nn.Linear(dim, n) for task, n in heads.items()})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def classify(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {task: head(features) for task, head in self.heads.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classify(self.embed(x))

    def folded(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per task, (weight, bias) of the same head on raw embeddings:
        ``W (x - m) / s + b = (W / s) x + (b - (W / s) m)``."""
        out = {}
        with torch.no_grad():
            for task, head in self.heads.items():
                weight = head.weight / self.std
                out[task] = (weight.clone(), (head.bias - weight @ self.mean).clone())
        return out


def _weights(cfg: TrainConfig):
    if cfg.arch not in ARCH_AUDIO and not cfg.weights_file:
        raise TrainingError(f"--probe with {cfg.arch} needs --weights-file (a local state_dict of its backbone)")
    path = resolve_weights(cfg.arch, cfg.pretrained, cfg.weights_file) if cfg.arch in ARCH_AUDIO \
        else storage.filesystem_for(cfg.weights_file)[1]
    if path is None:
        raise TrainingError("--probe needs pretrained weights: --weights-file PATH or --pretrained audioset")
    return str(path)


def _split(table: pd.DataFrame, by_id: Mapping[str, np.ndarray], split: str, specs: Mapping[str, TaskSpec]) -> ProbeSplit:
    rows = table[(table["split"] == split) & table["track_id"].astype(str).isin(by_id)].reset_index(drop=True)
    columns = ["track_id"] + [c for task in specs for c in (target_column(task), mask_column(task))]
    return ProbeSplit([by_id[str(t)] for t in rows["track_id"]], rows[columns])


def _window_tensors(split: ProbeSplit, specs: Mapping[str, TaskSpec]):
    """Every window of ``split`` as a training sample, with its track's targets and masks."""
    counts = np.array([len(w) for w in split.windows])
    owner = np.repeat(np.arange(len(counts)), counts)
    x = torch.from_numpy(np.concatenate(split.windows).astype(np.float32))
    targets = {t: torch.from_numpy(np.stack(split.rows[target_column(t)].to_numpy()).astype(np.float32)[owner])
               for t in specs}
    masks = {t: torch.from_numpy(split.rows[mask_column(t)].to_numpy().astype(np.float32)[owner]) for t in specs}
    return x, targets, masks


def fit_heads(train: ProbeSplit, validation: ProbeSplit | None, specs: Mapping[str, TaskSpec], cfg: TrainConfig,
              ) -> tuple[ProbeHeads, list[dict], int]:
    """Train the heads for ``cfg.probe_epochs`` passes; return the best (by validation
    score, else by training loss), the per-epoch history and the best epoch."""
    torch.manual_seed(cfg.seed)
    x, targets, masks = _window_tensors(train, specs)
    mean, std = x.mean(dim=0), x.std(dim=0).clamp(min=1e-4)
    model = ProbeHeads(x.shape[1], {t: len(s.labels) for t, s in specs.items()}, mean, std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.probe_epochs))
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    best: tuple[float, int, dict] | None = None
    for epoch in range(1, cfg.probe_epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        loss_sum = 0.0
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = masked_loss(model(x[idx]), {t: v[idx] for t, v in targets.items()},
                               {t: v[idx] for t, v in masks.items()}, specs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
        schedule.step()
        # No train_samples_per_s: windows/s of a linear head are not comparable with a
        # CNN's; the run's seconds (embedding included) are what a user weighs.
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / len(x), "lr": schedule.get_last_lr()[0]}
        if validation is not None and validation.windows:
            results = metrics_for(collect_predictions(model, validation.batches(), specs), specs, cfg.top_k)
            entry.update(validation_summary(results))
        else:
            entry["val_score"] = -entry["train_loss"]
        history.append(entry)
        if best is None or entry["val_score"] >= best[0]:  # ties: the later, better-fitted epoch
            best = (entry["val_score"], epoch, copy.deepcopy(model.state_dict()))
    assert best is not None
    model.load_state_dict(best[2])
    return model.eval(), history, best[1]


def run_probe(cfg: TrainConfig, table: pd.DataFrame, specs: dict[str, TaskSpec], started: float) -> TrainResult:
    """Embed (or read cached embeddings), fit the heads, write the run like any CNN run."""
    if cfg.probe_epochs < 1:
        raise ValueError(f"--probe-epochs must be >= 1, not {cfg.probe_epochs}")
    weights = _weights(cfg)
    spec = BackboneSpec(cfg.arch, sha256_of(weights), cfg.audio)
    cache = cfg.embedding_cache or default_cache()
    embed_started = time.time()
    embedded = embed_tracks(table, spec, weights, cache, cfg.data, cfg.use_gpu, cfg.pretrained)
    embed_seconds = time.time() - embed_started
    by_id = embedded.embeddings.by_id()
    splits = {split: _split(table, by_id, split, specs) for split in SPLITS}
    counts = {split: len(s.windows) for split, s in splits.items()}
    log.info("probe: %d tracks embedded (%d from the cache) in %.1f s: %s, skipped %d", len(by_id),
             embedded.cached, embed_seconds, counts, len(embedded.skipped))
    if counts["train"] == 0:
        raise TrainingError(f"no embeddable training tracks in {cfg.manifest} ({len(embedded.skipped)} skipped: "
                            f"{embedded.skipped['error'].head(5).tolist()})")
    fit_started = time.time()
    heads, history, best_epoch = fit_heads(splits["train"], splits["validation"] if counts["validation"] else None,
                                           specs, cfg)
    fit_seconds = time.time() - fit_started
    predictions = {split: collect_predictions(heads, splits[split].batches(), specs)
                   for split in ("validation", "test") if counts[split]}
    evaluated = evaluate_predictions(specs, predictions, cfg.top_k)

    model = build_model(cfg.arch, {t: len(s.labels) for t, s in specs.items()}, weights_file=weights)
    with torch.no_grad():
        for task, (weight, bias) in heads.folded().items():
            model.heads[task].weight.copy_(weight)
            model.heads[task].bias.copy_(bias)
    meta = final_meta(CheckpointMeta(arch=cfg.arch, audio=cfg.audio, tasks=specs, name=f"{cfg.arch}-probe"), evaluated)
    probe = {"backbone": spec.describe(), "cache": storage.join(cache, spec.key()), "embedded": embedded.computed,
             "from_cache": embedded.cached, "embed_seconds": round(embed_seconds, 1),
             "fit_seconds": round(fit_seconds, 2), "embedding_dim": int(heads.mean.shape[0])}
    metrics = run_metrics(cfg, evaluated, embedded.skipped, counts, history, best_epoch, started, probe=probe)
    write_run_dir(cfg.output, metrics, evaluated, history, f"mgc probe: {cfg.arch} embeddings on {cfg.manifest}",
                  model.eval(), meta)
    checkpoint = storage.join(cfg.output, CHECKPOINT_DIR)
    log.info("checkpoint: %s", checkpoint)
    return TrainResult(output=cfg.output, checkpoint=checkpoint, metrics=metrics)
