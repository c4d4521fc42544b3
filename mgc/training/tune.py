"""Hyperparameter search with Ray Tune (ASHA), reusing the training loop unchanged.

Why this shape: the manifest is decoded once into materialized splits and every trial is
a TorchTrainer over those same datasets (:func:`mgc.training.driver.make_trainer`), reporting each
epoch to Tune through Ray Train's ``TuneReportCallback``; ASHA stops weak trials early.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from mgc.io import storage
from mgc.config import AugmentConfig, SearchConfig, TrainConfig
from mgc.training.driver import DecodedSplits, absolute_output, decode_splits, make_trainer
from mgc.io.jsonio import dumps

BEST_FILE = "best_config.json"
# A trial only drives its TorchTrainer; its workers reserve the real CPUs.
TRIAL_DRIVER_CPU = 0.01
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(),
    "specaugment": AugmentConfig(spec_augment=True),
    "mixup": AugmentConfig(mixup_alpha=0.2),
    "all": AugmentConfig(spec_augment=True, mixup_alpha=0.2, gain_db=3.0),
}


def trial_config(base: TrainConfig, params: dict[str, Any], output: str) -> TrainConfig:
    """The TrainConfig of one trial: ``base`` with the sampled knobs."""
    if params["augment"] not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {params['augment']!r}; choose from {sorted(AUGMENT_PRESETS)}")
    return dataclasses.replace(
        base, lr=float(params["lr"]), arch=params["arch"], batch_size=int(params["batch_size"]),
        augment=AUGMENT_PRESETS[params["augment"]], output=output,
        cpus_per_worker=base.cpus_per_worker or 1.0,  # leave room for concurrent trials
    )


def _trial(params: dict[str, Any], base: TrainConfig, decoded: DecodedSplits) -> None:
    context = tune.get_context()
    cfg = trial_config(base, params, storage.join(base.output, "trials", context.get_trial_name()))
    make_trainer(cfg, decoded, context.get_trial_name(), callbacks=[TuneReportCallback()]).fit()


def search_space(search: SearchConfig) -> dict[str, Any]:
    return {
        "lr": tune.choice(list(search.search_lr)),
        "arch": tune.choice(list(search.search_arch)),
        "batch_size": tune.choice(list(search.search_batch_size)),
        "augment": tune.choice(list(search.search_augment)),
    }


def run_search(base: TrainConfig, search: SearchConfig) -> dict[str, Any]:
    """Run the search; write and return the best trial's config and validation score."""
    base = absolute_output(base)
    decoded = decode_splits(base)
    if decoded.counts["validation"] == 0:
        raise ValueError("tuning needs validation tracks to score trials")
    filesystem, path = storage.pyarrow_filesystem(storage.join(base.output, "tune"))
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, base=base, decoded=decoded), {"cpu": TRIAL_DRIVER_CPU}),
        param_space=search_space(search),
        tune_config=tune.TuneConfig(
            metric="val_score", mode="max", num_samples=search.num_samples,
            # max_t past the last epoch: a trial that runs to the end finishes on its own
            # instead of being stopped by ASHA while its TorchTrainer is still closing.
            scheduler=ASHAScheduler(max_t=base.epochs + 1, grace_period=min(search.grace_period, base.epochs)),
            max_concurrent_trials=search.max_concurrent_trials
            or max(1, int(ray.cluster_resources().get("CPU", 1) // ((base.cpus_per_worker or 1.0) + TRIAL_DRIVER_CPU))),
        ),
        run_config=tune.RunConfig(name="search", storage_path=path, storage_filesystem=filesystem),
    )
    results = tuner.fit()
    best = results.get_best_result(metric="val_score", mode="max", scope="all")
    summary = {
        "best_config": best.config,
        "best_val_score": best.metrics_dataframe["val_score"].max() if best.metrics_dataframe is not None else None,
        "trials": len(results),
        "errors": len(results.errors),
    }
    storage.write_text(storage.join(base.output, BEST_FILE), dumps(summary, indent=2))
    return summary
