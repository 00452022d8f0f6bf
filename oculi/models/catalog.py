"""What `oculi models` lists: oculi's own architectures and a few recommended timm backbones."""

from __future__ import annotations

import torch

from .pretrained import offline_weights_file
from .registry import count_parameters, num_outputs_for, registered_models

# Backbones worth knowing about for photos; any timm name works, these are the suggestions.
SUGGESTED_TIMM = {
    "efficientnet_lite0": "EfficientNet-Lite0, fast on CPUs; the default for photos",
    "mobilenetv3_large_100": "MobileNetV3-Large, for phones and small CPUs",
    "resnet18": "ResNet-18, the classic baseline",
    "resnet50": "ResNet-50, accurate, heavier",
    "convnext_tiny": "ConvNeXt-Tiny, modern and accurate, for GPUs",
}


def model_catalog() -> list[dict]:
    """One row per model: name, kind, trainable parameters at the reference input, description."""
    rows = []
    for info in registered_models():
        c, h, w = info.reference_input
        with torch.device("meta"):  # counting parameters needs shapes, not memory
            model = info.factory(num_outputs=num_outputs_for(info.reference_classes, info.default_head),
                                 in_chans=c, image_size=(h, w))
        rows.append({"name": info.name, "kind": "oculi", "parameters": count_parameters(model),
                     "reference_input": f"{h}x{w}x{c}, {info.reference_classes} classes",
                     "description": info.description})
    rows += [_timm_row(name, text) for name, text in SUGGESTED_TIMM.items()]
    return rows


def _timm_row(name: str, description: str) -> dict:
    import timm
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=1000)
    offline = " (ImageNet weights installed, offline)" if offline_weights_file(name) else ""
    return {"name": name, "kind": "timm", "parameters": count_parameters(model),
            "reference_input": "224x224x3, 1000 classes", "description": description + offline}
