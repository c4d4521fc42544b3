"""Tagging models: a CNN backbone over 1-channel log-mels and one head per task.

Why a registry: ``--arch`` picks a backbone by name, and adding one is one entry here,
never a chain of ifs elsewhere. Every torchvision family gets the same two surgeries:
its first convolution takes one channel (a mel spectrogram, not RGB; pretrained RGB
weights are folded by summing over the colour axis) and its ImageNet classifier becomes
an identity, so :class:`TaggerModel` can put one head per task on the feature vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mgc.models import efficientat

IMAGENET = "imagenet"


@dataclass(frozen=True)
class Backbone:
    """A feature extractor, the width of the vector it returns, and its smallest input side."""

    module: nn.Module
    features: int
    min_side: int = 32
    # A learned BatchNorm over the input mel channel: right for mgc's dB features, wrong
    # for a backbone pretrained on its own normalised front end (it must see that input).
    input_norm: bool = True


def _first_conv(net: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The parent module, attribute name and module of the network's first Conv2d."""
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return net.get_submodule(parent_name) if parent_name else net, attr, module
    raise ValueError("network has no Conv2d")


def _one_channel_stem(net: nn.Module) -> None:
    """Replace the first conv by a 1-channel one; RGB weights are summed into it."""
    parent, attr, conv = _first_conv(net)
    stem = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():
        stem.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            stem.bias.copy_(conv.bias)
    setattr(parent, attr, stem)


def _drop_classifier(net: nn.Module) -> int:
    """Turn the ImageNet classifier into an identity; return the feature width."""
    for attr in ("fc", "classifier"):
        head = getattr(net, attr, None)
        if isinstance(head, nn.Linear):
            setattr(net, attr, nn.Identity())
            return head.in_features
        if isinstance(head, nn.Sequential):
            last = head[-1]
            if isinstance(last, nn.Linear):
                head[-1] = nn.Identity()
                return last.in_features
            convs = [m for m in head if isinstance(m, nn.Conv2d)]
            if convs:  # squeezenet: a 1x1 conv classifier; keep the pooled features instead
                setattr(net, attr, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
                return convs[0].in_channels
    raise ValueError(f"do not know the classifier of {type(net).__name__}")


def _weights_enum(name: str):
    return torchvision.models.get_model_weights(name).DEFAULT


def _torchvision(name: str, min_side: int = 32, **kwargs) -> Callable[..., Backbone]:
    def build(pretrained: str | None = None, weights_file: str | None = None) -> Backbone:
        weights = _weights_enum(name) if pretrained == IMAGENET else None
        if pretrained not in (None, IMAGENET):
            raise ValueError(f"--pretrained must be {IMAGENET!r}, not {pretrained!r}")
        try:
            net = torchvision.models.get_model(name, weights=weights, **kwargs)
        except (OSError, RuntimeError) as err:  # offline, no cached file under TORCH_HOME
            raise RuntimeError(
                f"could not get ImageNet weights for {name} ({err}); download them once, or pass "
                "--weights-file with a saved state_dict, or put them in $TORCH_HOME/hub/checkpoints"
            ) from err
        if weights_file:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        if hasattr(net, "transform_input"):  # inception: an RGB normalisation, meaningless here
            net.transform_input = False
        _one_channel_stem(net)
        return Backbone(net, _drop_classifier(net), min_side)

    return build


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def _compact_cnn(pretrained: str | None = None, weights_file: str | None = None) -> Backbone:
    """A small CNN (about 0.1 M parameters, ~4x resnet18's training speed on CPU)."""
    if pretrained or weights_file:
        raise ValueError("the compact 'cnn' has no pretrained weights")
    widths = (1, 16, 32, 64, 128)
    blocks = [_conv_block(a, b) for a, b in zip(widths[:-1], widths[1:])]
    net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return Backbone(net, widths[-1], 16)


def _efficientat(arch: str) -> Callable[..., Backbone]:
    def build(pretrained: str | None = None, weights_file: str | None = None) -> Backbone:
        net = efficientat.build_mobilenet(arch)
        path = efficientat.resolve_weights(arch, pretrained, weights_file)
        if path is not None:
            efficientat.load_weights(net, path, arch)
        return Backbone(net, _drop_classifier(net), 32, input_norm=False)

    return build


ARCHITECTURES: dict[str, Callable[..., Backbone]] = {
    "cnn": _compact_cnn,
    **{name: _torchvision(name) for name in (
        "resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg19_bn", "densenet121", "densenet201",
        "efficientnet_b0", "efficientnet_v2_s", "mobilenet_v2", "mobilenet_v3_small",
        "mobilenet_v3_large", "squeezenet1_1",
    )},
    "alexnet": _torchvision("alexnet", min_side=64),
    "inception_v3": _torchvision("inception_v3", min_side=75, aux_logits=False, init_weights=True),
    # EfficientAT's AudioSet-pretrained MobileNetV3s (their own front end: config.ARCH_AUDIO).
    **{arch: _efficientat(arch) for arch in efficientat.WIDTHS},
}


class TaggerModel(nn.Module):
    """Backbone + one linear head per task; returns a dict of logits by task.

    The input is normalised by a BatchNorm over the single mel channel, so log-mel dB
    values (roughly -100..+40) need no hand-tuned scaling (not for a backbone pretrained on
    its own normalised front end: it sees its input unchanged); inputs smaller than the
    backbone accepts are upsampled to its minimum side.
    """

    def __init__(self, backbone: Backbone, heads: Mapping[str, int], dropout: float = 0.2):
        super().__init__()
        self.norm = nn.BatchNorm2d(1) if backbone.input_norm else nn.Identity()
        self.backbone = backbone.module
        self.min_side = backbone.min_side
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(backbone.features, n) for task, n in heads.items()})

    def embed(self, mels: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer vector per input: ``[batch, n_mels, frames] -> [batch, features]``."""
        x = self.norm(mels.unsqueeze(1))
        if min(x.shape[-2:]) < self.min_side:
            size = (max(x.shape[-2], self.min_side), max(x.shape[-1], self.min_side))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.backbone(x)

    def classify(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per task from :meth:`embed`'s output."""
        features = self.dropout(features)
        return {task: head(features) for task, head in self.heads.items()}

    def forward(self, mels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.classify(self.embed(mels))

    def backbone_layers(self) -> list[list[nn.Parameter]]:
        """Backbone parameters by layer, input side first (for per-layer learning rates).

        A layer is a child module holding parameters; ``nn.Sequential`` containers (the
        ``features`` stacks of VGG, DenseNet, EfficientNet, MobileNet, ...) are opened so
        each of their blocks is a layer of its own. Every backbone parameter is in exactly
        one layer.
        """
        layers: list[list[nn.Parameter]] = []

        def visit(module: nn.Module) -> None:
            for child in module.children():
                if isinstance(child, nn.Sequential):
                    visit(child)
                elif any(True for _ in child.parameters()):
                    layers.append(list(child.parameters()))

        visit(self.backbone)
        direct = list(self.backbone.parameters(recurse=False))
        return ([direct] if direct else []) + layers

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, input norm + head parameters), for per-part learning rates."""
        backbone = list(self.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]


def build_model(
    arch: str,
    heads: Mapping[str, int],
    pretrained: str | None = None,
    weights_file: str | Path | None = None,
) -> TaggerModel:
    """Build a :class:`TaggerModel`; ``heads`` maps task name to its number of labels.

    ``pretrained="imagenet"`` loads torchvision's ImageNet weights (from the torch hub cache
    under ``TORCH_HOME`` when present, else downloaded); ``weights_file`` loads a saved
    torchvision state_dict instead (safe loading: tensors only). Either way the RGB stem is
    folded to one channel. The EfficientAT archs (``mn04`` ... ``mn40``) take
    ``pretrained="audioset"`` or their release file as ``weights_file``
    (:mod:`mgc.models.efficientat`).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    if not heads:
        raise ValueError("a model needs at least one task head")
    backbone = ARCHITECTURES[arch](pretrained=pretrained, weights_file=str(weights_file) if weights_file else None)
    return TaggerModel(backbone, heads)


def probabilities(logits: torch.Tensor, task_type: str) -> torch.Tensor:
    """Softmax for multiclass tasks, per-tag sigmoid for multilabel ones."""
    return torch.softmax(logits, dim=-1) if task_type == "multiclass" else torch.sigmoid(logits)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
