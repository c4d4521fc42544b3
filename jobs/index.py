"""Index a tagged catalog's embeddings for "tracks like this one" (`mgc similar`).

    python jobs/index.py --predictions s3://bucket/predictions --output s3://bucket/index \\
        --checkpoint runs/genre/checkpoint      # optional: lets `mgc similar FILE` embed new files

Reads the embedding column (`jobs/tag.py --embeddings`) of one model_id partition batch by
batch; a rerun adds only the tracks tagged since. Exits 2 on bad flags or an index that
does not fit the partition (another model_id, wrong checkpoints).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout (or job working dir) first

from mgc.catalog.index import IndexError_, build_index  # noqa: E402
from mgc.cli import dataclass_from_args, index_parser  # noqa: E402
from mgc.config import IndexConfig  # noqa: E402
from mgc.log import configure_logging  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg: IndexConfig = dataclass_from_args(IndexConfig, index_parser().parse_args(argv))
    if not cfg.predictions or not cfg.output:
        index_parser().error("--predictions and --output are required")
    configure_logging()
    try:
        summary = build_index(cfg)
    except (IndexError_, ValueError) as err:
        print(f"[mgc] {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
