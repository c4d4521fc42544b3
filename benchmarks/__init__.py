"""Developer benchmarks: mgc against the per-file way, measured in the same run (not part of the library)."""
