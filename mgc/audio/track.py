"""One track from uri to validated windows: the entry point every pipeline uses.

Why its own module: it picks between the whole-file decoder (:mod:`mgc.audio.decode`) and
the seek-based reader (:mod:`mgc.audio.seek`), which both build on the decoder's checks.
"""

from __future__ import annotations

import threading
from typing import Any

from mgc.audio.decode import TIMEOUT, AudioError, DecodedTrack, check_track, cut_windows, decode, fetch
from mgc.audio.seek import load_sampled
from mgc.config import AudioConfig
from mgc.io.storage import redact
from mgc.log import get_logger

log = get_logger()


def load_track(uri: str, cfg: AudioConfig, max_bytes: int | None = None,
               timeout_s: float | None = None) -> DecodedTrack:
    """Fetch, decode and validate ``uri``, and cut it into windows.

    Raises :class:`AudioError` with one of :data:`REASONS`; the checks run in the
    order fetch -> decode -> too_short -> silent, so a short silent clip reports
    ``too_short`` (the cheaper, more fundamental problem).

    With ``cfg.max_windows`` set and a track longer than that many windows, only the
    kept windows are read (seeking, for every format libsndfile can seek: WAV, FLAC,
    OGG, MP3, ...), so memory is bounded by ``max_windows`` whatever the track's length
    or channel count; the windows are the ones :func:`cut_windows` keeps, and the
    silence check then measures those windows.

    An object over ``max_bytes`` is ``too_large``, refused before its bytes are read.
    With ``timeout_s``, fetching and decoding run in a thread of their own and a track
    that takes longer is ``timeout``: a read that never returns (a FIFO, a stalled mount)
    cannot stop the pipeline. Python cannot stop that thread; it is a daemon and is left
    to finish or block on its own, holding at most ``max_bytes``.
    """
    if timeout_s is None:
        return _load(uri, cfg, max_bytes)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["track"] = _load(uri, cfg, max_bytes)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=run, name="mgc-load-track", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning("%s: still loading after %g s; left behind (a FIFO or a stalled read?)", redact(uri), timeout_s)
        raise AudioError(TIMEOUT, uri, f"fetch and decode took more than {timeout_s:g} s (--track-timeout)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["track"]


def _load(uri: str, cfg: AudioConfig, max_bytes: int | None) -> DecodedTrack:
    if cfg.max_windows is not None:
        if cfg.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {cfg.max_windows}")
        track = load_sampled(uri, cfg, max_bytes)
        if track is not None:
            return track
    y = decode(fetch(uri, max_bytes), cfg.sample_rate, name=uri)
    duration_s = len(y) / cfg.sample_rate
    check_track(uri, y, duration_s, cfg)
    return DecodedTrack(windows=cut_windows(y, cfg), duration_s=duration_s)
