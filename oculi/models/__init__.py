"""Models by name: oculi's own seed architectures (the tutorials' nets) and any timm model."""

from __future__ import annotations

import torch.nn as nn

from ..config import CLASSIFIERS
from ..errors import OculiError
from .pretrained import BackboneClassifier, Weights, create_timm_model, is_timm_model, offline_weights_file
from .registry import count_parameters, get_model_info, num_outputs_for, registered_models
from . import seed, speed  # noqa: F401,E402  (importing them runs their @register_model decorators)

__all__ = ["create_model", "count_parameters", "get_model_info", "registered_models", "num_outputs_for",
           "default_head", "Weights", "is_timm_model", "offline_weights_file", "BackboneClassifier", "CLASSIFIERS"]


def default_head(name: str, num_classes: int) -> str:
    """The head a model uses unless told otherwise: its tutorial's (sigmoid for small-cnn on 2 classes)."""
    info = get_model_info(name)
    if info is not None and info.default_head == "sigmoid" and num_classes == 2:
        return "sigmoid"
    return "softmax"


def create_model(name: str, num_classes: int, in_chans: int, image_size: tuple[int, int],
                 head: str = "softmax", pretrained: bool = False, classifier: str = "linear",
                 weights_file: str | None = None) -> tuple[nn.Module, Weights | None]:
    """Build ``name`` for this task; returns the model and, when pretrained, where its weights came from.

    ``classifier`` (linear or mlp) and ``weights_file`` apply to timm backbones only."""
    num_outputs = num_outputs_for(num_classes, head)
    info = get_model_info(name)
    if info is None:
        return create_timm_model(name, num_outputs, in_chans, pretrained, classifier, weights_file)
    if pretrained or weights_file:
        flag = "--weights" if weights_file else "--pretrained"
        raise OculiError(f"{flag}: '{name}' is trained from scratch; pretrained weights exist for "
                         f"timm models such as efficientnet_lite0")
    return info.factory(num_outputs=num_outputs, in_chans=in_chans, image_size=tuple(image_size)), None
