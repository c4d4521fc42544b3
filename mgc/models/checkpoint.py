"""The checkpoint directory: ``model.pt`` (a plain state_dict) + ``mgc.json``.

Why this shape: a checkpoint must never run code when loaded (``weights_only=True``), and
everything needed to use it - architecture, audio front end, label vocabularies, task
types, decision thresholds - travels in ``mgc.json`` beside the weights, so tagging always
uses the exact front end the model was trained with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from mgc import __version__
from mgc.io import storage
from mgc.config import AudioConfig, FrontendError, TaskSpec
from mgc.models.zoo import TaggerModel, build_model
from mgc.io.jsonio import dumps

MODEL_FILE = "model.pt"
META_FILE = "mgc.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unsafe to load."""


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything in ``mgc.json``."""

    arch: str
    audio: AudioConfig
    tasks: Mapping[str, TaskSpec]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    name: str = "mgc"
    mgc_version: str = __version__

    def heads(self) -> dict[str, int]:
        return {task: len(spec.labels) for task, spec in self.tasks.items()}

    def to_json(self) -> str:
        data = {
            "mgc_version": self.mgc_version,
            "name": self.name,
            "arch": self.arch,
            "audio": self.audio.to_dict(),
            "tasks": {t: s.to_dict() for t, s in self.tasks.items()},
            "metrics": dict(self.metrics),
        }
        return dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CheckpointMeta":
        """Parse ``mgc.json``. Its audio front end is read strictly: a checkpoint whose front
        end this mgc cannot compute exactly is refused (:class:`CheckpointError`) rather than
        fed features it was not trained on."""
        data = json.loads(text)
        try:
            audio = AudioConfig.from_dict(data["audio"], strict=True)
        except FrontendError as err:
            raise CheckpointError(f"cannot use this checkpoint: {err}") from err
        tasks = {t: TaskSpec.from_dict(s) for t, s in data["tasks"].items()}
        return cls(
            arch=data["arch"],
            audio=audio,
            tasks=tasks,
            metrics=data.get("metrics", {}),
            name=data.get("name", "mgc"),
            mgc_version=data.get("mgc_version", "unknown"),
        )


def save_checkpoint(directory: str | Path, model: torch.nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model.pt`` and ``mgc.json`` into a local ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch.save(state, directory / MODEL_FILE)
    (directory / META_FILE).write_text(meta.to_json())
    return directory


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP/compile wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def read_meta(directory: str | Path) -> CheckpointMeta:
    """``mgc.json`` of the checkpoint ``directory`` (a local path or any fsspec URL)."""
    uri = storage.join(str(directory), META_FILE)
    if not storage.exists(uri):
        raise CheckpointError(_not_a_checkpoint(str(directory), META_FILE))
    try:
        return CheckpointMeta.from_json(storage.read_bytes(uri).decode())
    except CheckpointError as err:
        raise CheckpointError(f"{directory}: {err}") from err


def _not_a_checkpoint(directory: str, missing: str) -> str:
    """The error for a directory without ``missing``; a training run folder (which holds its
    checkpoint in ``checkpoint/``) is the usual mistake, so the message names that path."""
    inner = storage.join(directory, "checkpoint")
    if storage.exists(storage.join(inner, META_FILE)):
        return (f"{storage.redact(directory)} is a training run folder, not a checkpoint: "
                f"use {storage.redact(inner)}")
    return f"{storage.redact(directory)} is not an mgc checkpoint: {missing} is missing"


@dataclass
class LoadedCheckpoint:
    """A ready model plus its metadata and stable id; ``directory`` is where it was read
    from (a local directory, or the remote uri: its temporary copy is gone)."""

    model: TaggerModel
    meta: CheckpointMeta
    model_id: str
    directory: str


@contextlib.contextmanager
def local_copy(uri: str | Path) -> Iterator[Path]:
    """A local directory holding the checkpoint ``uri``: the directory itself when local,
    else a download into a temporary directory that is removed on exit."""
    uri = str(uri)
    if storage.is_local(uri):
        yield Path(storage.filesystem_for(uri)[1])
        return
    with tempfile.TemporaryDirectory(prefix="mgc-ckpt-") as tmp:
        yield storage.download_dir(uri, Path(tmp) / "checkpoint")


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A checkpoint name: it becomes part of a partition path (``model_id=<name>-<hash>``), so
letters, digits, ``.``, ``_`` and ``-`` only, not starting with a dot or a dash, and no
``..``: a name like ``a/../../x`` must never steer a write (or ``--retag``'s delete)."""


def check_name(name: str) -> str:
    """``name`` when it is a safe checkpoint name, else :class:`CheckpointError`."""
    if not SAFE_NAME.match(name) or ".." in name:
        raise CheckpointError(f"unsafe checkpoint name {name!r}: use letters, digits, '.', '_' and '-' only "
                              "(it becomes part of the output partition's path)")
    return name


def model_id(directory: str | Path, meta: CheckpointMeta | None = None) -> str:
    """``<name>-<first 10 hex of sha256(model.pt + mgc.json)>``: the same weights *and* the
    same labels, thresholds and front end give the same id; retuned thresholds do not."""
    directory = Path(directory)
    meta = meta or read_meta(directory)
    digest = hashlib.sha256()
    for name in (MODEL_FILE, META_FILE):
        digest.update((directory / name).read_bytes())
        digest.update(b"\0")
    return f"{check_name(meta.name)}-{digest.hexdigest()[:10]}"


def load_checkpoint(uri: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a checkpoint directory (local or remote) into an eval-mode model.

    The state dict is read with ``weights_only=True``: a file carrying pickled code is
    refused with :class:`CheckpointError` instead of being executed.
    """
    uri = str(uri)
    with local_copy(uri) as local:
        if not (local / MODEL_FILE).exists():
            raise CheckpointError(_not_a_checkpoint(uri, MODEL_FILE))
        meta = read_meta(local)
        try:
            state = torch.load(local / MODEL_FILE, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"refusing to load {uri}/{MODEL_FILE}: it is not a plain state_dict of tensors "
                f"({err.__class__.__name__}: {str(err).splitlines()[0]})"
            ) from err
        identity = model_id(local, meta)
        directory = str(local) if storage.is_local(uri) else uri
    model = build_model(meta.arch, meta.heads())
    model.load_state_dict(state)
    model.to(device).eval()
    return LoadedCheckpoint(model=model, meta=meta, model_id=identity, directory=directory)
