"""EfficientAT's AudioSet-pretrained MobileNetV3s (``--arch mn04`` ... ``mn40``) in torchvision.

Why torchvision's own module: EfficientAT's ``mn`` models (Schmid et al., MIT licence)
are MobileNetV3-Large at a width multiplier, with a 1-channel stem and 527 AudioSet
outputs. torchvision builds that net (``mobilenet_v3_large(width_mult=...)``); mgc only
maps the published weights onto it, so no model code is copied. Three differences:

- EfficientAT names each squeeze-excitation layer ``...block.2.conc_se_layers.0.fc1`` and
  stores it as a Linear; torchvision's ``...block.2.fc1`` is a 1x1 convolution (same
  numbers, reshaped);
- the classifier Linears sit at ``classifier.2`` / ``classifier.5`` (their pooling is
  inside the classifier) instead of ``classifier.0`` / ``classifier.3``;
- their squeeze-excitation gates with a sigmoid, torchvision's with a hard sigmoid: the
  gates are swapped, or the net computes something else than it was trained to.

Weights: ``--weights-file PATH`` (a local copy; tests and offline users), or
``--pretrained audioset``, which downloads the file from EfficientAT's GitHub release into
torch's hub cache (``$TORCH_HOME/hub/checkpoints``) and checks its SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import SqueezeExcitation
from mgc.log import get_logger

log = get_logger()

AUDIOSET = "audioset"
AUDIOSET_CLASSES = 527
MUSIC_CLASS = 137
"""Index of AudioSet's "Music" class in the 527 outputs."""

WIDTHS: dict[str, float] = {"mn04": 0.4, "mn05": 0.5, "mn10": 1.0, "mn20": 2.0, "mn30": 3.0, "mn40": 4.0}
"""``--arch`` name -> width multiplier of MobileNetV3-Large."""

RELEASE_URL = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"
AUDIOSET_FILES: dict[str, str] = {
    "mn04": "mn04_as_mAP_432.pt",
    "mn05": "mn05_as_mAP_443.pt",
    "mn10": "mn10_as_mAP_471.pt",
    "mn20": "mn20_as_mAP_478.pt",
    "mn30": "mn30_as_mAP_482.pt",
    "mn40": "mn40_as_mAP_484.pt",
}
"""The AudioSet-trained release asset of each width (EfficientAT's ``pretrained_models``)."""

PINNED_SHA256: dict[str, str] = {
    "mn04_as_mAP_432.pt": "899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
}
"""SHA-256 of the release assets mgc has verified. For the others the first download's
digest is recorded beside the cached file and every later use checks against it."""


class WeightsError(RuntimeError):
    """A weights file that is missing, truncated, unsafe or for another network."""


def build_mobilenet(arch: str, num_classes: int = AUDIOSET_CLASSES) -> nn.Module:
    """torchvision's MobileNetV3-Large at ``arch``'s width, shaped as EfficientAT's net:
    a 1-channel stem and sigmoid squeeze-excitation gates (randomly initialised)."""
    if arch not in WIDTHS:
        raise ValueError(f"unknown EfficientAT arch {arch!r}; choose one of {sorted(WIDTHS)}")
    net = torchvision.models.mobilenet_v3_large(width_mult=WIDTHS[arch], num_classes=num_classes)
    conv = net.features[0][0]
    net.features[0][0] = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    for module in net.modules():
        if isinstance(module, SqueezeExcitation):
            module.scale_activation = nn.Sigmoid()
    return net


def remap_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientAT's key names and Linear-shaped SE weights -> torchvision's MobileNetV3."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".conc_se_layers." in key:
            head, _, tail = key.partition(".conc_se_layers.")
            index, _, param = tail.partition(".")
            if index != "0":
                raise WeightsError(f"{key}: concurrent SE over several dimensions is not a torchvision net")
            key = f"{head}.{param}"
            if key.endswith(".weight") and value.dim() == 2:
                value = value[:, :, None, None]
        elif key.startswith("classifier.2."):
            key = "classifier.0." + key[len("classifier.2."):]
        elif key.startswith("classifier.5."):
            key = "classifier.3." + key[len("classifier.5."):]
        out[key] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state_dict from ``path``, with errors that name the file and say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (or is not a file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if zipfile.is_zipfile(path):  # a whole torch file whose pickle holds more than tensors
            raise WeightsError(f"refusing weights file {path}: it holds pickled objects, not only tensors "
                               "(a checkpoint must never run code)") from err
        raise WeightsError(f"weights file {path} is truncated or not a PyTorch file") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise WeightsError(f"weights file {path} is truncated or not a PyTorch file "
                           f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} is not a state_dict (a mapping of names to tensors)")
    return state


def load_weights(net: nn.Module, path: str | Path, arch: str) -> None:
    """Load an EfficientAT ``arch`` weights file into ``net`` strictly: every key used,
    every shape equal, or a :class:`WeightsError` that says how the file differs."""
    state = remap_state_dict(read_state_dict(path))
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        problems = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                problems.append(f"{len(keys)} {name}: {shown}")
        raise WeightsError(f"weights file {path} is not EfficientAT {arch} AudioSet weights "
                           f"({'; '.join(problems)}){_guess(state)}")
    net.load_state_dict(state, strict=True)


def _guess(state: Mapping[str, torch.Tensor]) -> str:
    """'; it looks like mnXX' when the stem width matches another EfficientAT width."""
    stem = state.get("features.0.0.weight")
    if stem is None:
        return ""
    for arch in WIDTHS:
        if build_mobilenet(arch).features[0][0].weight.shape == stem.shape:
            return f"; its stem matches {arch}"
    return ""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def audioset_weights(arch: str, cache_dir: str | Path | None = None) -> Path:
    """The AudioSet weights file of ``arch``: from torch's hub cache, else downloaded there.

    The file's SHA-256 must equal the pinned digest (:data:`PINNED_SHA256`); for an asset
    mgc has no digest for, the first download records its own (``<file>.sha256``) and each
    later use must match it. A mismatch is a :class:`WeightsError`, never a silent reload.
    """
    if arch not in AUDIOSET_FILES:
        raise ValueError(f"no AudioSet weights for arch {arch!r}; choose one of {sorted(AUDIOSET_FILES)}")
    name = AUDIOSET_FILES[arch]
    directory = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    path = directory / name
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        url = RELEASE_URL + name
        log.info("downloading %s to %s", url, path)
        partial = path.with_name(f".{name}.{os.getpid()}.part")
        try:
            torch.hub.download_url_to_file(url, str(partial), progress=False)
        except Exception as err:  # noqa: BLE001 - offline, proxy, 404: all need the same advice
            partial.unlink(missing_ok=True)
            raise WeightsError(f"could not download {url} ({type(err).__name__}: {err}); download it yourself "
                               f"and pass --weights-file PATH, or put it at {path}") from err
        os.replace(partial, path)
    _check_digest(path)
    return path


def _check_digest(path: Path) -> None:
    actual = sha256_of(path)
    record = path.with_name(path.name + ".sha256")
    expected = PINNED_SHA256.get(path.name)
    if expected is None and record.exists():
        expected = record.read_text().strip()
    if expected is None:
        log.warning("%s: no pinned SHA-256; recording %s for later checks", path, actual)
        record.write_text(actual + "\n")
        return
    if actual != expected:
        raise WeightsError(f"weights file {path} has SHA-256 {actual}, expected {expected}: a truncated or "
                           "altered download; delete it and run again")


def resolve_weights(arch: str, pretrained: str | None, weights_file: str | None) -> Path | None:
    """The weights file a run of ``arch`` loads: ``weights_file``, the AudioSet release
    file for ``pretrained="audioset"``, or None (random initialisation)."""
    if pretrained not in (None, AUDIOSET):
        raise ValueError(f"--pretrained for {arch} must be {AUDIOSET!r}, not {pretrained!r}")
    if weights_file:
        return Path(weights_file)
    return audioset_weights(arch) if pretrained == AUDIOSET else None


def audioset_tagger(arch: str, pretrained: str | None = None, weights_file: str | None = None) -> nn.Module:
    """The whole AudioSet net of ``arch`` (527 logits) with its pretrained weights, in eval mode."""
    net = build_mobilenet(arch)
    path = resolve_weights(arch, pretrained, weights_file)
    if path is None:
        raise ValueError("give --weights-file or --pretrained audioset")
    load_weights(net, path, arch)
    return net.eval()
