"""Train genre and mood taggers on Ray.

    python jobs/train.py                       # the built-in demo, local Ray, into runs/demo/
    python jobs/train.py --manifest s3://bucket/manifest.parquet --output s3://bucket/runs/x \\
        --arch resnet18 --epochs 30 --num-workers 4 --use-gpu
    ray job submit --working-dir . -- python jobs/train.py ...   # the same on a cluster
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or job working dir) first

from mgc.cli import init_ray, train_config_from_args, train_parser  # noqa: E402
from mgc.log import configure_logging  # noqa: E402
from mgc.training.crossval import run_cross_validation  # noqa: E402
from mgc.training.driver import TrainResult, resume_training, run_training  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = train_parser().parse_args(argv)
    if args.resume:
        init_ray()
        return report(resume_training(args.resume))
    cfg = train_config_from_args(args)
    init_ray()
    if args.folds:
        print(json.dumps(run_cross_validation(cfg, args.folds), indent=2))
        return 0
    return report(run_training(cfg))


def report(result: TrainResult) -> int:
    summary = {
        split: {task: {k: m.get(k) for k in ("accuracy", "f1_macro", "roc_auc", "pr_auc")} for task, m in tasks.items()}
        for split, tasks in result.metrics.items()
        if split in ("validation", "test")
    }
    print(json.dumps({"checkpoint": result.checkpoint, "skipped": len(result.metrics["skipped"]), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
