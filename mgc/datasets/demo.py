"""The embedded demo data set: synthetic genre x mood music, generated offline.

Why: ``python jobs/train.py`` with no flags must work on any machine with no downloads
and no licensed audio, and must show real learning (>= 0.9 test accuracy on both heads
in a few CPU minutes). So the classes differ the way real music does, not by a marker:

* genre is tempo, rhythm and instrumentation -- ambient (slow pads, no drums), techno
  (four-on-the-floor at ~128 bpm, off-beat hats, saw/square bass), hiphop (swung
  boom-bap at ~90 bpm, sine sub bass, electric-piano chords), folk (Karplus-Strong
  plucked arpeggios, no drums);
* mood is mode, brightness and energy -- happy (major, bright, medium-high level), sad
  (minor, low-passed and mellow, quieter, longer notes), aggressive (phrygian power
  chords, saturated, noisy, dense, loud).

Every genre occurs with every mood (same number of tracks per pair) so the two tasks are
independent, and every track draws its own tempo, key, progression, pattern and levels,
so a model has to learn the classes rather than memorise tracks.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import signal

from mgc.config import SPLITS
from mgc.io.manifest import write_manifest
from mgc.io.validate import CONTRACT_COLUMNS

SYNTH_VERSION = 1
"""Bump when synthesis changes, so cached demo sets are regenerated."""

MANIFEST_NAME = "manifest.csv"
STAMP_NAME = "demo.json"
KNOWN_GENRES: tuple[str, ...] = ("ambient", "techno", "hiphop", "folk")
"""Genres the synthesiser can play (a config may pick any subset)."""
KNOWN_MOODS: tuple[str, ...] = ("happy", "sad", "aggressive")

PEAK_CEILING_DB = -1.0
"""No written file decodes to a peak above this (dBFS), whatever its format."""

_LOSSLESS = frozenset({"wav", "flac"})
# format name -> (libsndfile format, subtype)
_FORMATS: dict[str, tuple[str, str]] = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "ogg": ("OGG", "VORBIS"),
}


@dataclass(frozen=True)
class DemoConfig:
    """What demo set to generate. Stored as ``demo.json`` beside the manifest.

    ``split_fractions`` (train, validation, test) is applied within every genre x mood
    pair; the default gives 5/1/2 of 8. Small sets keep at least one train track per
    pair, one test track once a pair has 2 tracks and one validation track from 3.
    ``formats`` are cycled over the tracks, so every format occurs in every class.
    """

    genres: tuple[str, ...] = KNOWN_GENRES
    moods: tuple[str, ...] = KNOWN_MOODS
    tracks_per_pair: int = 8
    duration_s: float = 10.0
    sample_rate: int = 22050
    formats: tuple[str, ...] = ("wav", "flac", "mp3")
    split_fractions: tuple[float, float, float] = (0.625, 0.125, 0.25)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("genres", "moods", "formats", "split_fractions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for kind, values, known in (
            ("genre", self.genres, KNOWN_GENRES),
            ("mood", self.moods, KNOWN_MOODS),
            ("format", self.formats, _FORMATS),
        ):
            unknown = [v for v in values if v not in known]
            if not values or unknown or len(set(values)) != len(values):
                raise ValueError(f"demo {kind}s must be distinct values from {sorted(known)}: {values}")
        if self.tracks_per_pair < 1:
            raise ValueError("tracks_per_pair must be >= 1")
        if self.duration_s < 1.0 or self.sample_rate < 8000:
            raise ValueError("duration_s must be >= 1 and sample_rate >= 8000")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0:
            raise ValueError("split_fractions must be three non-negative numbers")
        self.split_counts()  # raises when no train track would be left

    @property
    def num_tracks(self) -> int:
        return len(self.genres) * len(self.moods) * self.tracks_per_pair

    def split_counts(self) -> tuple[int, int, int]:
        """(train, validation, test) tracks in each genre x mood pair."""
        n = self.tracks_per_pair
        total = sum(self.split_fractions) or 1.0
        _, f_val, f_test = (f / total for f in self.split_fractions)
        n_test = max(int(n >= 2), int(np.floor(n * f_test + 0.5)))
        n_val = max(int(n >= 3), int(np.floor(n * f_val + 0.5)))
        n_train = n - n_val - n_test
        if n_train < 1:
            raise ValueError(f"split_fractions {self.split_fractions} leave no train track per pair")
        return n_train, n_val, n_test

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DemoConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def make_demo_set(root: str | Path, cfg: DemoConfig = DemoConfig()) -> Path:
    """Generate the demo set under ``root`` (a local directory); return its manifest.

    Audio goes to ``root/audio/<genre>/<track_id>.<ext>`` and the manifest to
    ``root/manifest.csv`` with uris relative to ``root``. When ``root`` already holds a
    complete set made from the same config (and synthesis version) it is returned as is,
    so re-running training does not pay for generation again. The manifest is written
    last and atomically: a killed run never leaves a manifest naming missing audio.
    """
    root = Path(root)
    manifest = root / MANIFEST_NAME
    stamp = root / STAMP_NAME
    wanted = {"version": SYNTH_VERSION, "config": json.loads(json.dumps(cfg.to_dict()))}
    if _is_complete(root, manifest, stamp, wanted):
        return manifest

    # Invalidate first: if this run dies half way, the next one starts over.
    for path in (manifest, stamp):
        path.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)

    rows = []
    split_of = [s for s, count in zip(SPLITS, cfg.split_counts()) for _ in range(count)]
    index = 0
    for genre in cfg.genres:
        (root / "audio" / genre).mkdir(parents=True, exist_ok=True)
        for mood in cfg.moods:
            for k in range(cfg.tracks_per_pair):
                track_id = f"demo-{index + 1:04d}"
                ext = cfg.formats[index % len(cfg.formats)]
                uri = f"audio/{genre}/{track_id}.{ext}"
                audio = render_track(genre, mood, cfg, _track_rng(cfg, genre, mood, k))
                _write_audio(root / uri, audio, cfg.sample_rate, ext)
                rows.append({
                    "track_id": track_id,
                    "uri": uri,
                    "split": split_of[k],
                    "genres": genre,
                    "moods": mood,
                    "artist_id": f"demo-artist-{index + 1:04d}",
                    "duration_s": len(audio) / cfg.sample_rate,
                })
                index += 1

    _atomic_write(stamp, lambda tmp: tmp.write_text(json.dumps(wanted, indent=2) + "\n"))
    write_manifest(pd.DataFrame(rows, columns=list(CONTRACT_COLUMNS)), str(manifest))  # validated, atomic
    return manifest


def render_track(genre: str, mood: str, cfg: DemoConfig, rng: np.random.Generator) -> np.ndarray:
    """One mono float32 track of ``cfg.duration_s`` seconds, peak-normalised.

    Public so that the sound of a class can be auditioned or reused without writing
    a whole set; ``rng`` carries all the per-track variation.
    """
    track = _Track(genre, mood, cfg, rng)
    return track.master(_GENRES[genre](track))


# --------------------------------------------------------------------------------------
# Moods: mode, brightness and energy.

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_PHRYGIAN = (0, 1, 3, 5, 7, 8, 10)


@dataclass(frozen=True)
class _Mood:
    scale: tuple[int, ...]
    progressions: tuple[tuple[int, ...], ...]  # scale degrees, one chord per slot
    power_chords: bool  # root-fifth-octave instead of triads
    rolloff: tuple[float, float]  # harmonic k has amplitude 1/k**rolloff: low is bright
    max_harmonics: int
    lowpass_hz: tuple[float, float] | None  # master low-pass (darkness)
    pluck_dark: bool  # low-passed pluck excitation (mellow attack)
    note_scale: float  # note-length multiplier: > 1 is slower notes, < 1 denser
    tempo_bias: tuple[float, float]  # where in the genre's tempo band to draw from
    drive: tuple[float, float] | None  # tanh saturation amount
    noise_db: tuple[float, float]  # added noise, dB relative to the mix RMS
    peak_db: tuple[float, float]  # final peak level, dBFS


_MOODS: dict[str, _Mood] = {
    "happy": _Mood(
        scale=_MAJOR,
        progressions=((0, 4, 5, 3), (0, 3, 4, 3), (0, 5, 3, 4), (0, 3, 0, 4), (3, 4, 0, 0)),
        power_chords=False, rolloff=(0.9, 1.2), max_harmonics=40, lowpass_hz=None,
        pluck_dark=False, note_scale=1.0, tempo_bias=(0.4, 1.0), drive=None,
        noise_db=(-60.0, -50.0), peak_db=(-2.0, -1.0),
    ),
    "sad": _Mood(
        scale=_MINOR,
        progressions=((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 5, 4), (0, 5, 3, 4)),
        power_chords=False, rolloff=(2.2, 3.0), max_harmonics=8, lowpass_hz=(900.0, 1600.0),
        pluck_dark=True, note_scale=2.0, tempo_bias=(0.0, 0.5), drive=None,
        noise_db=(-60.0, -50.0), peak_db=(-12.0, -8.0),
    ),
    "aggressive": _Mood(
        scale=_PHRYGIAN,
        progressions=((0, 0, 1, 0), (0, 5, 6, 0), (0, 1, 5, 1), (0, 0, 5, 6), (0, 3, 1, 0)),
        power_chords=True, rolloff=(0.6, 0.9), max_harmonics=40, lowpass_hz=None,
        pluck_dark=False, note_scale=0.5, tempo_bias=(0.5, 1.0), drive=(3.0, 6.0),
        noise_db=(-22.0, -15.0), peak_db=(-1.5, -1.0),
    ),
}


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _track_rng(cfg: DemoConfig, genre: str, mood: str, k: int) -> np.random.Generator:
    """Per-track generator keyed by (seed, genre, mood, k): stable under config subsets."""
    gi, mi = KNOWN_GENRES.index(genre), KNOWN_MOODS.index(mood)
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, gi, mi, k]))


class _Track:
    """Shared musical context of one track and the instruments that play in it.

    Short-lived (one per rendered track), so its table cache is not global state.
    """

    TABLE = 2048

    def __init__(self, genre: str, mood: str, cfg: DemoConfig, rng: np.random.Generator):
        self.rng, self.sr = rng, cfg.sample_rate
        self.n = int(round(cfg.duration_s * cfg.sample_rate))
        self.mood = _MOODS[mood]
        lo, hi = _TEMPO[genre]
        u = rng.uniform(*self.mood.tempo_bias)
        self.tempo = lo + (hi - lo) * u
        self.beat = 60.0 / self.tempo
        self.key = int(rng.integers(12))  # pitch class of the tonic
        progressions = self.mood.progressions
        self.progression = progressions[int(rng.integers(len(progressions)))]
        self.rolloff = float(rng.uniform(*self.mood.rolloff))
        self.offset = float(rng.uniform(0.0, 4 * self.beat))  # start somewhere in a bar
        self._tables: dict[tuple[int, float, bool], np.ndarray] = {}

    # -- harmony ---------------------------------------------------------------------
    def pitch(self, octave_base: int, degree: int) -> int:
        """MIDI note of scale ``degree`` counted from the tonic at/above ``octave_base``."""
        scale = self.mood.scale
        tonic = octave_base + (self.key - octave_base) % 12
        return tonic + scale[degree % 7] + 12 * (degree // 7)

    def chord(self, t: float, chord_s: float, base: int = 52) -> list[int]:
        """MIDI notes of the chord sounding at time ``t`` (chords last ``chord_s``)."""
        # The epsilon puts onsets computed on the grid inside their own chord.
        slot = int((t + self.offset + 1e-3) // chord_s)
        degree = self.progression[slot % len(self.progression)]
        if self.mood.power_chords:
            root = self.pitch(base, degree)
            return [root, root + 7, root + 12]
        return [self.pitch(base, degree + 2 * i) for i in range(3)]

    def bass(self, t: float, chord_s: float, base: int = 40) -> int:
        return self.chord(t, chord_s, base)[0]

    def times(self, step_s: float, phase_s: float = 0.0, pre: bool = False) -> np.ndarray:
        """Onset times (s) of a grid with period ``step_s``, aligned to the bar grid.

        ``pre`` adds the onset before time 0, for sounds already ringing at the start.
        """
        first = (phase_s - self.offset) % step_s - (step_s if pre else 0.0)
        return np.arange(first, self.n / self.sr, step_s)

    # -- oscillators -----------------------------------------------------------------
    def table(self, freq: float, rolloff: float | None = None, odd: bool = False) -> np.ndarray:
        """Band-limited single-cycle wavetable; harmonics stop below Nyquist."""
        rolloff = self.rolloff if rolloff is None else rolloff
        harmonics = max(1, min(self.mood.max_harmonics, int(0.45 * self.sr / freq)))
        key = (harmonics, round(rolloff, 3), odd)
        if key not in self._tables:
            k = np.arange(1, harmonics + 1)
            amp = k ** -rolloff * ((k % 2 == 1) if odd else 1.0)
            x = np.arange(self.TABLE) / self.TABLE
            wave = (amp[:, None] * np.sin(2 * np.pi * k[:, None] * x[None, :])).sum(axis=0)
            self._tables[key] = wave / np.abs(wave).max()
        return self._tables[key]

    def osc(self, freq: float, n: int, rolloff: float | None = None, odd: bool = False,
            detune_cents: float = 0.0) -> np.ndarray:
        freq = freq * 2.0 ** (detune_cents / 1200.0)
        table = self.table(freq, rolloff, odd)
        phase = self.rng.random() + freq * np.arange(n) / self.sr
        return table[((phase % 1.0) * self.TABLE).astype(np.int64)]

    def note(self, freq: float, dur: float, attack: float, decay: float | None,
             release: float = 0.05, **osc: Any) -> np.ndarray:
        """Oscillator note: linear attack, exponential decay (None: sustain), release."""
        n = int((dur + release) * self.sr)
        t = np.arange(n) / self.sr
        env = np.minimum(1.0, t / max(attack, 1e-3))
        if decay is not None:
            env = env * np.exp(-t / decay)
        env *= np.clip((dur + release - t) / release, 0.0, 1.0)
        return self.osc(freq, n, **osc) * env

    def pluck(self, freq: float, dur: float, damping: float = 0.996) -> np.ndarray:
        """Karplus-Strong string, computed one period per numpy step (vectorised)."""
        period = max(2, int(round(self.sr / freq - 0.5)))
        n = int(dur * self.sr) + period + 1
        y = np.empty(n)
        excite = self.rng.uniform(-1.0, 1.0, period + 1)
        if self.mood.pluck_dark:  # soft (thumb) attack: fewer upper partials
            excite = np.convolve(excite, np.ones(4) / 4, mode="same")
        y[: period + 1] = excite - excite.mean()
        pos = period + 1
        while pos < n:
            end = min(pos + period, n)
            y[pos:end] = damping * 0.5 * (y[pos - period:end - period]
                                          + y[pos - period - 1:end - period - 1])
            pos = end
        fade = min(n, int(0.02 * self.sr))
        y[n - fade:] *= np.linspace(1.0, 0.0, fade)
        return y / (np.abs(y).max() + 1e-9)

    # -- drums -----------------------------------------------------------------------
    def kick(self, f_start: float, f_end: float, decay: float) -> np.ndarray:
        t = np.arange(int(4 * decay * self.sr)) / self.sr
        tau = 0.04
        phase = 2 * np.pi * (f_end * t + (f_start - f_end) * tau * (1 - np.exp(-t / tau)))
        click = self.rng.uniform(-1, 1, len(t)) * np.exp(-t / 0.002) * 0.3
        return np.sin(phase) * np.exp(-t / decay) + click

    def noise_hit(self, low: float, high: float | None, decay: float) -> np.ndarray:
        """Filtered noise burst: hats (high-passed) and snare body (band-passed)."""
        t = np.arange(int(5 * decay * self.sr)) / self.sr
        nyq = 0.5 * self.sr
        if high is None or high >= 0.95 * nyq:
            sos = signal.butter(4, low / nyq, btype="highpass", output="sos")
        else:
            sos = signal.butter(2, [low / nyq, high / nyq], btype="bandpass", output="sos")
        burst = signal.sosfilt(sos, self.rng.standard_normal(len(t)))
        return burst / (np.abs(burst).max() + 1e-9) * np.exp(-t / decay)

    # -- mixing ----------------------------------------------------------------------
    def place(self, out: np.ndarray, sound: np.ndarray, t: float, gain: float = 1.0) -> None:
        """Mix ``sound`` into ``out`` from time ``t``; parts outside the track are cut."""
        start = int(round(t * self.sr))
        skip = max(0, -start)
        start += skip
        m = min(len(sound) - skip, len(out) - start)
        if m > 0:
            out[start:start + m] += gain * sound[skip:skip + m]

    def db(self, lo: float, hi: float) -> float:
        """Random gain between ``lo`` and ``hi`` dB, as a factor."""
        return 10.0 ** (self.rng.uniform(lo, hi) / 20.0)

    def master(self, mix: np.ndarray) -> np.ndarray:
        """Mood processing (darkness, noise, saturation), then peak normalisation."""
        mood, rng = self.mood, self.rng
        mix = mix - mix.mean()
        if mood.lowpass_hz is not None:
            cutoff = rng.uniform(*mood.lowpass_hz)
            sos = signal.butter(4, cutoff / (0.5 * self.sr), output="sos")
            mix = signal.sosfilt(sos, mix)
        rms = np.sqrt(np.mean(mix**2)) + 1e-9
        mix = mix + rng.standard_normal(self.n) * rms * 10.0 ** (rng.uniform(*mood.noise_db) / 20)
        if mood.drive is not None:
            drive = rng.uniform(*mood.drive)
            mix = np.tanh(drive * mix / (np.abs(mix).max() + 1e-9)) / np.tanh(drive)
        peak = 10.0 ** (min(rng.uniform(*mood.peak_db), PEAK_CEILING_DB) / 20.0)
        return (mix * peak / (np.abs(mix).max() + 1e-9)).astype(np.float32)


# --------------------------------------------------------------------------------------
# Genres: tempo, rhythm and instrumentation. Each returns the unmastered mix.

_TEMPO: dict[str, tuple[float, float]] = {
    "ambient": (60.0, 76.0),
    "techno": (124.0, 132.0),
    "hiphop": (84.0, 96.0),
    "folk": (100.0, 120.0),
}


def _ambient(tr: _Track) -> np.ndarray:
    """Long detuned pads with slow swells over a root drone; no percussion."""
    out, rng, sr = np.zeros(tr.n), tr.rng, tr.sr
    chord_s = 4 * tr.beat
    attack, release = rng.uniform(0.8, 1.6), rng.uniform(1.5, 2.5)
    for t in tr.times(chord_s, pre=True):
        for i, midi in enumerate(tr.chord(t, chord_s)):
            for cents in (-7.0, 7.0):
                voice = tr.note(_midi_hz(midi), chord_s, attack, None, release,
                                detune_cents=cents + rng.normal(0, 2))
                tr.place(out, voice, t, 0.25 * tr.db(-3, 0) / (1 + 0.3 * i))
    drone = tr.note(_midi_hz(tr.bass(0.0, chord_s, 40)), tr.n / sr, 2.0, None, 1.0, rolloff=3.0)
    out += 0.3 * drone[: tr.n]
    clock = np.arange(tr.n) / sr
    swell_hz, swell_phase = rng.uniform(0.08, 0.25), rng.uniform(0, 2 * np.pi)
    swell = 1.0 + 0.4 * np.sin(2 * np.pi * swell_hz * clock + swell_phase)
    out *= swell
    # Sparse soft bells two octaves up, slow attack so they do not read as plucks.
    for t0 in tr.times(2 * tr.beat * tr.mood.note_scale):
        if rng.random() < 0.6:
            midi = int(rng.choice(tr.chord(t0, chord_s))) + 24
            bell = tr.note(_midi_hz(midi), 1.5, 0.08, 0.8, 0.5, rolloff=4.0)
            tr.place(out, bell, t0, 0.08 * tr.db(-4, 0))
    return out


def _techno(tr: _Track) -> np.ndarray:
    """Four-on-the-floor kick, off-beat hats, saw/square bass line, chord stabs."""
    out, rng = np.zeros(tr.n), tr.rng
    b, chord_s = tr.beat, 8 * tr.beat
    kick = tr.kick(rng.uniform(130, 170), rng.uniform(45, 55), rng.uniform(0.12, 0.2))
    for t in tr.times(b):
        tr.place(out, kick, t, 0.9)
    hat = tr.noise_hit(7000.0, None, rng.uniform(0.02, 0.04))
    for t in tr.times(b, 0.5 * b):
        tr.place(out, hat, t, 0.3 * tr.db(-2, 0))
    if rng.random() < 0.5:  # 16th ghost hats
        for t in tr.times(0.5 * b, 0.25 * b):
            tr.place(out, hat, t, 0.1 * tr.db(-4, 0))
    if rng.random() < 0.5:  # clap on 2 and 4
        clap = tr.noise_hit(1200.0, 4000.0, 0.06)
        for t in tr.times(2 * b, b):
            tr.place(out, clap, t, 0.35)
    odd = bool(rng.random() < 0.5)  # square or saw bass
    step = 0.5 * b * tr.mood.note_scale
    phase = 0.5 * b if tr.mood.note_scale <= 1 else 0.0
    for t in tr.times(step, phase):
        midi = tr.bass(t, chord_s) + (12 if rng.random() < 0.15 else 0)
        note = tr.note(_midi_hz(midi), 0.8 * step, 0.005, 0.6 * step, 0.02, odd=odd)
        tr.place(out, note, t, 0.35 * tr.db(-2, 0))
    stab_every = rng.choice([2.0, 4.0]) * b
    for t in tr.times(stab_every, rng.choice([0.5, 1.5]) * b):
        for midi in tr.chord(t, chord_s, 60):
            stab = tr.note(_midi_hz(midi), 0.15 * tr.mood.note_scale, 0.003, 0.15, 0.05)
            tr.place(out, stab, t, 0.12)
    return out


def _hiphop(tr: _Track) -> np.ndarray:
    """Swung boom-bap kick/snare, swung hats, sine sub bass, electric-piano chords."""
    out, rng = np.zeros(tr.n), tr.rng
    b, bar = tr.beat, 4 * tr.beat
    swing = rng.uniform(0.58, 0.66)  # share of a beat given to the first eighth

    def at(step: int) -> float:  # 16th-note step of a bar -> seconds, swung per eighth
        eighth, sixteenth = divmod(step, 2)
        beat, half = divmod(eighth, 2)
        t = beat * b + (swing * b if half else 0.0)
        return t + sixteenth * ((1 - swing) if half else swing) * b / 2

    kicks = [(0, 7, 10), (0, 3, 8, 10), (0, 10, 11), (0, 6, 10), (0, 8, 9, 14)]
    pattern = kicks[int(rng.integers(len(kicks)))]
    kick = tr.kick(rng.uniform(100, 130), rng.uniform(40, 48), rng.uniform(0.22, 0.32))
    snare = 0.8 * tr.noise_hit(1500.0, 6000.0, rng.uniform(0.08, 0.14))
    body = np.sin(2 * np.pi * rng.uniform(170, 200) * np.arange(len(snare)) / tr.sr)
    snare += 0.6 * body * np.exp(-np.arange(len(snare)) / (0.05 * tr.sr))
    hat = tr.noise_hit(6000.0, None, rng.uniform(0.02, 0.035))
    hat_steps = range(0, 16, 1 if tr.mood.note_scale < 1 else 2)
    chord_s = bar
    for bar_t in tr.times(bar, pre=True):
        for s in pattern:
            tr.place(out, kick, bar_t + at(s), 0.9)
            sub_len = 1.5 * b
            midi = tr.bass(bar_t + at(s), chord_s, 28)
            sub = tr.note(_midi_hz(midi), sub_len, 0.01, 0.5, 0.1, rolloff=8.0)
            tr.place(out, sub, bar_t + at(s), 0.45)
        for s in (4, 12):
            tr.place(out, snare, bar_t + at(s), 0.55 * tr.db(-2, 0))
        for s in hat_steps:
            tr.place(out, hat, bar_t + at(s), 0.18 * tr.db(-5, 0))
        # Chords every half bar; sad holds a whole bar, aggressive stabs every beat.
        keys_every = 0.5 * bar * tr.mood.note_scale
        for k in range(int(round(bar / keys_every))):
            t = bar_t + k * keys_every
            for midi in tr.chord(t, chord_s, 55):
                dur = keys_every * (0.9 if tr.mood.note_scale >= 1 else 0.4)
                key = tr.note(_midi_hz(midi), dur, 0.01, 1.2, 0.2, rolloff=tr.rolloff + 1.0)
                trem = 1 + 0.2 * np.sin(2 * np.pi * 5.0 * np.arange(len(key)) / tr.sr)
                tr.place(out, key * trem, t, 0.1)
    return out


def _folk(tr: _Track) -> np.ndarray:
    """Karplus-Strong fingerpicked arpeggios over a plucked bass; no drums."""
    out, rng = np.zeros(tr.n), tr.rng
    b, chord_s = tr.beat, 4 * tr.beat
    patterns = [(0, 1, 2, 1), (0, 1, 2, 3, 2, 1), (0, 2, 1, 2), (0, 1, 2, 3), (0, 2, 3, 1)]
    pattern = patterns[int(rng.integers(len(patterns)))]
    step = 0.5 * b * tr.mood.note_scale
    ring = rng.uniform(0.9, 1.4)
    damping = rng.uniform(0.993, 0.998)
    for i, t in enumerate(tr.times(step)):
        tones = tr.chord(t, chord_s, 55)
        tones = tones + [tones[0] + 12]
        midi = tones[pattern[i % len(pattern)]]
        tr.place(out, tr.pluck(_midi_hz(midi), ring, damping), t, 0.3 * tr.db(-3, 0))
    for t in tr.times(2 * b):
        tr.place(out, tr.pluck(_midi_hz(tr.bass(t, chord_s)), 1.5, damping), t, 0.4)
    if tr.mood.note_scale < 1:  # aggressive: strummed chords on every beat as well
        for t in tr.times(b):
            for j, midi in enumerate(tr.chord(t, chord_s, 48)):
                tr.place(out, tr.pluck(_midi_hz(midi), 0.5, 0.99), t + 0.012 * j, 0.25)
    return out


_GENRES: dict[str, Callable[[_Track], np.ndarray]] = {
    "ambient": _ambient,
    "techno": _techno,
    "hiphop": _hiphop,
    "folk": _folk,
}


# --------------------------------------------------------------------------------------
# Files.


def _write_audio(path: Path, audio: np.ndarray, sample_rate: int, ext: str) -> None:
    """Write one file whose *decoded* peak stays at or below ``PEAK_CEILING_DB``.

    Why the loop: lossy codecs add noise on top of the waveform, and on saturated
    (aggressive) tracks that overshoots the encoded peak by up to ~5 dB, so a lossy file
    is decoded, and re-encoded quieter if it would clip.
    """
    fmt, subtype = _FORMATS[ext]
    ceiling = 10.0 ** (PEAK_CEILING_DB / 20.0)
    for _ in range(4):
        sf.write(str(path), audio, sample_rate, format=fmt, subtype=subtype)
        if ext in _LOSSLESS:
            return
        peak = float(np.abs(sf.read(str(path), dtype="float32")[0]).max())
        if peak <= ceiling:
            return
        audio = audio * (0.97 * ceiling / peak)


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _is_complete(root: Path, manifest: Path, stamp: Path, wanted: dict[str, Any]) -> bool:
    """True when ``root`` holds a finished set generated from ``wanted``."""
    try:
        if json.loads(stamp.read_text()) != wanted:
            return False
        uris = pd.read_csv(manifest, usecols=["uri"])["uri"]
    except (OSError, ValueError, KeyError):
        return False
    return all((root / uri).is_file() for uri in uris)


if __name__ == "__main__":  # python -m mgc.datasets.demo [ROOT]: write the default set to listen to
    import sys

    print(make_demo_set(sys.argv[1] if len(sys.argv) > 1 else "data/demo"))
