"""MixUp and CutMix: a training batch mixed with a shuffled copy of itself, and the labels of both.

MixUp (Zhang et al. 2018) blends whole images, ``lam * x + (1 - lam) * x[perm]``; CutMix (Yun et al. 2019)
pastes a box of ``x[perm]`` into ``x``, ``lam`` then being the share of each image left unpasted. ``lam`` is
drawn from Beta(alpha, alpha) once a batch; with both on, each batch is one or the other, as timm does. The
training loop turns the pair of labels into the soft target ``lam * t(first) + (1 - lam) * t(second)``
(``training.loop.mixed_targets``). Every draw comes from the epoch's generator, so a seeded epoch repeats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Mixed:
    """The labels of a mixed batch: each image is ``lam`` of its ``first`` label and ``1 - lam`` of its
    ``second`` (class indices [N], or 0/1 label sets [N, classes])."""

    first: torch.Tensor
    second: torch.Tensor
    lam: float

    def __len__(self) -> int:
        return len(self.first)

    @property
    def dominant(self) -> torch.Tensor:
        """The label each image holds the larger share of: what a training accuracy can count against."""
        return self.first if self.lam >= 0.5 else self.second


def beta_draw(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha), seeded from ``generator`` (torch samples Beta from its global generator)."""
    seed = int(torch.randint(2**62, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cutmix_box(h: int, w: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of CutMix's box: sides sqrt(1 - lam) of the image's, centred at a uniform
    point and cut at the borders (so the pasted share may be smaller than 1 - lam: the caller measures it)."""
    cy, cx = (torch.rand(2, generator=generator) * torch.tensor([h, w])).tolist()
    cut = math.sqrt(1 - lam)
    half_h, half_w = h * cut / 2, w * cut / 2
    top, bottom = int(np.clip(round(cy - half_h), 0, h)), int(np.clip(round(cy + half_h), 0, h))
    left, right = int(np.clip(round(cx - half_w), 0, w)), int(np.clip(round(cx + half_w), 0, w))
    return top, bottom, left, right


def mix_batch(batch: torch.Tensor, labels: torch.Tensor, mixup: float, cutmix: float,
              generator: torch.Generator) -> tuple[torch.Tensor, Mixed]:
    """``batch`` (float [N, C, H, W]) mixed by MixUp (alpha ``mixup``) or CutMix (alpha ``cutmix``; 0: off;
    both on: one of the two, evenly), and its labels' pair with their weight."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or float(torch.rand((), generator=generator)) < 0.5)
    lam = beta_draw(cutmix if use_cutmix else mixup, generator)
    perm = torch.randperm(len(batch), generator=generator).to(batch.device)
    other = batch[perm]
    if use_cutmix:
        h, w = batch.shape[-2:]
        top, bottom, left, right = cutmix_box(h, w, lam, generator)
        batch = batch.clone()
        batch[..., top:bottom, left:right] = other[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
    else:
        batch = batch * lam + other * (1 - lam)
    return batch, Mixed(labels, labels[perm.to(labels.device)], lam)
