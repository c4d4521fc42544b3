"""Evaluate a checkpoint on a manifest split: metrics.json, plots and report.md.

    python jobs/evaluate.py --checkpoint runs/demo/checkpoint --manifest runs/demo/data/manifest.csv
    python jobs/evaluate.py --checkpoint s3://bucket/runs/x/checkpoint --manifest s3://bucket/new.parquet \\
        --split all --output s3://bucket/runs/x/eval-new
    ray job submit --working-dir . -- python jobs/evaluate.py ...   # the same on a cluster

The checkpoint's audio config, labels and tuned thresholds are used as saved; output
defaults to <checkpoint>/../eval-<split>. Exits 1 when no track could be evaluated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or job working dir) first

from mgc.cli import config_parser, dataclass_from_args, init_ray  # noqa: E402
from mgc.config import EvaluateConfig  # noqa: E402
from mgc.evaluation.job import ALL, run_evaluation  # noqa: E402
from mgc.config import SPLITS  # noqa: E402

SPLIT_CHOICES = (*SPLITS, ALL)


def evaluate_parser():
    return config_parser(
        EvaluateConfig,
        "jobs/evaluate.py",
        "Metrics, plots and report.md of a checkpoint on one split of a manifest "
        f"(--split {'/'.join(SPLIT_CHOICES)}; default test).",
    )


def main(argv: list[str] | None = None) -> int:
    parser = evaluate_parser()
    cfg: EvaluateConfig = dataclass_from_args(EvaluateConfig, parser.parse_args(argv))
    if not cfg.checkpoint or not cfg.manifest:
        parser.error("--checkpoint and --manifest are required")
    if cfg.split not in SPLIT_CHOICES:
        parser.error(f"--split must be one of {', '.join(SPLIT_CHOICES)}, not {cfg.split!r}")
    init_ray()
    output, metrics = run_evaluation(cfg)
    key = metrics["evaluated_split"]
    summary = {
        "output": output,
        "model_id": metrics["model_id"],
        "split": key,
        "tracks": metrics["counts"][key],
        "skipped": metrics["counts"]["skipped"],
        **{task: {k: m.get(k) for k in ("accuracy", "top_k_accuracy", "f1_macro", "roc_auc", "pr_auc")}
           for task, m in metrics[key].items()},
    }
    print(json.dumps(summary, indent=2))
    return 0 if metrics["counts"][key] else 1


if __name__ == "__main__":
    sys.exit(main())
