"""Tagging models: a CNN backbone over 1-channel log-mels and one head per task.

Why a registry: ``--arch`` picks a backbone by name, and adding one is one entry here,
never a chain of ifs elsewhere. Every backbone takes ``[batch, 1, n_mels, frames]`` and
returns ``[batch, features]``; :class:`TaggerModel` adds input normalisation and heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torchvision
from torch import nn


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and the width of the vector it returns."""

    module: nn.Module
    features: int


def _resnet(name: str) -> Callable[[], Backbone]:
    def build() -> Backbone:
        net = getattr(torchvision.models, name)(weights=None)
        # One input channel (a mel spectrogram), not RGB.
        stem = net.conv1
        net.conv1 = nn.Conv2d(
            1, stem.out_channels, stem.kernel_size, stem.stride, stem.padding, bias=False
        )
        features = net.fc.in_features
        net.fc = nn.Identity()
        return Backbone(net, features)

    return build


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _compact_cnn() -> Backbone:
    """A small CNN (about 0.1 M parameters, ~4x resnet18's training speed on CPU)."""
    widths = (1, 16, 32, 64, 128)
    blocks = [_conv_block(a, b) for a, b in zip(widths[:-1], widths[1:])]
    net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone(net, widths[-1])


ARCHITECTURES: dict[str, Callable[[], Backbone]] = {
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
    "resnet50": _resnet("resnet50"),
    "cnn": _compact_cnn,
}


class TaggerModel(nn.Module):
    """Backbone + one linear head per task; returns a dict of logits by task.

    The input is normalised by a BatchNorm over the single mel channel, so log-mel dB
    values (roughly -100..+40) need no hand-tuned scaling.
    """

    def __init__(self, backbone: Backbone, heads: Mapping[str, int], dropout: float = 0.2):
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.backbone = backbone.module
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(backbone.features, n) for task, n in heads.items()})

    def embed(self, mels: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer vector per input: ``[batch, n_mels, frames] -> [batch, features]``."""
        return self.backbone(self.norm(mels.unsqueeze(1)))

    def classify(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per task from :meth:`embed`'s output."""
        features = self.dropout(features)
        return {task: head(features) for task, head in self.heads.items()}

    def forward(self, mels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classify(self.embed(mels))


def build_model(arch: str, heads: Mapping[str, int]) -> TaggerModel:
    """Build a :class:`TaggerModel`; ``heads`` maps task name to its number of labels."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    if not heads:
        raise ValueError("a model needs at least one task head")
    return TaggerModel(ARCHITECTURES[arch](), heads)


def probabilities(logits: torch.Tensor, task_type: str) -> torch.Tensor:
    """Softmax for multiclass tasks, per-tag sigmoid for multilabel ones."""
    return torch.softmax(logits, dim=-1) if task_type == "multiclass" else torch.sigmoid(logits)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
