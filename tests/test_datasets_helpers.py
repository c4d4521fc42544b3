"""Shared helpers of the dataset-builder tests (no tests here).

Why: every dataset test writes small fixture files and runs `jobs/build_manifest.py`
in-process (a subprocess per call would spend seconds importing pandas on a 2-core box).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from types import ModuleType

from conftest import REPO


@cache
def build_manifest_job() -> ModuleType:
    """`jobs/build_manifest.py` loaded as a module (jobs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_manifest_job", REPO / "jobs" / "build_manifest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_job(*argv: str) -> int:
    """Run `python jobs/build_manifest.py ARGV...` in-process; returns its exit status."""
    return build_manifest_job().main([str(arg) for arg in argv])


def touch(root: Path, relatives: Iterable[str], content: bytes = b"RIFF") -> list[Path]:
    """Create small stand-in audio files (builders never decode them)."""
    paths = []
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        paths.append(path)
    return paths
