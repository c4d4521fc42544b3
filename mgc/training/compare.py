"""Compare archs on one manifest: same splits, same budget, same metrics, one table.

Why: the seed projects compared many CNNs (and hand-made features with gradient
boosting) but each with its own splits and scripts, so their numbers did not line up.
Here the manifest is decoded once, every arch is a normal training run of the same loop
(:func:`mgc.training.driver.run_training`, artifacts under ``<output>/<arch>/``), the feature
baseline is always a row, and the table reports what a user chooses an arch by:
parameters, training throughput measured inside the real run, and track-level metrics.

Pretrained audio archs (``mn04`` ...) bring their own front end, so they are decoded
once per front end; their weights come from ``--weights mn04=PATH`` (or ``--pretrained``),
and ``--probe-archs`` adds frozen-embedding probe rows (``<output>/<arch>-probe/``).

A comparison is resumable: an arch whose ``<output>/<arch>/metrics.json`` was written by
the same config is read back, not retrained; an arch that fails is recorded with its
error and the others still run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import traceback
from typing import Any

from mgc.io import storage
from mgc.training.baseline import ARCH as FEATURES_ARCH
from mgc.training.baseline import feature_names
from mgc.config import ARCH_AUDIO, FRONTEND_FIELDS, AudioConfig, CompareConfig, TrainConfig
from mgc.config import SPLITS
from mgc.models.zoo import ARCHITECTURES, build_model, count_parameters
from mgc.evaluation.artifacts import METRICS_FILE
from mgc.training.rundir import config_json
from mgc.training.driver import DecodedSplits, absolute_output, decode_splits, prepare_table, run_training
from mgc.log import get_logger
from mgc.io.jsonio import dumps

log = get_logger()

PROBE_SUFFIX = " probe"

COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
METRIC_KEYS = ("accuracy", "top_k_accuracy", "f1_macro", "roc_auc", "pr_auc")


class ComparisonError(RuntimeError):
    """At least one arch of the comparison failed (the others' rows are still written)."""


def archs_to_compare(compare: CompareConfig) -> list[str]:
    """The rows in table order: fine-tuned archs, probes (``"<arch> probe"``), the baseline
    last; unknown names are refused before any work."""
    archs = list(compare.archs) or [a for a in ARCHITECTURES if a not in ARCH_AUDIO or a in compare.weights]
    probes = list(compare.probe_archs)
    unknown = [a for a in archs if a not in ARCHITECTURES and a != FEATURES_ARCH]
    unknown += [a for a in probes if a not in ARCHITECTURES]
    unknown += [a for a in compare.weights if a not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"unknown arch(s) {unknown}; choose from {sorted([*ARCHITECTURES, FEATURES_ARCH])}")
    rows = archs + [a + PROBE_SUFFIX for a in probes]
    if compare.baseline and FEATURES_ARCH not in rows:
        rows.append(FEATURES_ARCH)
    return list(dict.fromkeys(rows))


def row_config(base: TrainConfig, compare: CompareConfig, row: str) -> TrainConfig:
    """The training config of one table row: ``base`` with the row's arch, its own output
    folder, its weights (``--weights`` first) and, for an arch that brings one, its own
    front end (``base``'s windowing kept)."""
    probe = row.endswith(PROBE_SUFFIX)
    arch = row[: -len(PROBE_SUFFIX)] if probe else row
    audio = base.audio
    if arch in ARCH_AUDIO:  # front end settings back to mgc's defaults: the arch fills in its own
        default = AudioConfig()
        audio = dataclasses.replace(audio, **{name: getattr(default, name) for name in FRONTEND_FIELDS})
    return dataclasses.replace(
        base, arch=arch, probe=probe, audio=audio, weights_file=compare.weights.get(arch, base.weights_file),
        output=storage.join(base.output, arch + ("-probe" if probe else "")),
    )


def steady_samples_per_s(history: list[dict]) -> float | None:
    """Median training throughput over the epochs after the first (which pays warm-up)."""
    rates = [h["train_samples_per_s"] for h in history if h.get("train_samples_per_s")]
    steady = rates[1:] or rates
    return float(statistics.median(steady)) if steady else None


def _previous_metrics(cfg: TrainConfig) -> dict[str, Any] | None:
    """The metrics of an earlier run of exactly this config in ``cfg.output``, if any."""
    uri = storage.join(cfg.output, METRICS_FILE)
    if not storage.exists(uri):
        return None
    metrics = json.loads(storage.read_bytes(uri))
    # Exactly this config: a run by another mgc (a field added since, maybe with a new
    # default behaviour) is trained again rather than compared unlike with like.
    return metrics if metrics.get("config") == config_json(cfg) else None


def comparison_row(arch: str, metrics: dict[str, Any], params: int | None, split: str) -> dict[str, Any]:
    """One table row: size, speed and the ``split`` metrics of every task."""
    row: dict[str, Any] = {
        "arch": arch,
        "params": params,
        "train_samples_per_s": steady_samples_per_s(metrics.get("history", [])),
        "best_epoch": metrics.get("best_epoch"),
        "seconds": metrics.get("seconds"),
        "error": None,
    }
    for task, result in sorted(metrics.get(split, {}).items()):
        for key in METRIC_KEYS:
            row[f"{task}_{key}"] = result.get(key)
        row[f"{task}_vote_accuracy"] = result.get("vote", {}).get("accuracy")
    return row


def _params(arch: str, cfg: TrainConfig, specs: dict) -> int:
    """Trainable size: the CNN's parameters with this manifest's heads, or the baseline's features."""
    if arch == FEATURES_ARCH:
        return len(feature_names(cfg.audio))
    return count_parameters(build_model(arch, {task: len(spec.labels) for task, spec in specs.items()}))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (``-`` where a metric does not apply)."""
    suffix = "_vote_accuracy"
    tasks = sorted({key[: -len(suffix)] for r in rows for key in r if key.endswith(suffix)})
    header = ["arch", "params", "train samples/s", "best epoch", "seconds"]
    for task in tasks:
        header += [f"{task} acc", f"{task} vote acc", f"{task} top-k", f"{task} F1", f"{task} ROC-AUC", f"{task} PR-AUC"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        params = r["params"]
        size = "-" if params is None else (f"{params} features" if r["arch"] == FEATURES_ARCH else f"{params / 1e6:.2f} M")
        cells = [r["arch"], size, _fmt(r["train_samples_per_s"], 1), _fmt(r["best_epoch"]), _fmt(r["seconds"], 0)]
        if r["error"]:
            cells += [f"failed: {_one_line(r['error'])}"] + [""] * (len(header) - len(cells) - 1)
        else:
            for task in tasks:
                cells += [_fmt(r.get(f"{task}_{key}"), 3) for key in
                          ("accuracy", "vote_accuracy", "top_k_accuracy", "f1_macro", "roc_auc", "pr_auc")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _one_line(error: str) -> str:
    """An error for a table cell: its first line and, for a worker's traceback, its root cause."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    return text.replace("|", "/")


def _fmt(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is None or not isinstance(value, float):
        return str(value)
    return f"{value:.{digits}f}"


def _write_table(base: TrainConfig, compare: CompareConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {"manifest": base.manifest, "split": compare.report_split, "epochs": base.epochs,
               "batch_size": base.batch_size, "rows": rows}
    storage.write_text(storage.join(base.output, COMPARISON_JSON), dumps(summary, indent=2))
    storage.write_text(storage.join(base.output, COMPARISON_MD),
                       f"# mgc arch comparison on {base.manifest} ({compare.report_split} split, "
                       f"{base.epochs} epochs, batch {base.batch_size})\n\n{markdown_table(rows)}")
    return summary


def run_comparison(base: TrainConfig, compare: CompareConfig) -> dict[str, Any]:
    """Train every arch of ``compare`` on ``base.manifest``; write and return the table.

    Raises :class:`ComparisonError` after writing the table when an arch failed.
    """
    archs = archs_to_compare(compare)
    if compare.report_split not in SPLITS:
        raise ValueError(f"--report-split must be one of {SPLITS}, not {compare.report_split!r}")
    base = absolute_output(base)
    _, specs = prepare_table(base)  # a bad manifest is refused before any arch runs
    decoded: dict[AudioConfig, DecodedSplits] = {}  # once per front end, for every arch that trains on it
    rows: list[dict[str, Any]] = []
    for name in archs:
        if rows:
            _write_table(base, compare, rows)  # what is done so far, should the run be stopped
        log.info(f"compare: {name} ({len(rows) + 1}/{len(archs)})")
        try:
            cfg = row_config(base, compare, name)
            metrics = _previous_metrics(cfg)
            if metrics is None:
                splits = None
                if cfg.arch != FEATURES_ARCH and not cfg.probe:  # the baseline and probes decode themselves
                    if cfg.audio not in decoded:
                        decoded[cfg.audio] = decode_splits(cfg)
                    splits = decoded[cfg.audio]
                metrics = run_training(cfg, decoded=splits).metrics
            else:
                log.info(f"compare: {name} already trained with this config in {cfg.output}")
            rows.append(comparison_row(name, metrics, _params(cfg.arch, cfg, specs), compare.report_split))
        except Exception as err:  # noqa: BLE001 - one arch failing must not lose the others
            traceback.print_exc()
            rows.append({**comparison_row(name, {}, None, compare.report_split), "error": f"{type(err).__name__}: {err}"})
    summary = _write_table(base, compare, rows)
    log.info("comparison:\n%s", markdown_table(rows))
    failed = [r["arch"] for r in rows if r["error"]]
    if failed:
        raise ComparisonError(f"arch(s) failed: {failed}; see {storage.join(base.output, COMPARISON_JSON)}")
    return summary
