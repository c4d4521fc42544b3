"""Merge a predictions partition's small files into few large ones (no Ray needed).

    python jobs/compact.py --output s3://bucket/predictions --model-id resnet18-1a2b3c4d5e
    python jobs/compact.py --output runs/tags --all      # every model_id partition

Holds the partition's lease while it works (a tagging run on it is refused meanwhile,
and it waits for none: a partition being tagged is refused with the holder's name).
Rows superseded by later runs are dropped on the way; every row stays readable
throughout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or job working dir) first

from mgc.io import storage  # noqa: E402
from mgc.io.lease import LeaseHeld  # noqa: E402
from mgc.log import configure_logging  # noqa: E402
from mgc.tagging.compact import TARGET_ROWS, compact_partition  # noqa: E402
from mgc.tagging.partition import partition_uri  # noqa: E402
from mgc.tagging.schema import PARTITION  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobs/compact.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="the predictions dataset (what jobs/tag.py --output was)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-id", help="the partition to compact (model_id=<ID>)")
    which.add_argument("--all", action="store_true", help="every model_id partition of --output")
    p.add_argument("--target-rows", type=int, default=TARGET_ROWS, help="rows per merged file (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="take over an expired lease (a crashed run's)")
    return p


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser().parse_args(argv)
    if args.all:
        fs, path = storage.filesystem_for(args.output)
        partitions = [storage.join(args.output, p.rstrip("/").rsplit("/", 1)[-1]) for p in fs.ls(path, detail=False)
                      if p.rstrip("/").rsplit("/", 1)[-1].startswith(f"{PARTITION}=")]
    else:
        partitions = [partition_uri(args.output, args.model_id)]
    results = []
    for partition in partitions:
        try:
            results.append(vars(compact_partition(partition, args.target_rows, args.force)))
        except LeaseHeld as err:
            print(f"[mgc] {err}", file=sys.stderr)
            return 3
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
