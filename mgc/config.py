"""Configuration dataclasses shared by every layer.

Why one module: the audio front end must be identical at training and tagging time, so
its parameters live in one frozen dataclass that is saved inside every checkpoint and
read back from it (inference always uses the checkpoint's config, never a default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

TASKS: tuple[str, ...] = ("genre", "mood")
"""Tasks mgc knows; task ``t`` reads its labels from the manifest column ``t + "s"``."""

TASK_TYPES: tuple[str, ...] = ("multiclass", "multilabel")

SPLITS: tuple[str, ...] = ("train", "validation", "test")
"""The ``split`` values of a manifest (after normalisation), in the order runs report them."""


def label_column(task: str) -> str:
    """Manifest column holding the labels of ``task`` (``genre`` -> ``genres``)."""
    return f"{task}s"


LIBROSA_DB = "librosa_db"
"""Front end kind: librosa's ``power_to_db(melspectrogram(...))`` per window (mgc's default)."""
EFFICIENTAT = "efficientat"
"""Front end kind of EfficientAT's AudioSet models: pre-emphasis 0.97, a Kaldi mel bank,
``log(x + 1e-5)`` then ``(x + 4.5) / 5`` (see :mod:`mgc.audio.efficientat_frontend`)."""
FRONTENDS: tuple[str, ...] = (LIBROSA_DB, EFFICIENTAT)
"""Front end kinds this mgc can compute; a checkpoint asking for another is refused."""


class FrontendError(ValueError):
    """An audio config this mgc cannot compute (an unknown front end kind or setting)."""


@dataclass(frozen=True)
class AudioConfig:
    """How audio becomes model input. Saved with every checkpoint.

    Defaults follow docs/architecture.md, "Data contracts": 22,050 Hz mono, n_fft 2048, hop 512, 128 mels,
    log-power in dB, 3 s windows. ``frontend`` names the algorithm that turns a window
    into model input (one of :data:`FRONTENDS`); the other fields are its parameters. A
    pretrained backbone brings its own (:data:`EFFICIENTAT_AUDIO`), and every consumer
    builds exactly the checkpoint's, never a default.
    """

    frontend: str = LIBROSA_DB
    sample_rate: int = 22050
    n_fft: int = 2048
    # STFT window (Hann) length, centred inside n_fft; None: n_fft.
    win_length: int | None = None
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    window_s: float = 3.0
    # Windows are cut back to back; the tail shorter than a window is dropped.
    # A track shorter than ``min_duration_s`` is refused as too short.
    min_duration_s: float = 3.0
    # Cap on windows per track (evenly spaced over the track); None keeps all.
    max_windows: int | None = None
    # librosa_db log scale: 10*log10(max(amin, power)), floored at (window max - top_db).
    amin: float = 1e-10
    top_db: float = 80.0
    # A track whose overall RMS is below this (dBFS) is refused as silent.
    silence_threshold_db: float = -60.0

    def __post_init__(self) -> None:
        if self.frontend not in FRONTENDS:
            raise FrontendError(
                f"audio front end {self.frontend!r} is not one this mgc can compute ({', '.join(FRONTENDS)}); "
                "use the mgc version that trained the checkpoint"
            )
        if self.win_length is not None and not 0 < self.win_length <= self.n_fft:
            raise FrontendError(f"win_length must be in 1..n_fft ({self.n_fft}), not {self.win_length}")

    @property
    def window_samples(self) -> int:
        """Samples in one analysis window."""
        return int(round(self.window_s * self.sample_rate))

    @property
    def frames_per_window(self) -> int:
        """STFT frames per window (centered STFT). EfficientAT's pre-emphasis filter is a
        'valid' convolution: the signal is one sample shorter before its STFT."""
        samples = self.window_samples - (1 if self.frontend == EFFICIENTAT else 0)
        return 1 + samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], strict: bool = False) -> "AudioConfig":
        """Rebuild from :meth:`to_dict`'s form.

        ``strict`` (checkpoints) refuses settings this mgc does not know: ignoring one would
        feed the model other features than it was trained on. A dict without ``frontend``
        (written before front ends had names) is the librosa_db one.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if strict and unknown:
            raise FrontendError(f"audio front end settings {unknown} are unknown to this mgc; "
                                "use the mgc version that trained the checkpoint")
        return cls(**{k: v for k, v in data.items() if k in known})


EFFICIENTAT_AUDIO = AudioConfig(
    frontend=EFFICIENTAT, sample_rate=32000, n_fft=1024, win_length=800, hop_length=320, n_mels=128,
    fmin=0.0, fmax=15000.0,
)
"""EfficientAT's front end (their ``AugmentMelSTFT`` in evaluation mode): 32 kHz, n_fft 1024,
Hann window 800, hop 320, 128 Kaldi mel bands from 0 to sr/2 - 1000 Hz. Windows stay
mgc's 3 s (``--window-s 10`` gives their training clip length; README compares both)."""

FRONTEND_FIELDS: tuple[str, ...] = (
    "frontend", "sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax",
)
"""The settings that make a front end; windowing and track checks are free to change."""

ARCH_AUDIO: Mapping[str, AudioConfig] = {
    arch: EFFICIENTAT_AUDIO for arch in ("mn04", "mn05", "mn10", "mn20", "mn30", "mn40")
}
"""Archs that bring their own front end (``mgc.models.efficientat.WIDTHS`` holds the same names)."""


def audio_for_arch(audio: AudioConfig, arch: str, pretrained: bool) -> AudioConfig:
    """``audio`` with ``arch``'s own front end filled in.

    Every front end setting still at mgc's default takes the arch's value, so
    ``--arch mn04`` alone gets EfficientAT's 32 kHz Kaldi front end while ``--window-s``
    and the other windowing flags keep what was asked. A pretrained backbone must see
    exactly its own front end: any other explicit setting is refused here, before a
    single track is decoded.
    """
    preset = ARCH_AUDIO.get(arch)
    if preset is None:
        return audio
    default = AudioConfig()
    filled = dataclasses.replace(audio, **{
        name: getattr(preset, name) for name in FRONTEND_FIELDS if getattr(audio, name) == getattr(default, name)
    })
    wrong = {name: getattr(filled, name) for name in FRONTEND_FIELDS if getattr(filled, name) != getattr(preset, name)}
    if pretrained and wrong:
        raise FrontendError(
            f"pretrained {arch} needs its own front end ({', '.join(f'{k}={getattr(preset, k)!r}' for k in wrong)}), "
            f"not {', '.join(f'{k}={v!r}' for k, v in wrong.items())}"
        )
    return filled


@dataclass(frozen=True)
class DataConfig:
    """How the Ray Data decode stage is sized."""

    # Number of CPU decode actors (None: one per CPU Ray reports, at least 1).
    decode_concurrency: int | None = None
    # CPUs each decode actor reserves; fractional values let actors share cores.
    decode_num_cpus: float = 1.0
    # Tracks handed to one actor call.
    decode_batch_size: int = 8
    # Per-track limits, so one pathological file cannot stall or sink a run: a wall-clock
    # limit on fetch + decode (a FIFO, a stalled read) and a size cap checked before
    # reading; offenders become ``timeout`` / ``too_large`` rows. None disables either.
    track_timeout: float | None = 300.0
    max_bytes: int | None = 2 * 1024**3


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of log-mel windows; all off by default.

    Off by default because each costs CPU time per step on small machines (the closing
    note of issue 5 measures it) and the demo does not need it.
    """

    # SpecAugment: masks of up to *_width bins/frames set to the window's floor.
    spec_augment: bool = False
    freq_masks: int = 2
    freq_mask_width: int = 16
    time_masks: int = 2
    time_mask_width: int = 24
    # Mixup of windows and targets with lambda ~ Beta(alpha, alpha); 0 disables it.
    mixup_alpha: float = 0.0
    # Random gain in [-gain_db, +gain_db] dB per window; 0 disables it.
    gain_db: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.spec_augment or self.mixup_alpha > 0 or self.gain_db > 0


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs. Every field is a `jobs/train.py` flag."""

    manifest: str = ""
    output: str = "runs/demo"
    arch: str = "resnet18"
    # Transfer learning: "imagenet" (torchvision's weights API; cached under TORCH_HOME)
    # or a local torchvision state_dict file, the RGB stem folded to one channel; for the
    # EfficientAT archs (mn04 ... mn40) "audioset" (their GitHub release, cached under
    # TORCH_HOME, SHA-256 checked) or the release file itself.
    pretrained: str | None = None
    weights_file: str | None = None
    # Frozen-embedding probe: embed every track once with the pretrained backbone (cached,
    # see embedding_cache) and train only the heads on the embeddings, in seconds.
    probe: bool = False
    # Passes over the training embeddings; the best by validation score is kept.
    probe_epochs: int = 60
    # Where probe embeddings are cached (local path or s3://); None: $XDG_CACHE_HOME/mgc
    # (~/.cache/mgc) on the driver. Reused whenever the same backbone, weights and front
    # end meet the same track again.
    embedding_cache: str | None = None
    # Train only the heads (backbone learning rate 0) for the first N epochs.
    freeze_backbone_epochs: int = 0
    # Backbone learning rate = lr * backbone_lr_scale (heads use lr).
    backbone_lr_scale: float = 1.0
    # Per-layer learning rates (discriminative fine-tuning): the backbone's first layer
    # learns at layer_lr_decay x the backbone rate, its last at the full backbone rate,
    # the layers between on a geometric ramp; 1.0 gives every layer the same rate.
    layer_lr_decay: float = 1.0
    epochs: int = 10
    batch_size: int = 32
    # Precise BatchNorm: after each epoch, BatchNorm statistics are recomputed with the
    # epoch's final weights over up to this many of its (unaugmented) training batches, so
    # evaluation sees the statistics the weights were trained with; 0 keeps the running
    # averages (which lag badly with few steps, e.g. MobileNetV3's momentum of 0.01).
    precise_bn_batches: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    num_workers: int = 1
    use_gpu: bool = False
    # CPUs each training worker reserves (None: an even share of the cluster's CPUs on
    # CPU training, 1 with GPUs); torch uses that many threads.
    cpus_per_worker: float | None = None
    seed: int = 0
    # Fraction of the labeled tracks to hold out for validation/test when the manifest
    # has no ``split`` column (grouped by artist when ``artist_id`` is present).
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Grouped K-fold cross-validation: fold K of the manifest's ``fold`` column
    # (jobs/build_manifest.py --folds) is validation, the other folds train.
    fold: int | None = None
    # Force a task type ("multiclass"/"multilabel"); otherwise inferred from labels.
    task_types: Mapping[str, str] = field(default_factory=dict)
    # Tasks to train; empty means every task that has labels in the manifest.
    tasks: tuple[str, ...] = ()
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Worker-group restarts Ray Train may make after a failure; each resumes from the
    # latest epoch checkpoint.
    max_failures: int = 2
    # Ray Train storage path for per-epoch checkpoints; default: <output>/ray_results.
    storage_path: str | None = None
    # k of the top-k accuracy (the seed projects reported top-4).
    top_k: int = 4

    def __post_init__(self) -> None:
        # Refused when the config is made (from flags, run.json, a Tune trial), not in a
        # worker after minutes of decoding.
        if self.layer_lr_decay <= 0:
            raise ValueError(f"--layer-lr-decay must be > 0, not {self.layer_lr_decay}")
        pretrained = bool(self.pretrained or self.weights_file)
        object.__setattr__(self, "audio", audio_for_arch(self.audio, self.arch, pretrained))
        if self.probe and not pretrained:
            raise ValueError("--probe trains only the heads on a frozen backbone: give --weights-file or --pretrained")


@dataclass(frozen=True)
class EvaluateConfig:
    """One evaluation. Every field is a `jobs/evaluate.py` flag."""

    checkpoint: str = ""
    manifest: str = ""
    # train / validation / test, or "all" for every row.
    split: str = "test"
    # Default: <checkpoint>/../eval-<split>.
    output: str | None = None
    # k of the top-k accuracy (the seed projects reported top-4).
    top_k: int = 4
    # Tracks per forward pass batch.
    batch_size: int = 32
    data: DataConfig = field(default_factory=DataConfig)


@dataclass(frozen=True)
class SearchConfig:
    """A Ray Tune (ASHA) search over the training loop's main knobs (`jobs/tune.py`)."""

    num_samples: int = 8
    search_lr: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    search_arch: tuple[str, ...] = ("cnn", "resnet18")
    search_batch_size: tuple[int, ...] = (16, 32)
    # Augmentation presets: none, specaugment, mixup, all.
    search_augment: tuple[str, ...] = ("none", "specaugment", "mixup")
    # ASHA: epochs a trial runs before it can be stopped, and concurrent trials.
    grace_period: int = 2
    max_concurrent_trials: int | None = None


@dataclass(frozen=True)
class CompareConfig:
    """Several archs trained on one manifest with one budget (`jobs/compare.py`)."""

    # Archs to train (fine-tuned on Ray Train), in table order; empty: every registered
    # CNN, plus the pretrained audio archs given weights below.
    archs: tuple[str, ...] = ()
    # Archs also run as a frozen-embedding probe (``--probe``), in rows "<arch> probe".
    probe_archs: tuple[str, ...] = ()
    # Weights per arch, ARCH=PATH (repeatable), e.g. mn04=mn04_as_mAP_432.pt; an arch named
    # here loads this file instead of --weights-file.
    weights: Mapping[str, str] = field(default_factory=dict)
    # Add the feature baseline (``--arch features``) as the reference row.
    baseline: bool = True
    # Split whose metrics fill the table.
    report_split: str = "test"


@dataclass(frozen=True)
class TagConfig:
    """One tagging run. Every field is a `jobs/tag.py` flag."""

    manifest: str = ""
    checkpoint: tuple[str, ...] = ()
    output: str = "runs/tags"
    # Windows per forward pass.
    batch_size: int = 64
    # Tracks per tagging-actor call, and so per output file.
    rows_per_file: int = 256
    # Tagging actors (None: one per GPU with --use-gpu, else one).
    concurrency: int | None = None
    use_gpu: bool = False
    # CPUs each tagging actor reserves (torch uses that many threads).
    tagger_num_cpus: float = 1.0
    retag: bool = False
    embeddings: bool = False
    # Most tags listed per track in `genres` / `moods` (those over their threshold).
    top_k: int = 3
    # Tag at most this many (not yet tagged) tracks: for trials.
    limit: int | None = None
    # Windows per track at tag time (evenly spaced over the track, only those read),
    # overriding the checkpoint's own cap; bounds the work and memory of long tracks.
    max_windows: int | None = None
    # Raw windows per GPU tagging call: GPU batches are bounded by their window count
    # (tracks per call = this / max_windows, or / 10 for tracks of unknown length).
    gpu_window_budget: int = 8192
    # Take over the partition's lease when it has expired (a crashed run); a live one
    # is never taken.
    force: bool = False
    # A remote manifest may name local paths (workers read their own disks) / uris
    # outside the manifest's bucket.
    allow_local_uris: bool = False
    allow_other_buckets: bool = False
    # Retries of a tagging call that killed its actor (which is replaced each time) before
    # its batch is given up; such batches are split until the track that kills them is found.
    actor_restarts: int = 2
    data: DataConfig = field(default_factory=DataConfig)


@dataclass(frozen=True)
class IndexConfig:
    """A vector index over one predictions partition's embeddings (`jobs/index.py` flags);
    the search knobs (``nprobe``, ``refine_factor``) are also `mgc similar` flags."""

    predictions: str = ""
    output: str = ""
    # The partition to index (None: the only one under --predictions).
    model_id: str | None = None
    # The checkpoints that tagged the partition, recorded so `mgc similar FILE` can embed a
    # new file the same way; checked against the partition's model_id.
    checkpoint: tuple[str, ...] = ()
    # auto: exact (flat) below exact_below vectors, IVF-PQ above; or flat / ivfpq.
    kind: str = "auto"
    exact_below: int = 200_000
    # IVF lists (None: about 4 sqrt(n)) and PQ sub-vectors (the largest divisor of the
    # embedding size up to this).
    nlist: int | None = None
    pq_m: int = 64
    # Vectors sampled (reservoir, seeded) to train IVF-PQ.
    train_size: int = 100_000
    # Lists probed per query, and candidates re-ranked per neighbour with the stored vectors.
    nprobe: int = 32
    refine_factor: int = 10
    # Rows read per batch from the predictions.
    batch_rows: int = 20_000
    # Build from scratch instead of adding only new rows.
    rebuild: bool = False
    # Retrain an IVF-PQ index once it holds this many times the vectors it was trained for.
    rebuild_growth: float = 4.0
    seed: int = 0


@dataclass(frozen=True)
class ReportConfig:
    """The catalog report (`jobs/catalog_report.py` flags)."""

    predictions: str = ""
    output: str = "runs/catalog-report"
    # The partition to report on (None: the only one under --predictions).
    model_id: str | None = None
    # Rows read per batch; the aggregates are counts, so memory does not grow with the catalog.
    batch_rows: int = 100_000
    # Bins of the score histograms over [0, 1].
    bins: int = 20


@dataclass(frozen=True)
class TaskSpec:
    """One head: its type, label vocabulary (head output order) and per-tag thresholds."""

    type: str
    labels: tuple[str, ...]
    thresholds: tuple[float, ...] | None = None

    def decision_thresholds(self) -> tuple[float, ...]:
        """Thresholds to use; 0.5 per tag until tuned on validation data."""
        return self.thresholds if self.thresholds is not None else (0.5,) * len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (``mgc.json``, the Ray Train worker's config, ``baseline.json``)."""
        return {"type": self.type, "labels": list(self.labels),
                "thresholds": None if self.thresholds is None else [float(t) for t in self.thresholds]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskSpec":
        thresholds = data.get("thresholds")
        return cls(type=data["type"], labels=tuple(data["labels"]),
                   thresholds=None if thresholds is None else tuple(float(t) for t in thresholds))


def train_config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from its ``dataclasses.asdict`` form (``run.json``)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in data.items() if k in known}
    values["audio"] = AudioConfig.from_dict(values.get("audio", {}))
    values["data"] = DataConfig(**values.get("data", {}))
    values["augment"] = AugmentConfig(**values.get("augment", {}))
    values["tasks"] = tuple(values.get("tasks", ()))
    return TrainConfig(**values)
