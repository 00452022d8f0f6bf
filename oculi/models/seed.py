"""oculi's seed architectures: small networks from Keras tutorials, reproduced layer for layer.

Each model's trainable parameter count at its tutorial's input equals the tutorial's Keras summary. Keras
details that change shapes are kept on purpose: "same" padding follows TensorFlow (output = ceil(in / stride),
the odd padding pixel at the bottom/right), pooling floors unless the tutorial asked for "same", and
BatchNorm uses Keras' eps and momentum. A Keras ``Rescaling`` layer has no module: inputs arrive normalised.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import OculiError
from .registry import register_model, stage_info

# Keras' BatchNormalization eps. Not its momentum (0.99, i.e. PyTorch's 0.01): running statistics that
# slow lag far behind the weights in short runs (digits, 3 epochs: 16% val accuracy against 48% train);
# PyTorch's 0.1 tracks them. Neither changes a parameter count.
_BN = dict(eps=1e-3, momentum=0.1)


class SeedNet(nn.Module):
    """A tutorial network split where feature maps make sense: ``features`` (one nn.Sequential per
    convolutional stage; empty for a dense-only net), then ``head`` (Flatten and the dense layers)."""

    def __init__(self, features: nn.Sequential, head: nn.Sequential):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @property
    def feature_info(self) -> list[dict]:
        """One stage per nn.Sequential of ``features``, named "stage 1", "stage 2", ... (see ``registry``)."""
        info, reduction = [], 1
        for i, stage in enumerate(self.features):
            layers = [m for m in stage.modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
            reduction *= math.prod(_kernel_stride(m)[1] for m in layers)
            channels = [m.out_channels for m in layers if isinstance(m, nn.Conv2d)][-1]  # every stage has one
            info.append(stage_info(f"stage {i + 1}", f"features.{i}", channels, reduction))
        return info


class _SamePad(nn.Module):
    """TensorFlow's "same" padding for the conv or pool that follows it.

    PyTorch pads symmetrically, which cannot give ceil(in / stride) when the total padding is odd (e.g.
    11x11 stride 4 on 224 needs 7: TF puts 3 before and 4 after).
    """

    def __init__(self, kernel: int, stride: int, value: float = 0.0):
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def amount(self, n: int) -> int:
        """Total padding along a side of length ``n``."""
        return max((-(-n // self.stride) - 1) * self.stride + self.kernel - n, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.amount(x.shape[-2]), self.amount(x.shape[-1])
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=self.value)


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, same: bool = True) -> list[nn.Module]:
    """Keras ``Conv2D(activation="relu")``."""
    pad = [_SamePad(kernel, stride)] if same else []
    return pad + [nn.Conv2d(cin, cout, kernel, stride), nn.ReLU()]


def _pool(kernel: int = 2, stride: int | None = None, same: bool = False) -> list[nn.Module]:
    """Keras ``MaxPooling2D``; its "same" padding never wins the max, hence -inf."""
    stride = stride or kernel
    pad = [_SamePad(kernel, stride, float("-inf"))] if same else []
    return pad + [nn.MaxPool2d(kernel, stride)]


def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, **_BN)


def _dense(fin: int, *widths: int) -> list[nn.Module]:
    """Keras ``Dense(w, activation="relu")`` for each width in turn."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(fin, width), nn.ReLU()]
        fin = width
    return layers


def _conv_pool_stages(in_chans: int, widths: tuple[int, ...], same: bool) -> list[list[nn.Module]]:
    """The [Conv 3x3 + ReLU + MaxPool 2] x N pattern of the simpler tutorials."""
    chans = (in_chans, *widths)
    return [_conv(a, b, same=same) + _pool() for a, b in zip(chans, chans[1:])]


def _kernel_stride(layer: nn.Conv2d | nn.MaxPool2d) -> tuple[int, int]:
    """(kernel, stride) of a square conv or pool, which PyTorch gives as an int or a pair."""
    return tuple(v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride))


def _side_after(features: nn.Sequential, n: int) -> int:
    """Height or width after ``features``; 0 once a layer would have nothing left.

    Arithmetic rather than a dummy forward, which would move BatchNorm's running statistics. Every conv and
    pool here is unpadded (padding is a separate _SamePad), so both frameworks floor.
    """
    for m in features.modules():  # pre-order, which is execution order for nested Sequentials
        if isinstance(m, _SamePad):
            n += m.amount(n)
        elif isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s = _kernel_stride(m)
            n = (n - k) // s + 1
        if n < 1:
            return 0
    return n


def _assemble(name: str, stages: list[list[nn.Module]], in_chans: int, image_size: tuple[int, int],
              head) -> SeedNet:
    """The model, with ``head(flat)`` giving the layers after Flatten for ``flat`` input features."""
    features = nn.Sequential(*(nn.Sequential(*stage) for stage in stages))
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    channels = convs[-1].out_channels if convs else in_chans
    height, width = image_size
    flat = channels * _side_after(features, height) * _side_after(features, width)
    if flat < 1:
        side = next(n for n in itertools.count(1) if _side_after(features, n) >= 1)
        raise OculiError(f"{name} needs images of at least {side}x{side} pixels, got {height}x{width}")
    return SeedNet(features, nn.Sequential(nn.Flatten(), *head(flat)))


@register_model("mlp", "dense net, 16-32-64-128-256 (Fashion-MNIST)", (1, 28, 28), 10)
def mlp(num_outputs: int, in_chans: int, image_size: tuple[int, int]) -> nn.Module:
    """The Keras Fashion-MNIST dense-network tutorial: Flatten, Dense 16-32-64-128-256 ReLU, Dense."""
    return _assemble("mlp", [], in_chans, image_size,
                     lambda flat: _dense(flat, 16, 32, 64, 128, 256) + [nn.Linear(256, num_outputs)])


@register_model("simple-cnn", "3 conv-pool stages, 16/32/64, same padding (insects)", (3, 224, 256), 3)
def simple_cnn(num_outputs: int, in_chans: int, image_size: tuple[int, int]) -> nn.Module:
    """The Keras insects tutorial: 3x [Conv 3x3 same + MaxPool 2] (16/32/64), Dense 128, Dense."""
    return _assemble("simple-cnn", _conv_pool_stages(in_chans, (16, 32, 64), same=True), in_chans, image_size,
                     lambda flat: _dense(flat, 128) + [nn.Linear(128, num_outputs)])


@register_model("small-cnn", "3 conv-pool stages, 32/32/64, valid padding (cars vs elephants)",
                (3, 300, 300), 2, default_head="sigmoid")
def small_cnn(num_outputs: int, in_chans: int, image_size: tuple[int, int]) -> nn.Module:
    """The Keras cars-vs-elephants tutorial: 3x [Conv 3x3 valid + MaxPool 2] (32/32/64), Dense 64, Dropout,
    Dense 1 (sigmoid)."""
    return _assemble("small-cnn", _conv_pool_stages(in_chans, (32, 32, 64), same=False), in_chans, image_size,
                     lambda flat: _dense(flat, 64) + [nn.Dropout(0.5), nn.Linear(64, num_outputs)])


@register_model("alexnet-mini", "AlexNet-style, 11x11/4 stem, BatchNorm (faces)", (3, 224, 224), 2)
def alexnet_mini(num_outputs: int, in_chans: int, image_size: tuple[int, int]) -> nn.Module:
    """The Keras AlexNet-style faces tutorial; every conv and pool is padded "same"."""
    stages = [_conv(in_chans, 32, 11, stride=4) + _pool(3, 2, same=True) + [_bn2d(32)],
              _conv(32, 64, 5) + _pool(3, 2, same=True) + [_bn2d(64)],
              _conv(64, 128), _conv(128, 64), _conv(64, 32)]
    return _assemble("alexnet-mini", stages, in_chans, image_size,
                     lambda flat: _dense(flat, 64) + [nn.Dropout(0.5)] + _dense(64, 64)
                     + [nn.Dropout(0.5), nn.Linear(64, num_outputs)])


@register_model("vgg-mini", "VGG-style, 3 double-conv blocks with BatchNorm (CIFAR-10)", (3, 32, 32), 10)
def vgg_mini(num_outputs: int, in_chans: int, image_size: tuple[int, int]) -> nn.Module:
    """The Keras CIFAR-10 VGG-style tutorial: 3x [Conv-BN-Conv-BN-MaxPool-Dropout] (32/64/128), Dense 128, BN,
    Dropout, Dense."""
    chans = (in_chans, 32, 64, 128)
    stages = [_conv(a, b) + [_bn2d(b)] + _conv(b, b) + [_bn2d(b)] + _pool() + [nn.Dropout(p)]
              for a, b, p in zip(chans, chans[1:], (0.2, 0.3, 0.4))]
    return _assemble("vgg-mini", stages, in_chans, image_size,
                     lambda flat: _dense(flat, 128)
                     + [nn.BatchNorm1d(128, **_BN), nn.Dropout(0.5), nn.Linear(128, num_outputs)])


@register_model("fashion-cnn", "strided CNN, 32/64/128/256 stride 2 (Fashion-MNIST)", (1, 28, 28), 10)
def fashion_cnn(num_outputs: int, in_chans: int, image_size: tuple[int, int]) -> nn.Module:
    """The Keras Fashion-MNIST strided-CNN tutorial: Conv 3x3 stride 2 same (32/64/128/256), MaxPool 2 after
    the 2nd and 3rd, Dense."""
    # At 28x28 ("same" strided convs ceil, the pools floor as Keras' default "valid" does):
    # 28 -conv32-> 14 -conv64-> 7 -pool-> 3 -conv128-> 2 -pool-> 1 -conv256-> 1, so Flatten gives 256 and
    # Dense 10 adds 2,570 to the convs' 387,840: 390,410. Pools padded "same" would also reach 1x1 here
    # (7 -> 4 -> 2 -> 1), so the count does not decide the padding; the Keras default does.
    stages = [_conv(in_chans, 32, stride=2), _conv(32, 64, stride=2) + _pool(),
              _conv(64, 128, stride=2) + _pool(), _conv(128, 256, stride=2)]
    return _assemble("fashion-cnn", stages, in_chans, image_size, lambda flat: [nn.Linear(flat, num_outputs)])
