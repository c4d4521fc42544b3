"""A picture of a tagged catalog: report.md with PNGs (genres, moods x genres, confidence,
failures by reason, tracks tagged over time) and summary.json.

    python jobs/catalog_report.py --predictions s3://bucket/predictions --output runs/report

Counts over batches of a few columns: memory stays flat however large the catalog.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or job working dir) first

from mgc.catalog.report import write_report  # noqa: E402
from mgc.cli import dataclass_from_args, report_parser  # noqa: E402
from mgc.config import ReportConfig  # noqa: E402
from mgc.log import configure_logging  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg: ReportConfig = dataclass_from_args(ReportConfig, report_parser().parse_args(argv))
    if not cfg.predictions:
        report_parser().error("--predictions is required")
    configure_logging()
    try:
        summary = write_report(cfg)
    except ValueError as err:
        print(f"[mgc] {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
