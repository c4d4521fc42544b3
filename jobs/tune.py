"""Search learning rate, arch, batch size and augmentation with Ray Tune (ASHA).

    python jobs/tune.py --manifest runs/demo/data/manifest.csv --output runs/tune \\
        --epochs 10 --num-samples 8 --search-arch cnn resnet18 --search-lr 1e-3 3e-3

Prints the best config (and writes it to <output>/best_config.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or job working dir) first

from mgc.cli import add_dataclass_arguments, config_parser, dataclass_from_args, init_ray  # noqa: E402
from mgc.config import SearchConfig, TrainConfig  # noqa: E402
from mgc.training.tune import run_search  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(TrainConfig, "jobs/tune.py", "Hyperparameter search over the training loop (Ray Tune, ASHA).")
    add_dataclass_arguments(parser, SearchConfig)
    args = parser.parse_args(argv)
    base: TrainConfig = dataclass_from_args(TrainConfig, args, TrainConfig(output="runs/tune"))
    if not base.manifest:
        parser.error("--manifest is required")
    init_ray()
    summary = run_search(base, dataclass_from_args(SearchConfig, args))
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
