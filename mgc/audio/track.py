"""One track from uri to validated windows: the entry point every pipeline uses.

Why its own module: it picks between the whole-file decoder (:mod:`mgc.audio.decode`) and
the seek-based reader (:mod:`mgc.audio.seek`), which both build on the decoder's checks.
"""

from __future__ import annotations

from mgc.audio.decode import DecodedTrack, check_track, cut_windows, decode, fetch
from mgc.audio.seek import load_sampled
from mgc.config import AudioConfig


def load_track(uri: str, cfg: AudioConfig) -> DecodedTrack:
    """Fetch, decode and validate ``uri``, and cut it into windows.

    Raises :class:`AudioError` with one of :data:`REASONS`; the checks run in the
    order fetch -> decode -> too_short -> silent, so a short silent clip reports
    ``too_short`` (the cheaper, more fundamental problem).

    With ``cfg.max_windows`` set and a track longer than that many windows, only the
    kept windows are read (seeking, for every format libsndfile can seek: WAV, FLAC,
    OGG, MP3, ...), so memory is bounded by ``max_windows`` whatever the track's length
    or channel count; the windows are the ones :func:`cut_windows` keeps, and the
    silence check then measures those windows.
    """
    if cfg.max_windows is not None:
        if cfg.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1 or None, got {cfg.max_windows}")
        track = load_sampled(uri, cfg)
        if track is not None:
            return track
    y = decode(fetch(uri), cfg.sample_rate, name=uri)
    duration_s = len(y) / cfg.sample_rate
    check_track(uri, y, duration_s, cfg)
    return DecodedTrack(windows=cut_windows(y, cfg), duration_s=duration_s)
