"""The tagging actors: score decoded tracks with every checkpoint, write one Parquet file each call.

Why actors of their own: a Ray Data actor loads its checkpoints once and then tags batch
after batch. Each call writes its own output file, whole or not at all (atomic rename
locally, one PUT on object stores), named by the batch's track ids so a retried batch
overwrites itself. Before it loads anything an actor checks that every checkpoint is
the one the run planned with (its ``model_id``), and before each file that the run still
holds the partition's lease (:mod:`mgc.io.lease`): workers orphaned by a dead driver
stop writing once another run has taken over.

On CPUs one kind of actor decodes, featurises and scores its own tracks
(:class:`DecodeTagger`, one per CPU, one torch thread each): the model is most of the
cost, so separate decode actors would idle while the model sits on one core. With GPUs,
CPU actors decode raw windows and GPU actors compute the mels on the device and score in
bf16 (:class:`Tagger`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from mgc.audio.logmel import log_mel, torch_frontend
from mgc.io import storage
from mgc.io.lease import check_holder
from mgc.models.checkpoint import CheckpointError, load_checkpoint
from mgc.models.inference import EMBEDDING, predict_tracks
from mgc.models.zoo import TaggerModel
from mgc.stages.decode import ERROR, MEL, WINDOWS, DecodeMel
from mgc.tagging.partition import file_name
from mgc.tagging.schema import PredictionSchema, build_table, combined_tasks


@dataclass(frozen=True)
class TaggerSpec:
    """What every tagging actor of a run needs (passed to it as a dict).

    ``model_ids`` are the ids the run planned with, one per checkpoint: an actor refuses a
    checkpoint that no longer matches (rewritten under the run). ``lease_token`` is the
    run's hold on the partition (None: no lease check, for direct use in code and tests).
    ``max_windows`` overrides the checkpoints' own cap at tag time; ``track_timeout`` and
    ``max_bytes`` are the per-track limits of :class:`mgc.config.DataConfig`.
    """

    checkpoints: tuple[str, ...]
    model_ids: tuple[str, ...]
    partition: str
    embeddings: bool = False
    top_k: int = 3
    batch_size: int = 64
    lease_token: str | None = None
    max_windows: int | None = None
    track_timeout: float | None = None
    max_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TaggerSpec":
        return cls(**{**data, "checkpoints": tuple(data["checkpoints"]), "model_ids": tuple(data["model_ids"])})


class _Float32(torch.nn.Module):
    """Run a module in float32 even inside an autocast region (the mel front end: its
    dB values must not pass through bf16 matmuls)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.inner(x.float())


class Tagger:
    """Ray Data actor: score decoded tracks with every checkpoint, write one Parquet file.

    Returns one small row per track (id and error) for the run's summary, plus the
    seconds this call spent scoring (``busy_s``, on the call's first row) so that the
    run can report how busy its accelerator was. On CUDA the models run under bf16
    autocast (the mel front end stays float32); on CPU everything is float32.
    """

    def __init__(self, spec: dict[str, Any], use_gpu: bool):
        self.spec = TaggerSpec.from_dict(spec)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.loaded = [load_checkpoint(uri, self.device) for uri in self.spec.checkpoints]
        for loaded, expected in zip(self.loaded, self.spec.model_ids):
            if loaded.model_id != expected:
                raise CheckpointError(f"{loaded.directory} is now {loaded.model_id}, not the {expected} this run "
                                      "planned with: it changed under the run; start the run again")
        self.models: list[torch.nn.Module] = [c.model for c in self.loaded]
        self.schema = PredictionSchema(combined_tasks([c.meta.tasks for c in self.loaded]), self.spec.embeddings)
        self.frontend = _Float32(torch_frontend(self.audio).to(self.device))
        self.partition = self.spec.partition
        self.top_k = self.spec.top_k
        self.batch_size = self.spec.batch_size

    @property
    def audio(self):
        """The checkpoints' front end, with the run's ``max_windows`` when it sets one."""
        audio = self.loaded[0].meta.audio
        return audio if self.spec.max_windows is None else dataclasses.replace(audio, max_windows=self.spec.max_windows)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _score(self, inputs: list[np.ndarray], raw: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        probs: dict[str, np.ndarray] = {}
        embeddings = []
        with self._autocast():
            for checkpoint, model in zip(self.loaded, self.models):
                types = {task: spec.type for task, spec in checkpoint.meta.tasks.items()}
                scores = predict_tracks(model, inputs, types, self.batch_size, self.device,
                                        frontend=self.frontend if raw else None, embeddings=self.schema.embedding)
                embeddings.extend([scores.pop(EMBEDDING)] if self.schema.embedding else [])
                probs.update(scores)
        return probs, (np.concatenate(embeddings, axis=1) if embeddings else None)

    def _empty_scores(self) -> dict[str, np.ndarray]:
        return {task: np.zeros((0, len(spec.labels)), np.float32) for task, spec in self.schema.tasks.items()}

    def _write(self, batch: dict[str, np.ndarray], errors: list[str | None], probs: dict[str, np.ndarray],
               embeddings: np.ndarray | None, busy_s: float) -> dict[str, np.ndarray]:
        """Write the batch's Parquet file (whole or not at all); return the summary rows."""
        ids = [str(t) for t in batch["track_id"]]
        table = build_table(self.schema, ids, [str(u) for u in batch["uri"]], batch["duration_s"],
                            batch["n_segments"], errors, probs, embeddings, self.top_k)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        if self.spec.lease_token is not None:  # an orphan of a dead run must not write into a new run's partition
            check_holder(self.partition, self.spec.lease_token)
        storage.write_bytes(storage.join(self.partition, file_name(ids)), sink.getvalue())
        busy = np.zeros(len(ids), dtype=np.float64)
        busy[:1] = busy_s
        return {"track_id": np.array(ids, dtype=object), ERROR: np.array(errors, dtype=object), "busy_s": busy}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        raw = WINDOWS in batch
        values = batch[WINDOWS if raw else MEL]
        # An all-null error column comes back from Arrow as NaN floats: only strings are errors.
        errors = [e if isinstance(e, str) else None for e in batch[ERROR]]
        good = [np.asarray(values[i]) for i, e in enumerate(errors) if e is None]
        if good:
            probs, embeddings = self._score(good, raw)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        else:
            probs, embeddings = self._empty_scores(), None
        return self._write(batch, errors, probs, embeddings, time.perf_counter() - started)


# Summary-only error of tracks not tagged because their store is down: never written to
# the predictions (the tracks are fine and a rerun tags them); the driver fails the job.
OUTAGE = "outage"


def outage_rows(track_ids: np.ndarray, message: str) -> dict[str, np.ndarray]:
    """Summary rows for a batch left untagged by a storage outage (``message``: its StorageError)."""
    ids = np.array([str(t) for t in track_ids], dtype=object)
    return {"track_id": ids, ERROR: np.array([f"{OUTAGE}: {message}"] * len(ids), dtype=object),
            "busy_s": np.zeros(len(ids), dtype=np.float64)}


# Windows per forward pass on CPU, at most: measured on one core, 8-16 windows of
# [128, 130] run 1.5-2x faster per window than 64 (the activations stay in cache).
CPU_MAX_BATCH = 16


def optimized_for_cpu(model: TaggerModel, example: torch.Tensor, rtol: float = 1e-3) -> torch.nn.Module:
    """``model`` with its backbone prepared for CPU inference, else ``model`` itself.

    torch.fx's ``optimize_for_inference`` folds each BatchNorm into its convolution and
    runs the convolutions on oneDNN: ~1.5x eager speed for resnet18 and ~4x for the
    compact cnn on one core, the same outputs up to float rounding. It is checked on
    ``example`` (a batch of log-mels) and skipped for a backbone that does not trace or
    whose output differs by more than ``rtol`` of its scale.
    """
    try:
        import torch.fx.experimental.optimization as fx_optimization

        fast = copy.deepcopy(model).eval()
        # torch.fx prints the generated code of a graph that fails to run: not our log's business.
        with contextlib.redirect_stderr(io.StringIO()):
            fast.backbone = fx_optimization.optimize_for_inference(fast.backbone)
            with torch.inference_mode():
                expected, got = model.embed(example), fast.embed(example)
        scale = max(1.0, float(expected.abs().max()))
        if got.shape != expected.shape or not float((got - expected).abs().max()) <= rtol * scale:
            return model
        return fast
    except Exception:  # noqa: BLE001 - an optimisation, never a reason to fail
        return model


class DecodeTagger:
    """Ray Data actor for CPU-only runs: decode, featurise and score its own tracks.

    Tracks are decoded one at a time (:class:`mgc.stages.decode.DecodeMel`, the training decoder)
    and scored as soon as a forward pass worth of windows is waiting, so an actor holds
    about one model batch of mels, not a whole file's worth. Models run through
    :func:`optimized_for_cpu`, ``min(batch_size, CPU_MAX_BATCH)`` windows per pass. The
    output file and the summary rows are exactly the :class:`Tagger`'s.
    """

    def __init__(self, spec: dict[str, Any], torch_threads: int = 1):
        self.outage: str | None = None  # the StorageError of a store found down, until it answers again
        torch.set_num_threads(max(1, int(torch_threads)))
        spec = {**spec, "batch_size": min(spec["batch_size"], CPU_MAX_BATCH)}
        self.tagger = Tagger(spec, use_gpu=False)
        audio = self.tagger.audio
        self.decoder = DecodeMel(audio.to_dict(), MEL, self.tagger.spec.track_timeout, self.tagger.spec.max_bytes)
        noise = np.random.default_rng(0).standard_normal((2, audio.window_samples)).astype(np.float32)
        example = torch.from_numpy(log_mel(0.1 * noise, audio))
        self.tagger.models = [optimized_for_cpu(m, example) for m in self.tagger.models]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Tag the batch; while its store is down, answer at once with :data:`OUTAGE` rows.

        A store down as a whole is the job's failure, not the tracks' (:func:`track_error`).
        Raising here would only drop this block: Ray Data goes on with every other block,
        each waiting out its storage retries. So the first :class:`StorageError` is kept,
        this and later calls return summary rows marked :data:`OUTAGE` (nothing written)
        after one quick probe, and the driver fails the job on seeing them.
        """
        probe = [str(batch["uri"][0]), self.tagger.partition] if len(batch["uri"]) else []
        if self.outage is not None and not all(storage.reachable(uri, timeout_s=2.0) for uri in probe):
            return outage_rows(batch["track_id"], self.outage)
        self.outage = None
        try:
            return self._tag(batch)
        except storage.StorageError as err:
            self.outage = str(err)
            return outage_rows(batch["track_id"], self.outage)

    def _tag(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tagger = self.tagger
        errors: list[str | None] = []
        durations: list[float] = []
        segments: list[int] = []
        parts: list[tuple[dict[str, np.ndarray], np.ndarray | None]] = []
        waiting: list[np.ndarray] = []
        busy = 0.0

        def score_waiting() -> None:
            nonlocal busy
            if waiting:
                started = time.perf_counter()
                parts.append(tagger._score(waiting, raw=False))
                busy += time.perf_counter() - started
                waiting.clear()

        for uri in batch["uri"]:
            mel, duration, error = self.decoder.decode(str(uri))
            errors.append(error)
            durations.append(duration)
            segments.append(len(mel))
            if error is None:
                waiting.append(mel)
                if sum(len(m) for m in waiting) >= tagger.batch_size:
                    score_waiting()
        score_waiting()
        if parts:
            probs = {task: np.concatenate([p[task] for p, _ in parts]) for task in parts[0][0]}
            embeddings = np.concatenate([e for _, e in parts]) if parts[0][1] is not None else None
        else:
            probs, embeddings = tagger._empty_scores(), None
        decoded = {"track_id": batch["track_id"], "uri": batch["uri"],
                   "duration_s": np.array(durations, dtype=np.float32),
                   "n_segments": np.array(segments, dtype=np.int32)}
        return tagger._write(decoded, errors, probs, embeddings, busy)
