"""Feature baseline (``--arch features``): hand-made audio features + gradient-boosted trees.

Why: a CNN's numbers mean little on their own. This baseline reads the same manifest,
uses the same splits, decodes with the same :func:`mgc.audio.track.load_track` (so it skips the
same tracks with the same reasons) and is scored by the same code
(:func:`mgc.evaluation.scoring.metrics_for`, thresholds from :func:`mgc.evaluation.metrics.tune_thresholds`),
so every CNN run can be compared with it number for number.

Features, per track: each 3 s window (``AudioConfig``) is analysed with librosa frame by
frame (n_fft / hop of the audio config) -- 20 MFCCs, 12 chroma bins, spectral contrast
(7 rows), spectral centroid, bandwidth and roll-off, zero-crossing rate and RMS -- and the
frames of all the track's windows are pooled into a mean and a standard deviation per
feature; the tempo (BPM) is estimated once per track from the onset envelopes of its
windows laid end to end. That is 2 x 44 + 1 = 89 float32 values at the default 22,050 Hz
(see :func:`feature_names`). Pooling frames rather than window means keeps the spread
meaningful for a track of a single window.

Classifiers: one scikit-learn ``HistGradientBoostingClassifier`` per multiclass task and
one per tag of a multilabel task, each trained on the training tracks labeled in that task
(trees: no standardisation). Probabilities are mapped onto the task's full label vocabulary
(a class absent from training gets probability 0; a tag with a single training value gets
its training rate).

The baseline is for comparison, not for tagging: fitted trees have no safe
(non-pickle) file format and checkpoints never hold pickles (docs/architecture.md, "Data contracts"), so
:meth:`BaselineResult.save` writes only ``baseline.json`` (features, parameters, task
specs with tuned thresholds, metrics, skipped tracks); the fitted estimators live in
memory on :attr:`BaselineResult.model`.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd
import ray
from threadpoolctl import threadpool_limits

from mgc import __version__
from mgc.io import storage
from mgc.audio.decode import track_error
from mgc.audio.track import load_track
from mgc.config import AudioConfig, DataConfig, TaskSpec, TrainConfig
from mgc.config import SPLITS
from mgc.labels import mask_column, target_column, targets_matrix
from mgc.log import get_logger
from mgc.io.jsonio import dumps

log = get_logger()

# Ray Data actors import this module to run FeatureExtractor, so torch (mgc.audio.logmel,
# mgc.evaluation.scoring, mgc.stages.decode) is imported only inside the driver-side functions that need it:
# importing torch in every actor costs seconds of a small run on a 2-core machine.
if TYPE_CHECKING:
    from mgc.evaluation.scoring import Evaluation, Predictions

__all__ = [
    "ARCH",
    "BASELINE_FILE",
    "HGB_PARAMS",
    "BaselineError",
    "BaselineModel",
    "BaselineResult",
    "TaskModel",
    "extract_features",
    "feature_names",
    "fit_feature_baseline",
    "fit_task",
    "track_features",
]

ARCH = "features"
"""The ``--arch`` value that selects this baseline."""

BASELINE_FILE = "baseline.json"

N_MFCC = 20
CHROMA_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CONTRAST_FMIN = 200.0
CONTRAST_MAX_BANDS = 6

HGB_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1,
    "max_iter": 100,
    "max_leaf_nodes": 15,
    "l2_regularization": 1.0,
    "early_stopping": False,
}
"""``HistGradientBoostingClassifier`` parameters; ``min_samples_leaf`` is sized to the data
(:func:`_min_samples_leaf`) and ``random_state`` is ``cfg.seed``."""

FEATURES = "features"
ERROR = "error"


class BaselineError(RuntimeError):
    """The baseline cannot be fitted at all (e.g. no decodable training tracks)."""


# --------------------------------------------------------------------------- features


def _contrast_bands(sample_rate: int) -> int:
    """Octave bands of spectral contrast that fit under Nyquist (librosa's rule), at most 6."""
    bands = CONTRAST_MAX_BANDS
    while bands > 1 and CONTRAST_FMIN * 2.0 ** (bands - 1) >= 0.5 * sample_rate:
        bands -= 1
    return bands


def _frame_feature_names(cfg: AudioConfig) -> list[str]:
    return (
        [f"mfcc_{i + 1:02d}" for i in range(N_MFCC)]
        + [f"chroma_{name}" for name in CHROMA_NAMES]
        + [f"contrast_{i + 1}" for i in range(_contrast_bands(cfg.sample_rate) + 1)]
        + ["spectral_centroid", "spectral_bandwidth", "spectral_rolloff", "zero_crossing_rate", "rms"]
    )


def feature_names(cfg: AudioConfig) -> list[str]:
    """Names of the track feature vector, in order: frame-feature means, their standard
    deviations, then ``tempo`` (89 names at 22,050 Hz)."""
    frames = _frame_feature_names(cfg)
    return [f"{n}_mean" for n in frames] + [f"{n}_std" for n in frames] + ["tempo"]


@functools.lru_cache(maxsize=16)
def _mel_filterbank(cfg: AudioConfig) -> np.ndarray:
    """librosa's mel filterbank for ``cfg`` (as :func:`mgc.audio.logmel.mel_filterbank`), cached."""
    import librosa

    return librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, dtype=np.float32
    )


def track_features(windows: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """Feature vector (float32, :func:`feature_names` order) of one track's windows
    ``[n_windows, window_samples]``.

    librosa works on all windows at once (its functions take leading batch axes); the
    STFT is computed once and shared by every spectral feature.
    """
    import librosa

    windows = np.ascontiguousarray(windows, dtype=np.float32)
    if windows.ndim != 2 or len(windows) == 0:
        raise ValueError(f"expected [n_windows, samples] with n_windows >= 1, got {windows.shape}")
    sr, n_fft, hop = cfg.sample_rate, cfg.n_fft, cfg.hop_length
    magnitude = np.abs(librosa.stft(windows, n_fft=n_fft, hop_length=hop))  # [w, freq, frames]
    power = magnitude**2
    mel_db = librosa.power_to_db(
        np.matmul(_mel_filterbank(cfg), power), ref=1.0, amin=cfg.amin, top_db=cfg.top_db
    )
    centroid = librosa.feature.spectral_centroid(S=magnitude, sr=sr, n_fft=n_fft, hop_length=hop)
    per_frame = [
        librosa.feature.mfcc(S=mel_db, n_mfcc=N_MFCC),
        librosa.feature.chroma_stft(S=power, sr=sr, n_fft=n_fft, hop_length=hop, tuning=0.0),
        librosa.feature.spectral_contrast(
            S=magnitude, sr=sr, n_fft=n_fft, hop_length=hop,
            fmin=CONTRAST_FMIN, n_bands=_contrast_bands(sr),
        ),
        centroid,
        librosa.feature.spectral_bandwidth(
            S=magnitude, sr=sr, n_fft=n_fft, hop_length=hop, centroid=centroid
        ),
        librosa.feature.spectral_rolloff(S=magnitude, sr=sr, n_fft=n_fft, hop_length=hop),
        librosa.feature.zero_crossing_rate(windows, frame_length=n_fft, hop_length=hop),
        librosa.feature.rms(S=magnitude, frame_length=n_fft, hop_length=hop),
    ]
    # [w, rows, frames] each -> [rows, w * frames]: pool the frames of every window.
    frames = np.concatenate(per_frame, axis=1).transpose(1, 0, 2).reshape(sum(f.shape[1] for f in per_frame), -1)
    onset = librosa.onset.onset_strength(S=mel_db, sr=sr, hop_length=hop)  # [w, frames]
    tempo = librosa.feature.tempo(onset_envelope=onset.reshape(-1), sr=sr, hop_length=hop)
    vector = np.concatenate([frames.mean(axis=1), frames.std(axis=1), np.atleast_1d(tempo)[:1]])
    return vector.astype(np.float32)


class FeatureExtractor:
    """Callable class run by Ray Data actors: decode each uri and compute its features.

    Failures are recorded exactly as the CNN's decode stage records them
    (:class:`mgc.stages.decode.DecodeMel`), by :func:`mgc.audio.decode.track_error`; such a row gets NaN
    features and never stops the job.
    """

    def __init__(self, audio: dict[str, Any], track_timeout: float | None = None, max_bytes: int | None = None):
        self.cfg = AudioConfig.from_dict(audio)
        self.limits = (max_bytes, track_timeout)
        self.width = len(feature_names(self.cfg))

    def _one(self, uri: str) -> tuple[np.ndarray, str | None]:
        try:
            return track_features(load_track(uri, self.cfg, *self.limits).windows, self.cfg), None
        except Exception as err:  # noqa: BLE001 - classified (or re-raised) by track_error
            return np.full(self.width, np.nan, dtype=np.float32), track_error(err)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [self._one(str(uri)) for uri in batch["uri"]]
        out = dict(batch)
        out[FEATURES] = np.stack([r[0] for r in results]).astype(np.float32)
        out[ERROR] = np.array([r[1] for r in results], dtype=object)
        return out


def extract_features(table: pd.DataFrame, audio: AudioConfig, data: DataConfig) -> tuple[np.ndarray, pd.Series]:
    """Features ``[len(table), n_features]`` (NaN rows for failures) and the error per row.

    Runs on Ray Data actors sized like the CNN's decode stage (``data``); rows come back
    aligned with ``table`` (matched on ``track_id``, unique in a manifest).
    """
    from mgc.stages.decode import decode_concurrency, limits

    columns = table[["track_id", "uri"]].reset_index(drop=True)
    size = max(1, data.decode_batch_size)
    blocks = [columns.iloc[start : start + size] for start in range(0, len(columns), size)]
    dataset = ray.data.from_pandas(blocks or [columns]).map_batches(
        FeatureExtractor,
        fn_constructor_kwargs={"audio": audio.to_dict(), **limits(data)},
        batch_size=size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(decode_concurrency(data), max(1, len(blocks)))),
        num_cpus=data.decode_num_cpus,
    )
    rows = dataset.materialize().to_pandas()
    position = {track_id: i for i, track_id in enumerate(rows["track_id"])}
    order = [position[track_id] for track_id in columns["track_id"]]
    width = len(feature_names(audio))
    features = np.stack([np.asarray(v, dtype=np.float32).reshape(width) for v in rows[FEATURES]])[order]
    errors = rows[ERROR].iloc[order].reset_index(drop=True)
    return features, errors.where(errors.notna(), None)


# --------------------------------------------------------------------------- models


def _min_samples_leaf(n_samples: int) -> int:
    """sklearn's default 20 leaves no split on small sets (8 demo or 60 GTZAN training
    tracks); a tenth of the data, between 2 and 20."""
    return int(max(2, min(20, n_samples // 10)))


@dataclass
class TaskModel:
    """Fitted trees of one task: one estimator (multiclass) or one per tag (multilabel).

    ``estimators[i]`` is ``None`` where training data had a single class; ``priors``
    then holds the constant probability predicted.
    """

    type: str
    labels: tuple[str, ...]
    estimators: list[Any]
    priors: np.ndarray
    n_train: int

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Probabilities ``[tracks, len(labels)]`` float32, in the task's label order."""
        n = len(features)
        probs = np.tile(self.priors.astype(np.float32), (n, 1))
        if n == 0:
            return probs.reshape(0, len(self.labels))
        if self.type == "multiclass":
            estimator = self.estimators[0]
            if estimator is not None:
                probs[:] = 0.0
                probs[:, estimator.classes_.astype(int)] = estimator.predict_proba(features)
            return probs
        for k, estimator in enumerate(self.estimators):
            if estimator is not None:
                probs[:, k] = estimator.predict_proba(features)[:, list(estimator.classes_).index(1)]
        return probs


def _hgb(n_samples: int, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        **HGB_PARAMS, min_samples_leaf=_min_samples_leaf(n_samples), random_state=seed
    )


def fit_task(features: np.ndarray, targets: np.ndarray, spec: TaskSpec, seed: int = 0) -> TaskModel:
    """Fit one task on labeled training tracks (``targets`` multi-hot, spec label order)."""
    n_labels = len(spec.labels)
    targets = np.asarray(targets, dtype=np.float32).reshape(len(features), n_labels)
    if spec.type == "multiclass":
        y = targets.argmax(axis=1)
        classes = np.unique(y)
        priors = np.bincount(y, minlength=n_labels).astype(np.float32) / max(len(y), 1)
        if len(y) == 0:
            priors = np.full(n_labels, 1.0 / n_labels, dtype=np.float32)
        estimator = None
        if len(classes) > 1:
            estimator = _hgb(len(y), seed).fit(features, y)
        return TaskModel(spec.type, tuple(spec.labels), [estimator], priors, len(y))
    estimators: list[Any] = []
    priors = targets.mean(axis=0) if len(targets) else np.zeros(n_labels, dtype=np.float32)
    for k in range(n_labels):
        y = targets[:, k].astype(int)
        estimators.append(_hgb(len(y), seed).fit(features, y) if 0 < y.sum() < len(y) else None)
    return TaskModel(spec.type, tuple(spec.labels), estimators, np.asarray(priors, dtype=np.float32), len(targets))


@dataclass
class BaselineModel:
    """The fitted baseline: trees per task over the :attr:`feature_names` vector.

    In memory only (see the module docstring: no pickles on disk).
    """

    feature_names: list[str]
    tasks: dict[str, TaskModel]
    params: dict[str, Any]

    def predict_proba(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Probabilities per task for a ``[tracks, n_features]`` matrix."""
        return {task: model.predict_proba(features) for task, model in self.tasks.items()}


# --------------------------------------------------------------------------- driver


@dataclass
class BaselineResult:
    """Metrics (shaped like the CNN's: ``{split: {task: task_metrics}}``), task specs with
    thresholds tuned on validation, skipped tracks, counts and the fitted model."""

    metrics: dict[str, dict[str, dict]]
    tasks: dict[str, TaskSpec]
    skipped: pd.DataFrame
    counts: dict[str, int]
    model: BaselineModel
    predictions: dict[str, dict[str, Predictions]]
    audio: AudioConfig
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def evaluation(self) -> Evaluation:
        """The same object :func:`mgc.evaluation.scoring.evaluate_splits` returns, for
        :func:`mgc.evaluation.scoring.write_plots`."""
        from mgc.evaluation.scoring import Evaluation

        return Evaluation(tasks=dict(self.tasks), metrics=self.metrics, predictions=self.predictions)

    def metrics_json(self) -> dict[str, Any]:
        """The run's ``metrics.json`` content, shaped as the CNN's (docs/architecture.md, "Data contracts"):
        ``{split: {task: ...}}``, ``skipped`` (track_id, error) and ``counts``, plus what
        the baseline was (``baseline``: arch, feature count, parameters, seconds)."""
        return {
            **self.metrics,
            "skipped": self.skipped[["track_id", "error"]].to_dict("records"),
            "counts": self.counts,
            "baseline": {"arch": ARCH, "n_features": len(self.model.feature_names),
                         "params": self.model.params, "seconds": self.seconds},
        }

    def to_json(self) -> dict[str, Any]:
        """What ``baseline.json`` holds."""
        return {
            "arch": ARCH,
            "note": "feature baseline for comparison; fitted trees are not saved (no pickles)",
            "mgc_version": __version__,
            "features": self.model.feature_names,
            "params": self.model.params,
            "audio": self.audio.to_dict(),
            "tasks": {task: s.to_dict() for task, s in self.tasks.items()},
            "metrics": self.metrics,
            "counts": self.counts,
            "skipped": self.skipped[["track_id", "error"]].to_dict("records"),
            "seconds": self.seconds,
        }

    def save(self, directory: str) -> str:
        """Write ``baseline.json`` into ``directory`` (local path or any fsspec URI); returns its URI."""
        uri = storage.join(str(directory), BASELINE_FILE)
        storage.write_text(uri, dumps(self.to_json(), indent=2))
        return uri


def fit_feature_baseline(
    cfg: TrainConfig, table: pd.DataFrame, specs: Mapping[str, TaskSpec]
) -> BaselineResult:
    """Extract features, fit the trees on ``train``, score ``validation`` and ``test``.

    ``table`` and ``specs`` are what :func:`mgc.training.driver.prepare_table` returns (columns
    ``track_id``, ``uri``, ``split``, ``target_<task>``, ``mask_<task>``). Ray must be
    initialised. Raises :class:`BaselineError` when no training track decodes.
    """
    from mgc.evaluation.metrics import tune_thresholds
    from mgc.models.inference import aggregate_vote
    from mgc.evaluation.scoring import Predictions, metrics_for

    started = time.time()
    table = table.reset_index(drop=True)
    features, errors = extract_features(table, cfg.audio, cfg.data)
    extracted = time.time()
    failed = errors.notna().to_numpy()
    skipped = table.loc[failed, ["track_id", "uri"]].assign(error=errors[failed].to_numpy()).reset_index(drop=True)
    good = table.loc[~failed].reset_index(drop=True)
    good_features = features[~failed]
    split_rows = {split: (good["split"] == split).to_numpy() for split in SPLITS}
    counts = {split: int(rows.sum()) for split, rows in split_rows.items()}
    log.info(f"baseline features for {len(table)} tracks: {counts}, skipped {len(skipped)}")
    if counts["train"] == 0:
        raise BaselineError(
            f"no decodable training tracks in {cfg.manifest} ({len(skipped)} skipped: "
            f"{skipped['error'].head(5).tolist()})"
        )

    def labeled(split: str, task: str) -> tuple[np.ndarray, np.ndarray]:
        rows = split_rows[split] & (good[mask_column(task)].to_numpy() > 0)
        targets = targets_matrix(good.loc[rows, target_column(task)]) if rows.any() else np.zeros(
            (0, len(specs[task].labels)), dtype=np.float32)
        return good_features[rows], targets

    # One OpenMP thread unless told otherwise: on a busy 2-core machine sklearn's default
    # of every core made a 0.4 s fit take 10-30 s (threads spinning against each other).
    threads = max(1, int(cfg.cpus_per_worker or 1))
    with threadpool_limits(threads):
        models = {task: fit_task(*labeled("train", task), spec, seed=cfg.seed) for task, spec in specs.items()}
    model = BaselineModel(
        feature_names=feature_names(cfg.audio),
        tasks=models,
        params={**HGB_PARAMS, "random_state": cfg.seed,
                "min_samples_leaf": {t: _min_samples_leaf(m.n_train) for t, m in models.items()}},
    )
    fitted = time.time()

    # Scored as mgc.evaluation.scoring.evaluate_splits scores a checkpoint: splits with tracks only,
    # multilabel thresholds tuned on validation and applied unchanged to test.
    # A track is one prediction here, so its "vote" is that prediction's own vote.
    predictions: dict[str, dict[str, Predictions]] = {}
    for split in ("validation", "test"):
        if counts[split] == 0:
            continue
        predictions[split] = {}
        for task, spec in specs.items():
            x, truth = labeled(split, task)
            with threadpool_limits(threads):
                probs = models[task].predict_proba(x)
            votes = aggregate_vote(list(probs[:, None, :]), spec.type) if len(probs) else probs.copy()
            predictions[split][task] = Predictions(truth=truth, probs=probs, votes=votes)
    tasks = dict(specs)
    for task, spec in tasks.items():
        if spec.type == "multilabel" and task in predictions.get("validation", {}):
            p = predictions["validation"][task]
            tasks[task] = replace(spec, thresholds=tuple(float(t) for t in tune_thresholds(p.truth, p.probs)))
    metrics = {split: metrics_for(preds, tasks, cfg.top_k) for split, preds in predictions.items()}
    seconds = {
        "features": round(extracted - started, 2),
        "fit": round(fitted - extracted, 2),
        "total": round(time.time() - started, 2),
    }
    return BaselineResult(
        metrics=metrics,
        tasks=tasks,
        skipped=skipped,
        counts={**counts, "skipped": len(skipped)},
        model=model,
        predictions=predictions,
        audio=cfg.audio,
        seconds=seconds,
    )
