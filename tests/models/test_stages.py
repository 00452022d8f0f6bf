"""Every model oculi builds lists its convolutional stages (``feature_info``), and the list is true: each
names a real submodule, in forward order, whose output has the channels it claims."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn

from oculi.models import BackboneClassifier, create_model
from oculi.models.registry import registered_models


def _outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each listed stage's output for ``x``, by module name, in the order the forward pass made them.
    ``get_submodule`` fails on a name that is not a submodule."""
    outputs = {}
    stages = [d["module"] for d in model.feature_info]
    handles = [model.get_submodule(name).register_forward_hook(
        lambda module, inputs, output, name=name: outputs.setdefault(name, output)) for name in stages]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _check_stages(model: nn.Module, channels: int, size: tuple[int, int]) -> None:
    stages = model.feature_info
    outputs = _outputs(model, torch.randn(1, channels, *size))
    assert [d["module"] for d in stages] == list(outputs)  # each one runs, in forward order
    assert len({d["name"] for d in stages}) == len(stages)
    assert bool(stages) == any(isinstance(m, nn.Conv2d) for m in model.modules())
    for d in stages:
        out = outputs[d["module"]]
        if getattr(model, "output_fmt", "NCHW") == "NHWC":
            out = out.permute(0, 3, 1, 2)
        assert out.ndim == 4 and out.shape[1] == d["num_chs"], d["name"]
        # The reduction is nominal: unpadded convs and floor-rounding pools take a little more off.
        for side, got in zip(size, out.shape[2:]):
            assert side / d["reduction"] / 2 < got <= math.ceil(side / d["reduction"]), d["name"]


@pytest.mark.parametrize("info", registered_models(), ids=lambda info: info.name)
def test_each_registered_model_lists_its_real_stages(info):
    channels, height, width = info.reference_input
    model = info.factory(num_outputs=info.reference_classes, in_chans=channels, image_size=(height, width))
    _check_stages(model, channels, (height, width))


def test_a_timm_backbone_lists_timms_stages_as_its_own():
    model, _ = create_model("efficientnet_lite0", 3, 3, (64, 64))
    assert isinstance(model, BackboneClassifier)
    timms = model.backbone.feature_info
    assert [d["module"] for d in model.feature_info] == [f"backbone.{d['module']}" for d in timms]
    assert model.feature_info[0]["name"] == "stage 1 (blocks.0)"
    _check_stages(model, 3, (64, 64))


def test_a_channels_last_backbone_says_so():
    backbone = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, img_size=32,
                                 window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    model = BackboneClassifier(backbone, nn.Linear(backbone.num_features, 3))
    assert model.output_fmt == "NHWC"
    _check_stages(model, 3, (32, 32))
