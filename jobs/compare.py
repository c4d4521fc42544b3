"""Compare archs on one manifest: same splits, same epochs, one table.

    python jobs/compare.py                                  # every arch + the baseline on the demo set
    python jobs/compare.py --manifest gtzan.csv --output runs/gtzan-compare \\
        --archs cnn resnet18 efficientnet_b0 --epochs 40 --spec-augment

Writes <output>/<arch>/ (a normal training run each), <output>/comparison.md and
<output>/comparison.json; rerun with the same flags to finish an interrupted comparison.
Exits 1 when an arch failed (its row says why; the others are still trained).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or job working dir) first

from mgc.cli import compare_parser, dataclass_from_args, init_ray, train_config_from_args  # noqa: E402
from mgc.log import configure_logging  # noqa: E402
from mgc.training.compare import ComparisonError, run_comparison  # noqa: E402
from mgc.config import CompareConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = compare_parser()
    args = parser.parse_args(argv)
    if args.arch is not None:
        parser.error("jobs/compare.py trains --archs A B ...; --arch is for jobs/train.py")
    cfg = train_config_from_args(args, output="runs/compare")
    compare: CompareConfig = dataclass_from_args(CompareConfig, args)
    init_ray()
    try:
        run_comparison(cfg, compare)
    except ComparisonError as err:
        print(f"[mgc] {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
