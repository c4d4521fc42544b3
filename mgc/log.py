"""The ``mgc`` logger: the library logs, whoever runs it decides where it goes.

Why a module of its own: jobs (``jobs/*.py`` through :func:`mgc.cli.init_ray`) and the
processes Ray starts for mgc (a Ray Train worker runs the training loop far from any job)
both show mgc's progress the same way, ``[mgc] ...`` on stdout, and nothing in the library
prints.
"""

from __future__ import annotations

import logging
import sys

NAME = "mgc"


def get_logger() -> logging.Logger:
    return logging.getLogger(NAME)


class _Stdout(logging.StreamHandler):
    """A handler on whatever ``sys.stdout`` is when a record is written (not when the
    handler was made), so redirected or captured output still gets mgc's lines."""

    _mgc = True

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; stdout is looked up instead
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Show the ``mgc`` logger's records on stdout as ``[mgc] ...``; idempotent."""
    logger = get_logger()
    if not any(isinstance(handler, _Stdout) for handler in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("[mgc] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
