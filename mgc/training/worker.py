"""The Ray Train worker loop: same code on one CPU or many GPUs (DDP via Ray Train).

Why a separate module: this is what runs inside each Ray Train worker; it receives plain
data (a dict) and its dataset shards, and reports metrics and a checkpoint every epoch.
The driver side (building datasets, picking the best checkpoint, final evaluation)
lives in :mod:`mgc.training.driver`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from typing import Any, Iterable, Mapping

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mgc.io import storage
from mgc.models.checkpoint import MODEL_FILE, CheckpointMeta, save_checkpoint
from mgc.audio.augment import augment_batch
from mgc.config import AudioConfig, AugmentConfig, TaskSpec
from mgc.models.zoo import TaggerModel, build_model
from mgc.evaluation.scoring import collect_predictions, metrics_for, validation_summary
from mgc.labels import mask_column, target_column, targets_matrix

HISTORY_FILE = "history.json"
TRAIN_STATE_FILE = "train_state.pt"  # optimizer + schedule + epoch, for resuming


def masked_loss(
    logits: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    tasks: Mapping[str, TaskSpec],
) -> torch.Tensor:
    """Sum over tasks of the mean loss over tracks that carry that task's labels.

    Multiclass heads use cross-entropy against the target distribution (one-hot, or soft
    after mixup), multilabel heads per-tag binary cross-entropy; a track without labels
    for a task (mask 0) contributes nothing to that task.
    """
    total = torch.zeros((), device=next(iter(logits.values())).device)
    for task, spec in tasks.items():
        if spec.type == "multiclass":
            per_track = F.cross_entropy(logits[task], targets[task], reduction="none")
        else:
            per_track = F.binary_cross_entropy_with_logits(logits[task], targets[task], reduction="none").mean(dim=1)
        total = total + (per_track * masks[task]).sum() / masks[task].sum().clamp(min=1.0)
    return total


def batch_targets(
    batch: Mapping[str, np.ndarray], tasks: Mapping[str, TaskSpec], device: torch.device
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Targets ``[tracks, labels]`` and masks ``[tracks]`` per task, as tensors on ``device``."""
    targets = {t: torch.from_numpy(targets_matrix(batch[target_column(t)])).to(device) for t in tasks}
    masks = {t: torch.from_numpy(np.asarray(batch[mask_column(t)], dtype=np.float32)).to(device) for t in tasks}
    return targets, masks


def lr_factors(epochs: int, freeze_backbone_epochs: int) -> list:
    """Per-epoch learning-rate factors for (backbone, heads): cosine decay, backbone 0 while frozen."""

    def cosine(epoch: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))

    return [lambda e: 0.0 if e < freeze_backbone_epochs else cosine(e), cosine]


def layer_lr_scales(n_layers: int, decay: float) -> list[float]:
    """Learning-rate multipliers per backbone layer, input side first: ``decay`` for the
    first layer rising geometrically to 1.0 for the last (all 1.0 when ``decay`` is 1)."""
    if decay <= 0:
        raise ValueError(f"layer_lr_decay must be > 0, not {decay}")
    if n_layers <= 1:
        return [1.0] * n_layers
    return [decay ** ((n_layers - 1 - i) / (n_layers - 1)) for i in range(n_layers)]


def optimizer_groups(model: TaggerModel, lr: float, backbone_lr_scale: float = 1.0,
                     layer_lr_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW parameter groups: the backbone (one group, or one per layer with a
    ``layer_lr_decay`` other than 1), then the input norm and heads at ``lr``; the head
    group is always last (:func:`lr_factors` gives it its own schedule)."""
    backbone, heads = model.parameter_groups()
    if layer_lr_decay == 1.0:
        layers = [backbone]
    else:
        layers = model.backbone_layers()
    scales = layer_lr_scales(len(layers), layer_lr_decay)
    groups = [{"params": params, "lr": lr * backbone_lr_scale * scale} for params, scale in zip(layers, scales)]
    return groups + [{"params": heads, "lr": lr}]


def recalibrate_batchnorm(model: torch.nn.Module, batches: list[torch.Tensor]) -> bool:
    """Recompute every BatchNorm's statistics for the current weights over ``batches``.

    Why: running averages trail the weights; with few steps per epoch (small data sets)
    or a small momentum (MobileNetV3: 0.01) eval-mode outputs then differ from what was
    trained, and validation sits at chance while the training loss falls. This is
    "precise BN" (torch's ``swa_utils.update_bn``: a cumulative average over the batches).
    Returns False when there was nothing to do.
    """
    if not batches or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, model)
    return True


def random_windows(mels: Iterable[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One random window per track: a fresh view of every track each epoch."""
    return np.stack([m[rng.integers(len(m))] for m in mels]).astype(np.float32, copy=False)


def _reduce_across_workers(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """Element-wise sum (or max) of ``values`` over the DDP workers; unchanged on one worker."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, device=device, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def epoch_throughput(loss_sum: float, seen: int, seconds: float, device: torch.device) -> tuple[float, float]:
    """(mean train loss, train samples/s) of one epoch over every worker.

    Samples/s is all workers' windows over the slowest worker's time: what the whole
    trainer sustained, data loading included (what `jobs/compare.py` reports per arch).
    """
    total_loss, total_seen = _reduce_across_workers([loss_sum, float(seen)], device)
    (slowest,) = _reduce_across_workers([seconds], device, op="max")
    return total_loss / max(total_seen, 1.0), total_seen / max(slowest, 1e-9)


def _resume_state(model: torch.nn.Module) -> dict[str, Any] | None:
    """Load the latest reported checkpoint into ``model``; return its optimizer state and epoch."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        model.load_state_dict(torch.load(f"{directory}/{MODEL_FILE}", map_location="cpu", weights_only=True))
        return torch.load(f"{directory}/{TRAIN_STATE_FILE}", map_location="cpu", weights_only=True)


def _read_history(output: str) -> list[dict]:
    uri = storage.join(output, HISTORY_FILE)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else []


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train for ``config["epochs"]`` epochs, reporting a checkpoint after each one."""
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(config["seed"] + rank)
    torch.set_num_threads(max(1, int(config["threads"])))
    rng = np.random.default_rng(config["seed"] + rank)

    tasks = {t: TaskSpec(type=s["type"], labels=tuple(s["labels"])) for t, s in config["tasks"].items()}
    meta = CheckpointMeta(
        arch=config["arch"],
        audio=AudioConfig.from_dict(config["audio"]),
        tasks=tasks,
        name=config["name"],
    )
    bare = build_model(meta.arch, meta.heads(), config["pretrained"], config["weights_file"])
    resumed = _resume_state(bare)  # after a worker failure or with --resume: the latest checkpoint
    groups = optimizer_groups(bare, config["lr"], config["backbone_lr_scale"], config["layer_lr_decay"])
    model = ray.train.torch.prepare_model(bare)
    device = ray.train.torch.get_device()
    optimizer = torch.optim.AdamW(groups, weight_decay=config["weight_decay"])
    backbone_factor, head_factor = lr_factors(config["epochs"], config["freeze_backbone_epochs"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [backbone_factor] * (len(groups) - 1) + [head_factor])
    augment = AugmentConfig(**config["augment"])
    generator = torch.Generator().manual_seed(config["seed"] + rank)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation") if config["has_validation"] else None
    history: list[dict] = []
    start = 1
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["scheduler"])
        start = resumed["epoch"] + 1
        history = [h for h in _read_history(config["output"]) if h["epoch"] < start]
        print(f"[mgc] resuming after epoch {resumed['epoch']} from the latest checkpoint", flush=True)
    for epoch in range(start, config["epochs"] + 1):
        model.train()
        if epoch <= config["freeze_backbone_epochs"]:
            bare.backbone.eval()  # frozen: keep its BatchNorm statistics too
        loss_sum, seen = 0.0, 0
        calibration: list[torch.Tensor] = []
        epoch_started = time.perf_counter()
        for batch in train_shard.iter_batches(
            batch_size=config["batch_size"],
            batch_format="numpy",
            local_shuffle_buffer_size=config["shuffle_buffer"],
        ):
            windows = torch.from_numpy(random_windows(batch["mel"], rng)).to(device)
            if len(calibration) < config["precise_bn_batches"]:
                calibration.append(windows)  # unaugmented: what evaluation will see
            targets, masks = batch_targets(batch, tasks, device)
            if augment.enabled:
                windows, targets, masks = augment_batch(windows, targets, masks, augment, generator)
            loss = masked_loss(model(windows), targets, masks, tasks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(windows)
            seen += len(windows)
        train_loss, samples_per_s = epoch_throughput(loss_sum, seen, time.perf_counter() - epoch_started, device)
        if epoch > config["freeze_backbone_epochs"]:  # a frozen backbone keeps its statistics
            recalibrate_batchnorm(bare, calibration)
        calibration.clear()
        schedule.step()
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_samples_per_s": samples_per_s,
            "lr": schedule.get_last_lr()[-1],
        }
        if rank == 0:
            if val_shard is not None:
                model.eval()
                batches = val_shard.iter_batches(batch_size=32, batch_format="numpy")
                results = metrics_for(collect_predictions(model, batches, tasks, device), tasks, config["top_k"])
                metrics.update(validation_summary(results))
            else:
                metrics["val_score"] = -metrics["train_loss"]
            history.append(dict(metrics))
            # Live learning curves for the user, and the full history for the driver
            # (Ray keeps only the best checkpoint and its metrics).
            storage.write_text(storage.join(config["output"], HISTORY_FILE), json.dumps(history, indent=1))
            print(f"[mgc] epoch {epoch}/{config['epochs']}: " + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in history[-1].items()), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                epoch_meta = dataclasses.replace(meta, metrics={"epoch": epoch, "val_score": metrics["val_score"]})
                save_checkpoint(tmp, model, epoch_meta)
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(), "epoch": epoch},
                           f"{tmp}/{TRAIN_STATE_FILE}")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
