"""Performance figures: mgc against the per-file librosa loop, measured in the same run.

    python jobs/benchmark.py                    # full run (~5-10 minutes on 2 cores)
    python jobs/benchmark.py --quick --output bench.json   # ~1 minute (CI)

Writes JSON with the ratios (decode_mel_speedup_vs_librosa, ray_decode_scaling_efficiency,
tagging_speedup_vs_loop) and the raw figures, and prints the Markdown table README shows.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout first

from benchmarks.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
