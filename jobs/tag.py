"""Tag a catalog with genre and mood predictions, written as Parquet.

    python jobs/tag.py --manifest s3://bucket/catalog.parquet \\
        --checkpoint runs/genre/checkpoint --checkpoint runs/mood/checkpoint \\
        --output s3://bucket/predictions
    ray job submit --working-dir . -- python jobs/tag.py ... --use-gpu   # on a cluster

Exits non-zero only when the job itself fails (2: bad flags or manifest, 3: another run
holds the partition's lease, 1: anything else, e.g. the audio store is down); broken
tracks are rows with `error` set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or job working dir) first

from mgc.cli import dataclass_from_args, init_ray, tag_parser  # noqa: E402
from mgc.config import TagConfig  # noqa: E402
from mgc.io.lease import LeaseHeld  # noqa: E402
from mgc.tagging.job import run_tagging  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg: TagConfig = dataclass_from_args(TagConfig, tag_parser().parse_args(argv))
    if not cfg.manifest or not cfg.checkpoint:
        tag_parser().error("--manifest and --checkpoint are required")
    init_ray()
    try:
        summary = run_tagging(cfg)
    except LeaseHeld as err:
        print(f"[mgc] {err}", file=sys.stderr)
        return 3
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
