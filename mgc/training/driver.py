"""Driver side of training: manifest -> decoded splits -> Ray Train -> artifacts.

Why in this order: decoding is preprocessed into a materialized dataset before the
trainer starts, so Ray Train workers holding every CPU never starve the decode actors that
feed them (a hang, not an error, on a 2-core machine; docs/architecture.md, "Why each stage is shaped as it is").
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import ray.train
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from mgc.io import storage
from mgc.training.baseline import ARCH as FEATURES_ARCH
from mgc.training.baseline import BASELINE_FILE, BaselineError, fit_feature_baseline
from mgc.models.checkpoint import load_checkpoint
from mgc.config import TrainConfig, train_config_from_dict
from mgc.stages.decode import failed_tracks, good_tracks, split_of, track_dataset
from mgc.config import SPLITS
from mgc.io.manifest import read_manifest
from mgc.models.zoo import ARCHITECTURES
from mgc.training.probe import run_probe
from mgc.evaluation.artifacts import CHECKPOINT_DIR, write_run_dir
from mgc.training.rundir import TrainingError, TrainResult, config_json, final_meta, run_metrics
from mgc.evaluation.scoring import evaluate_splits
from mgc.datasets.splits import apply_fold, assign_splits
from mgc.labels import encode_targets, mask_column, resolve_tasks, target_column
from mgc.training.worker import HISTORY_FILE, loop_config, train_loop_per_worker
from mgc.log import get_logger
from mgc.io.jsonio import dumps

log = get_logger()

RUN_FILE = "run.json"  # the run's config and Ray Train run name, for --resume


def _cpus_per_worker(cfg: TrainConfig) -> float:
    """CPUs each training worker reserves: as configured, else an even share of the cluster."""
    if cfg.cpus_per_worker:
        return cfg.cpus_per_worker
    if cfg.use_gpu:
        return 1.0
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1.0, math.floor(cpus / cfg.num_workers))


def _run_config(cfg: TrainConfig, name: str) -> RunConfig:
    storage_uri = cfg.storage_path or storage.join(cfg.output, "ray_results")
    filesystem, path = storage.pyarrow_filesystem(storage_uri)
    return RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=filesystem,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        # Ray keeps the best checkpoint by validation score, and always the latest one
        # (what a restarted or resumed run continues from).
        checkpoint_config=CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute="val_score", checkpoint_score_order="max"
        ),
    )


def resume_training(output: str) -> TrainResult:
    """Continue the interrupted run in ``output`` from its latest epoch checkpoint.

    The run's config and Ray Train run name come from ``output/run.json``; Ray Train finds
    its checkpoints under the same storage path and the worker loop resumes after the
    last reported epoch.
    """
    run = json.loads(storage.read_bytes(storage.join(output, RUN_FILE)))
    return run_training(train_config_from_dict(run["config"]), run_name=run["name"])


def prepare_table(cfg: TrainConfig) -> tuple[pd.DataFrame, dict]:
    """Read the manifest, ensure splits, resolve tasks and encode targets."""
    manifest = read_manifest(cfg.manifest)
    if cfg.fold is not None:
        manifest = apply_fold(manifest, cfg.fold)
    train_fraction = 1.0 - cfg.val_fraction - cfg.test_fraction
    manifest = assign_splits(manifest, (train_fraction, cfg.val_fraction, cfg.test_fraction), seed=cfg.seed)
    specs = resolve_tasks(manifest, cfg.tasks, cfg.task_types)
    table = encode_targets(manifest, specs)
    columns = ["track_id", "uri", "split"]
    for task in specs:
        columns += [target_column(task), mask_column(task)]
    return table[columns], specs


def _run_feature_baseline(cfg: TrainConfig, table: pd.DataFrame, specs: dict, started: float) -> TrainResult:
    """``--arch features``: hand-made features + gradient boosting, through the same
    manifests, splits, metrics and plots as the CNNs, for an honest comparison."""
    try:
        result = fit_feature_baseline(cfg, table, specs)
    except BaselineError as err:
        raise TrainingError(str(err)) from err
    metrics = {**result.metrics_json(), "config": config_json(cfg), "seconds": round(time.time() - started, 1)}
    write_run_dir(cfg.output, metrics, result.evaluation, [], f"mgc feature baseline on {cfg.manifest}",
                  extra=lambda stage: result.save(str(stage)))
    return TrainResult(output=cfg.output, checkpoint=storage.join(cfg.output, BASELINE_FILE), metrics=metrics)


@dataclass(frozen=True)
class DecodedSplits:
    """The decoded, materialized splits of one manifest, ready for any number of fits."""

    specs: dict
    datasets: dict[str, Any]
    counts: dict[str, int]
    skipped: pd.DataFrame


def decode_splits(cfg: TrainConfig) -> DecodedSplits:
    """Read the manifest and decode every track once into materialized train/validation/test datasets."""
    table, specs = prepare_table(cfg)
    decoded = track_dataset(table, cfg.audio, cfg.data).materialize()
    skipped = failed_tracks(decoded)
    good = good_tracks(decoded).materialize()
    datasets = {split: split_of(good, split).materialize() for split in SPLITS}
    counts = {split: ds.count() for split, ds in datasets.items()}
    log.info(f"decoded {len(table)} tracks: {counts}, skipped {len(skipped)}")
    if counts["train"] == 0:
        raise TrainingError(
            f"no decodable training tracks in {cfg.manifest} ({len(skipped)} skipped: "
            f"{skipped['error'].head(5).tolist()})"
        )
    return DecodedSplits(specs, datasets, counts, skipped)


def make_trainer(cfg: TrainConfig, decoded: DecodedSplits, name: str, callbacks: list | None = None) -> TorchTrainer:
    """A TorchTrainer running :func:`train_loop_per_worker` on ``decoded``'s splits."""
    has_validation = decoded.counts["validation"] > 0
    config = loop_config(cfg, decoded.specs, _cpus_per_worker(cfg), has_validation)
    datasets = decoded.datasets
    run_config = _run_config(cfg, name)
    if callbacks:
        run_config = dataclasses.replace(run_config, callbacks=callbacks)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": _cpus_per_worker(cfg)},
        ),
        datasets={"train": datasets["train"], **({"validation": datasets["validation"]} if has_validation else {})},
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=run_config,
    )


def absolute_output(cfg: TrainConfig) -> TrainConfig:
    """Workers run elsewhere: give them an absolute output path."""
    if storage.is_local(cfg.output):
        return dataclasses.replace(cfg, output=storage.filesystem_for(cfg.output)[1])
    return cfg


def run_training(cfg: TrainConfig, run_name: str | None = None, decoded: DecodedSplits | None = None) -> TrainResult:
    """Train on ``cfg.manifest`` and write checkpoint, metrics.json and plots to ``cfg.output``.

    ``run_name`` names an existing Ray Train run to continue (see :func:`resume_training`);
    ``decoded`` reuses splits decoded earlier (cross-validation and tuning decode once).
    """
    started = time.time()
    if cfg.arch not in ARCHITECTURES and cfg.arch != FEATURES_ARCH:  # fail before minutes of decoding
        raise ValueError(f"unknown --arch {cfg.arch!r}; choose one of {sorted([*ARCHITECTURES, FEATURES_ARCH])}")
    cfg = absolute_output(cfg)
    if cfg.arch == FEATURES_ARCH:
        table, specs = prepare_table(cfg)
        return _run_feature_baseline(cfg, table, specs, started)
    if cfg.probe:
        table, specs = prepare_table(cfg)
        return run_probe(cfg, table, specs, started)
    decoded = decoded or decode_splits(cfg)
    datasets, counts, skipped = decoded.datasets, decoded.counts, decoded.skipped
    name = run_name or f"mgc-{time.strftime('%Y%m%d-%H%M%S')}"
    storage.write_text(storage.join(cfg.output, RUN_FILE), dumps(
        {"name": name, "config": dataclasses.asdict(cfg)}, indent=2))
    trainer = make_trainer(cfg, decoded, name)
    result = trainer.fit()
    best = result.get_best_checkpoint(metric="val_score", mode="max") or result.checkpoint
    if best is None:
        raise TrainingError("training reported no checkpoint")

    with tempfile.TemporaryDirectory(prefix="mgc-train-") as tmp:
        loaded = load_checkpoint(Path(best.to_directory(str(Path(tmp) / "best"))))
        history = json.loads(storage.read_bytes(storage.join(cfg.output, HISTORY_FILE)))
        evaluated = evaluate_splits(loaded, datasets, top_k=cfg.top_k)
        metrics = run_metrics(cfg, evaluated, skipped, counts, history, loaded.meta.metrics.get("epoch"), started)
        write_run_dir(cfg.output, metrics, evaluated, history, f"mgc training run: {cfg.arch} on {cfg.manifest}",
                      loaded.model, final_meta(loaded.meta, evaluated))
    checkpoint_uri = storage.join(cfg.output, CHECKPOINT_DIR)
    log.info(f"checkpoint: {checkpoint_uri}")
    return TrainResult(output=cfg.output, checkpoint=checkpoint_uri, metrics=metrics)
