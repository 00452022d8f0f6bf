"""``fast-cnn``: the default network for small images trained from scratch, built for time-to-accuracy.

The ideas come from Keller Jordan's "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (arXiv 2404.00498)
and the work it builds on (Page's DAWNBench ResNet; Coates & Ng on patch whitening):
- the first layer is a fixed 2x2 convolution that whitens image patches: its filters are the
  eigenvectors of the training patches' covariance, scaled by 1/sqrt(eigenvalue), in both signs. The
  network starts from decorrelated inputs and converges in far fewer epochs;
- three blocks of conv - max pool - BatchNorm - GELU - conv - BatchNorm - GELU, widening as the image
  shrinks, then a global max pool and one linear layer whose output is scaled down (a softer start for
  the softmax);
- few parameters and few FLOPs: fits a CPU (widths 32/64/128, 35 s an epoch of CIFAR-10 on 2 cores) as
  well as a GPU (wider).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import OculiError
from .registry import register_model, stage_info

WIDTHS = (32, 64, 128)
WIDE_WIDTHS = (64, 256, 256)  # airbench94's widths: 4x the FLOPs per image, for GPUs
PATCH = 2  # the whitening filters' size
OUTPUT_SCALE = 1 / 9  # logits start small: the first steps do not saturate the softmax
# The whitening layer's bias trains for this share of the epochs, then stays (airbench: 3 epochs of ~10).
# Frozen, backward skips the gradient of the first block's input, the largest map: a CPU step at batch
# 512 took 0.42 s instead of 0.65 s (bfloat16, one thread, under load: benchmarks/cpu_step.py).
WHITEN_BIAS_SHARE = 0.3


class ConvBlock(nn.Module):
    """conv 3x3 -> max pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU (pooling early halves the cost of
    everything after it)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if min(x.shape[-2:]) >= 2:  # an 8x8 digit is down to one pixel after two pools
            x = F.max_pool2d(x, 2)
        x = F.gelu(self.norm1(x))
        return F.gelu(self.norm2(self.conv2(x)))


class FastCNN(nn.Module):
    """whiten (fixed 2x2 conv) -> GELU -> 3 ConvBlocks -> global max pool -> scaled linear."""

    def __init__(self, num_outputs: int, in_chans: int = 3, widths: tuple[int, int, int] = WIDTHS):
        super().__init__()
        self.whiten = nn.Conv2d(in_chans, 2 * in_chans * PATCH * PATCH, PATCH, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from the data, never trained
        channels = (self.whiten.out_channels, *widths)
        self.features = nn.Sequential(*[ConvBlock(a, b) for a, b in zip(channels, channels[1:])])
        self.head = nn.Linear(widths[-1], num_outputs, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(F.gelu(self.whiten(x)))
        return self.head(torch.amax(x, dim=(2, 3))) * OUTPUT_SCALE

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Before each epoch of training: the whitening bias trains in the first epochs only. A function of
        the epoch alone, so a resumed run freezes it where the uninterrupted one did."""
        self.whiten.bias.requires_grad_(epoch < max(1, round(WHITEN_BIAS_SHARE * epochs)))

    @property
    def feature_info(self) -> list[dict]:
        """The stages "whiten", then "block 1" to "block 3", each pooling to half the side (see ``registry``).
        The whitening layer counts: its map is the only one of 7x7 or more that an 8x8 digit leaves."""
        blocks = [stage_info(f"block {i}", f"features.{i - 1}", block.conv2.out_channels, 2 ** i)
                  for i, block in enumerate(self.features, 1)]
        return [stage_info("whiten", "whiten", self.whiten.out_channels, 1)] + blocks

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from normalised training images [N, C, H, W] (a few thousand do)."""
        c = images.shape[1]
        patches = images.float().unfold(2, PATCH, 1).unfold(3, PATCH, 1)  # N, C, H', W', P, P
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * PATCH * PATCH)
        patches = patches - patches.mean(dim=0)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0)[:, None] + eps)).float()
        filters = filters.reshape(-1, c, PATCH, PATCH)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))  # both signs: GELU keeps each half


@register_model("fast-cnn", "Time-to-accuracy CNN for small images: patch-whitening 2x2 layer, 3 conv blocks "
                "(32/64/128), global max pool (the default for images up to 64 px)", (3, 32, 32), 10)
def fast_cnn(num_outputs: int, in_chans: int = 3, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    _check_size("fast-cnn", image_size)
    return FastCNN(num_outputs, in_chans)


@register_model("fast-cnn-wide", "fast-cnn with airbench94's widths (64/256/256): more accurate, 4x the "
                "compute per image; for GPUs", (3, 32, 32), 10)
def fast_cnn_wide(num_outputs: int, in_chans: int = 3, image_size: tuple[int, int] = (32, 32)) -> nn.Module:
    _check_size("fast-cnn-wide", image_size)
    return FastCNN(num_outputs, in_chans, WIDE_WIDTHS)


def _check_size(name: str, image_size: tuple[int, int]) -> None:
    """The whitening layer needs one whole 2x2 patch (the blocks and the global pool take any size from
    there); a smaller input would only fail once training had started."""
    if min(image_size) < PATCH:
        height, width = image_size
        raise OculiError(f"{name} needs images of at least {PATCH}x{PATCH} pixels, got {height}x{width}")
