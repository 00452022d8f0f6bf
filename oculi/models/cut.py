"""Cutting a pretrained backbone in two at a stage boundary, and what its top costs to train.

``training.partial`` trains the top on the bottom's cached output; ``defaults`` chooses how many stages the top
gets from what they cost (multiply-accumulates per image, counted on a forward pass: deterministic, so the
same data always gets the same plan).

The cut: the backbone's children, in order, must compute its forward pass when called one after the other
(true of timm's EfficientNet, MobileNet, ResNet, RegNet and ConvNeXt families), which ``split_backbone``
checks on a real batch. Stages are timm's coarse block groups; the layers after the last group
(EfficientNet's ``conv_head``) belong to the last stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.models import group_parameters

from ..errors import OculiError


@dataclass
class BackboneSplit:
    """The backbone's children in forward order, cut before the first of its last ``stages`` stages."""

    bottom: nn.Sequential  # frozen: runs once per image
    top: nn.Sequential  # trained, BatchNorm in inference mode
    stages: int  # stages in ``top``
    total: int  # stages in the backbone (the stem not counted)
    cut: str  # the name of the first child in ``top``, for the cache key and the plan line


def backbone_stages(backbone: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(dotted name, module, stage) of the backbone's children in order, containers opened where they hold
    more than one stage; stage 0 is the stem. Raises OculiError when a child mixes stages it cannot be cut
    between."""
    group_of = _parameter_groups(backbone)
    sequence = _children_in_order(backbone, "", group_of)
    stage = 0
    for i, (name, module, group) in enumerate(sequence):
        stage = stage if group is None else group  # parameterless layers (pooling) go with what comes before
        sequence[i] = (name, module, stage)
    return sequence


def _parameter_groups(backbone: nn.Module) -> dict[str, int]:
    """Parameter name -> index of its timm coarse block group (stem 0, then each stage in order)."""
    if not hasattr(backbone, "group_matcher"):
        raise OculiError(f"{type(backbone).__name__} does not name its stages; --unfreeze-stages needs a timm "
                         f"backbone that does")
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    return {name: i for i, (_, names) in enumerate(sorted(groups.items())) for name in names}


def _children_in_order(module: nn.Module, prefix: str, group_of: dict[str, int]) -> list:
    out = []
    for name, child in module.named_children():
        full = prefix + name
        groups = {group_of.get(f"{full}.{p}") for p, _ in child.named_parameters()} - {None}
        if len(groups) <= 1:
            out.append((full, child, groups.pop() if groups else None))
        elif isinstance(child, nn.Sequential):
            out += _children_in_order(child, full + ".", group_of)
        else:
            raise OculiError(f"{full} holds several stages and cannot be cut between them")
    return out


def bottom_children(backbone: nn.Module, stages: int) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """(name, module) of the children below the cut before the last ``stages`` stages, and of those above it."""
    sequence = backbone_stages(backbone)
    total = max(stage for _, _, stage in sequence)
    if not 1 <= stages <= total:
        raise OculiError(f"--unfreeze-stages must be between 1 and {total} for this backbone; got {stages}")
    first = next(i for i, (_, _, stage) in enumerate(sequence) if stage > total - stages)
    return [(n, m) for n, m, _ in sequence[:first]], [(n, m) for n, m, _ in sequence[first:]]


def split_backbone(backbone: nn.Module, stages: int, example: torch.Tensor, check: bool = True) -> BackboneSplit:
    """``backbone`` cut so that its last ``stages`` stages (at most all but the stem) form ``top``, checked (unless
    ``check`` is off) to compute the backbone's own output on ``example`` (a normalised batch) when run one part
    after the other."""
    bottom, top = bottom_children(backbone, stages)
    total = max(stage for _, _, stage in backbone_stages(backbone))
    split = BackboneSplit(nn.Sequential(*[m for _, m in bottom]), nn.Sequential(*[m for _, m in top]), stages,
                          total, top[0][0])
    if check:
        _check_split(backbone, split, example)
    return split


@torch.no_grad()
def _check_split(backbone: nn.Module, split: BackboneSplit, example: torch.Tensor) -> None:
    was_training = backbone.training
    backbone.eval()
    whole, parts = backbone(example), split.top(split.bottom(example))
    backbone.train(was_training)
    if whole.shape != parts.shape or not torch.allclose(whole, parts, rtol=1e-3, atol=1e-4):
        raise OculiError(f"{type(backbone).__name__}'s layers do not run one after the other; "
                         f"--unfreeze-stages cannot cut it (use --mode finetune without it)")


@torch.no_grad()
def count_macs(module: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of convolutions and dense layers in ``module``'s forward pass of one image of
    ``example``'s shape (what dominates a CNN's time; norms and activations are left out)."""
    total = 0

    def count(layer: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
            total += output[:1].numel() * per_output
        else:
            total += layer.in_features * layer.out_features * (output[:1].numel() // layer.out_features)

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was_training = module.training
        module.eval()(example[:1])
        module.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return total


@dataclass(frozen=True)
class TopCost:
    """What training the last ``stages`` stages from cached activations costs per image: multiply-accumulates of
    the top's forward pass, and bytes of one cached activation map (float16)."""

    stages: int
    macs: int
    activation_bytes: int


def top_costs(backbone: nn.Module, example: torch.Tensor, most: int) -> list[TopCost]:
    """``TopCost`` of the last 1, 2, .. ``most`` stages (fewer when the backbone has fewer)."""
    costs = []
    for stages in range(1, min(most, max(s for _, _, s in backbone_stages(backbone))) + 1):
        split = split_backbone(backbone, stages, example, check=stages == 1)  # one check tells whether it chains
        with torch.no_grad():
            maps = split.bottom.eval()(example[:1])
        costs.append(TopCost(stages, count_macs(split.top, maps), maps[0].numel() * 2))
    return costs
