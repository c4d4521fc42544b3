"""The Ray Train worker loop: same code on one CPU or many GPUs (DDP via Ray Train).

Why a separate module: this is what runs inside each Ray Train worker; it receives the
run's TrainConfig (as a dict, :func:`loop_config`) and its dataset shards, and reports
metrics and a checkpoint every epoch: :func:`setup_worker`, then per epoch
:func:`train_epoch`, :func:`validate` (rank 0) and :func:`save_epoch`.
The driver side (building datasets, picking the best checkpoint, final evaluation)
lives in :mod:`mgc.training.driver`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
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
from mgc.config import TaskSpec, TrainConfig, train_config_from_dict
from mgc.log import configure_logging, get_logger
from mgc.models.zoo import TaggerModel, build_model
from mgc.evaluation.scoring import collect_predictions, metrics_for, validation_summary
from mgc.labels import mask_column, target_column, targets_matrix

HISTORY_FILE = "history.json"
TRAIN_STATE_FILE = "train_state.pt"  # optimizer + schedule + epoch, for resuming
# Rows of each worker's local shuffle buffer (at least one batch).
SHUFFLE_BUFFER = 256

log = get_logger()


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


def loop_config(cfg: TrainConfig, tasks: Mapping[str, TaskSpec], threads: float, has_validation: bool
                ) -> dict[str, Any]:
    """What the driver hands every worker: the run's own TrainConfig (``asdict``), the task
    specs resolved from the manifest, and the two facts only the driver knows."""
    return {"config": dataclasses.asdict(cfg), "tasks": {t: s.to_dict() for t, s in tasks.items()},
            "threads": threads, "has_validation": has_validation}


@dataclass
class WorkerState:
    """One worker's model, optimisation state and history, built by :func:`setup_worker`."""

    cfg: TrainConfig
    tasks: dict[str, TaskSpec]
    meta: CheckpointMeta
    bare: TaggerModel
    model: torch.nn.Module
    device: torch.device
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    rank: int
    rng: np.random.Generator
    generator: torch.Generator
    history: list[dict] = field(default_factory=list)
    first_epoch: int = 1


def setup_worker(config: Mapping[str, Any]) -> WorkerState:
    """Seed, build the model (pretrained weights, DDP wrap), optimizer and schedule, and
    resume from the latest checkpoint after a failure or with ``--resume``."""
    configure_logging()  # a worker process of its own: its progress reaches the driver's log
    cfg = train_config_from_dict(config["config"])
    tasks = {t: TaskSpec.from_dict(s) for t, s in config["tasks"].items()}
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(cfg.seed + rank)
    torch.set_num_threads(max(1, int(config["threads"])))
    meta = CheckpointMeta(arch=cfg.arch, audio=cfg.audio, tasks=tasks, name=cfg.arch)
    bare = build_model(meta.arch, meta.heads(), cfg.pretrained, cfg.weights_file)
    resumed = _resume_state(bare)
    groups = optimizer_groups(bare, cfg.lr, cfg.backbone_lr_scale, cfg.layer_lr_decay)
    model = ray.train.torch.prepare_model(bare)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    backbone_factor, head_factor = lr_factors(cfg.epochs, cfg.freeze_backbone_epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [backbone_factor] * (len(groups) - 1) + [head_factor])
    state = WorkerState(cfg, tasks, meta, bare, model, ray.train.torch.get_device(), optimizer, schedule, rank,
                        np.random.default_rng(cfg.seed + rank), torch.Generator().manual_seed(cfg.seed + rank))
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["scheduler"])
        state.first_epoch = resumed["epoch"] + 1
        state.history = [h for h in _read_history(cfg.output) if h["epoch"] < state.first_epoch]
        log.info("resuming after epoch %d from the latest checkpoint", resumed["epoch"])
    return state


def train_epoch(state: WorkerState, shard, epoch: int) -> dict[str, Any]:
    """One pass over this worker's shard (a random window per track), then precise BN;
    returns the epoch's loss, throughput (all workers) and learning rate."""
    cfg = state.cfg
    state.model.train()
    frozen = epoch <= cfg.freeze_backbone_epochs
    if frozen:
        state.bare.backbone.eval()  # frozen: keep its BatchNorm statistics too
    loss_sum, seen = 0.0, 0
    calibration: list[torch.Tensor] = []
    started = time.perf_counter()
    for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                    local_shuffle_buffer_size=max(cfg.batch_size, SHUFFLE_BUFFER)):
        windows = torch.from_numpy(random_windows(batch["mel"], state.rng)).to(state.device)
        if len(calibration) < cfg.precise_bn_batches:
            calibration.append(windows)  # unaugmented: what evaluation will see
        targets, masks = batch_targets(batch, state.tasks, state.device)
        if cfg.augment.enabled:
            windows, targets, masks = augment_batch(windows, targets, masks, cfg.augment, state.generator)
        loss = masked_loss(state.model(windows), targets, masks, state.tasks)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        loss_sum += float(loss.detach()) * len(windows)
        seen += len(windows)
    train_loss, samples_per_s = epoch_throughput(loss_sum, seen, time.perf_counter() - started, state.device)
    if not frozen:  # a frozen backbone keeps its statistics
        recalibrate_batchnorm(state.bare, calibration)
    state.schedule.step()
    return {"epoch": epoch, "train_loss": train_loss, "train_samples_per_s": samples_per_s,
            "lr": state.schedule.get_last_lr()[-1]}


def validate(state: WorkerState, shard) -> dict[str, float]:
    """Track-level validation figures (:func:`mgc.evaluation.scoring.validation_summary`)."""
    state.model.eval()
    batches = shard.iter_batches(batch_size=32, batch_format="numpy")
    predictions = collect_predictions(state.model, batches, state.tasks, state.device)
    return validation_summary(metrics_for(predictions, state.tasks, state.cfg.top_k))


def save_epoch(state: WorkerState, metrics: dict[str, Any]) -> None:
    """Rank 0 writes the live history and a checkpoint (model + optimizer state); every
    worker reports the epoch to Ray Train."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if state.rank == 0:
            state.history.append(dict(metrics))
            # Live learning curves for the user, and the full history for the driver
            # (Ray keeps only the best checkpoint and its metrics).
            storage.write_text(storage.join(state.cfg.output, HISTORY_FILE), json.dumps(state.history, indent=1))
            log.info("epoch %d/%d: %s", metrics["epoch"], state.cfg.epochs, ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
            epoch_meta = dataclasses.replace(state.meta, metrics={"epoch": metrics["epoch"],
                                                                  "val_score": metrics["val_score"]})
            save_checkpoint(tmp, state.model, epoch_meta)
            torch.save({"optimizer": state.optimizer.state_dict(), "scheduler": state.schedule.state_dict(),
                        "epoch": metrics["epoch"]}, f"{tmp}/{TRAIN_STATE_FILE}")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train for ``epochs`` epochs (:func:`loop_config` builds ``config``), reporting a
    checkpoint after each one; rank 0 validates (or, without validation tracks, scores
    an epoch by its negative training loss)."""
    state = setup_worker(config)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("validation") if config["has_validation"] else None
    for epoch in range(state.first_epoch, state.cfg.epochs + 1):
        metrics = train_epoch(state, train_shard, epoch)
        if state.rank == 0:
            metrics.update(validate(state, val_shard) if val_shard is not None else {"val_score": -metrics["train_loss"]})
        save_epoch(state, metrics)
