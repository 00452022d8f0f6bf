"""A registry of oculi's own architectures by name; any other name is looked up in timm.

The architectures register themselves (``@register_model``) when ``oculi.models`` imports their modules,
so the registry imports none of them: it is filled before anyone can ask it.

Every factory has the same signature, so training, loading and the CLI never special-case a model:
``factory(num_outputs, in_chans, image_size) -> nn.Module``. Dense layers after a ``Flatten`` need the
input size, which is why the size is an argument and not inferred lazily (lazy layers cannot be
loaded from a bundle before a forward pass).

Every model also lists its convolutional stages, the layers whose outputs ``oculi explain`` shows and takes
Grad-CAM from, as timm models do: a ``feature_info`` list with one dict per stage, in forward order (see
``stage_info``; ``FastCNN.feature_info`` is an example); [] for a model without convolutional stages. A model
whose stages give [N, H, W, C] rather than [N, C, H, W] says so with ``output_fmt = "NHWC"``, as timm's Swin
does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import OculiError

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture.

    ``reference_*`` is the input the architecture's tutorial used; its trainable parameter count at that
    input is what ``oculi models`` prints, so it can be checked against the tutorial's Keras summary.
    """

    name: str
    factory: Factory
    description: str
    reference_input: tuple[int, int, int]  # (channels, height, width)
    reference_classes: int
    default_head: str = "softmax"  # "sigmoid": one output for binary tasks, as the tutorial had it


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, description: str, reference_input: tuple[int, int, int],
                   reference_classes: int, default_head: str = "softmax") -> Callable[[Factory], Factory]:
    """Decorator that adds a factory to the registry under ``name``."""

    def add(factory: Factory) -> Factory:
        _REGISTRY[name] = ModelInfo(name, factory, description, reference_input, reference_classes,
                                    default_head)
        return factory

    return add


def registered_models() -> list[ModelInfo]:
    """oculi's own architectures, in registration order."""
    return list(_REGISTRY.values())


def get_model_info(name: str) -> ModelInfo | None:
    """The registry entry for ``name``, or None when the name is not one of oculi's own."""
    return _REGISTRY.get(name)


def num_outputs_for(num_classes: int, head: str) -> int:
    """A sigmoid head has one output (the probability of the second class); softmax has one per class."""
    if head == "sigmoid":
        if num_classes != 2:
            raise OculiError(f"--head sigmoid needs exactly 2 classes, the data has {num_classes}")
        return 1
    return num_classes


def stage_info(name: str, module: str, num_chs: int, reduction: int) -> dict:
    """One entry of a model's ``feature_info``: timm's keys (``module``, the stage's dotted name in the model;
    ``num_chs``, its output channels; ``reduction``, its nominal stride, the product of the strides up to
    it) and ``name``, what figures call the stage."""
    return {"module": module, "num_chs": num_chs, "reduction": reduction, "name": name}


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters, as Keras' summary counts them."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
