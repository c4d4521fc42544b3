"""The one JSON encoding mgc writes (``mgc.json``, ``metrics.json``, ``run.json``, tables).

Why one helper: run artifacts mix plain values with numpy scalars and arrays (metrics),
paths (configs built in code) and timestamps; each writer had its own fallback, one of
which turned anything into a string. This one converts exactly those kinds and refuses
the rest, so an unexpected object is a loud error, never a silently stringified field.
"""

from __future__ import annotations

import datetime
import json
from pathlib import PurePath
from typing import Any

import numpy as np


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays, paths and timestamps."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` with :func:`json_default` (keyword arguments as ``json.dumps``)."""
    return json.dumps(value, default=json_default, **kwargs)


def plain(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists, numpy values Python ones)."""
    return json.loads(dumps(value))
