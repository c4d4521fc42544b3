"""Augmentation of log-mel windows on the training worker (torch, batched).

Why on the worker and in dB: the decoded dataset is shared by every epoch and every
trial, so augmentation must happen after it, per batch; a gain change of g dB is an
addition of g to a log-power spectrogram, and a SpecAugment mask is filled with the
window's floor (its quietest value) so a mask reads as silence, not as a loud band.
"""

from __future__ import annotations

from typing import Mapping

import torch

from mgc.config import AugmentConfig


def _masks(batch: int, size: int, count: int, width: int, generator: torch.Generator, device) -> torch.Tensor:
    """``[batch, size]`` booleans: ``count`` random bands of up to ``width`` per example."""
    positions = torch.arange(size, device=device)
    masked = torch.zeros(batch, size, dtype=torch.bool, device=device)
    for _ in range(count):
        widths = torch.randint(0, width + 1, (batch, 1), generator=generator).to(device)
        starts = (torch.rand((batch, 1), generator=generator).to(device) * (size - widths).clamp(min=1)).long()
        masked |= (positions >= starts) & (positions < starts + widths)
    return masked


def spec_augment(mels: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Frequency and time masks (Park et al. 2019) on ``[batch, n_mels, frames]``."""
    batch, n_mels, frames = mels.shape
    floor = mels.amin(dim=(1, 2), keepdim=True)
    freq = _masks(batch, n_mels, cfg.freq_masks, min(cfg.freq_mask_width, n_mels), generator, mels.device)
    time = _masks(batch, frames, cfg.time_masks, min(cfg.time_mask_width, frames), generator, mels.device)
    masked = freq[:, :, None] | time[:, None, :]
    return torch.where(masked, floor, mels)


def random_gain(mels: torch.Tensor, max_db: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each window by a uniform random gain in ``[-max_db, +max_db]`` dB."""
    gains = (torch.rand((mels.shape[0], 1, 1), generator=generator) * 2 - 1) * max_db
    return mels + gains.to(mels.device, mels.dtype)


def mixup(
    mels: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    alpha: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Mix each window with another of the batch; targets mix alike (soft labels).

    A task's mixed example counts only when both sources carry that task's labels.
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    order = torch.randperm(mels.shape[0], generator=generator).to(mels.device)
    mixed = lam * mels + (1 - lam) * mels[order]
    return (
        mixed,
        {task: lam * t + (1 - lam) * t[order] for task, t in targets.items()},
        {task: m * m[order] for task, m in masks.items()},
    )


def augment_batch(
    mels: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    cfg: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Apply the enabled augmentations, in the order gain -> SpecAugment -> mixup."""
    targets, masks = dict(targets), dict(masks)
    if cfg.gain_db > 0:
        mels = random_gain(mels, cfg.gain_db, generator)
    if cfg.spec_augment:
        mels = spec_augment(mels, cfg, generator)
    if cfg.mixup_alpha > 0:
        mels, targets, masks = mixup(mels, targets, masks, cfg.mixup_alpha, generator)
    return mels, targets, masks
