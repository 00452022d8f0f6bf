"""What a trained network looks at: the feature maps of each convolutional stage, and a Grad-CAM heat map.

Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization"): take the activations A [C, H, W] of a late convolutional stage and the gradients of one
class's score with respect to them; each channel's weight is the spatial mean of its gradient, and the
map is ReLU(sum_c w_c A_c), upsampled to the input. It shows where the evidence *for* that class lies.

Works on any model that lists its stages in a timm-like ``feature_info``, as every model oculi builds does
(its own architectures and timm backbones), and, as a fallback, on any module whose direct children hold
convolutions.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import OculiError
from ..runtime.engines import model_input

NO_STAGES = ("has no convolutional stages (a dense-only network such as mlp, or a vision transformer): "
             "no feature maps or Grad-CAM to show")

Stage = tuple[str, nn.Module]


# ---------------------------------------------------------------- where the stages are

def conv_stages(model: nn.Module) -> list[Stage]:
    """(name, module) of each stage whose output is worth showing, in forward order; [] for a dense net.

    Every model oculi builds lists its stages in a timm-like ``feature_info`` (see ``oculi.models.registry``),
    so a timm model works as it is. A module without one (a user's own nn.Sequential) falls back to its
    direct children that hold a convolution."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list):
        return _conv_children(model)
    return [(d.get("name", d["module"]), model.get_submodule(d["module"])) for d in info]


def _conv_children(model: nn.Module) -> list[Stage]:
    """Direct children that contain a Conv2d: a reasonable guess for a module that lists no stages."""
    return [(name, child) for name, child in model.named_children()
            if any(isinstance(m, nn.Conv2d) for m in child.modules())]


def _channels_last_output(model: nn.Module) -> bool:
    """Some timm backbones (Swin, ...) give their stages' outputs as [N, H, W, C], and say so."""
    return getattr(model, "output_fmt", "NCHW") == "NHWC"


def _nchw(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.permute(0, 3, 1, 2) if channels_last else x


# ---------------------------------------------------------------- running the model with hooks

@contextmanager
def _evaluating(model: nn.Module):
    """Eval mode (no dropout, BatchNorm's running statistics), each module's own mode restored after:
    a model.train() would undo modes set apart, such as BatchNorm frozen during fine-tuning."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def _capturing(stages: list[Stage]):
    """A dict filled, by the next forward pass, with each stage's output; hooks removed on exit."""
    outputs: dict[str, torch.Tensor] = {}

    def hook(name):
        def store(module, inputs, output):
            outputs[name] = output
        return store

    handles = [module.register_forward_hook(hook(name)) for name, module in stages]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _spatial(outputs: dict[str, torch.Tensor], stages: list[Stage], channels_last: bool) -> dict[str, torch.Tensor]:
    """The captured outputs that are image-like [N, C, H, W], in forward order (transformer blocks give
    token sequences, which are not maps)."""
    return {name: _nchw(outputs[name], channels_last) for name, _ in stages
            if name in outputs and torch.is_tensor(outputs[name]) and outputs[name].ndim == 4}


def feature_maps(model: nn.Module, batch: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Each stage's output for the first image of ``batch`` (normalised, on the model's device), as
    float CPU tensors [C, H, W], from one forward pass in eval mode."""
    stages = conv_stages(model)
    with _evaluating(model), _capturing(stages) as outputs, torch.no_grad():
        model(batch[:1])
    maps = _spatial(outputs, stages, _channels_last_output(model))
    return [(name, x[0].float().cpu()) for name, x in maps.items()]


# ---------------------------------------------------------------- Grad-CAM

# Grad-CAM weighs each channel of a stage's map and adds them up: its heat map has the map's resolution.
# A 3x3 map can only say which third of the image holds the evidence, so the default stage is the
# deepest (most semantic) one that is still at least this many cells a side.
MIN_CAM_SIDE = 7


def cam_stage(shapes: dict[str, tuple[int, ...]]) -> str:
    """The stage Grad-CAM uses by default: the last one whose map is at least MIN_CAM_SIDE on both sides
    (a 224 px photo's last stage, 7x7; 8x8 digits' fast-cnn whitening layer, as its blocks shrink them to
    3x3 and 1x1), else the one with the largest map, the last of equals."""
    names = list(shapes)
    wide = [name for name in names if min(shapes[name][-2:]) >= MIN_CAM_SIDE]
    if wide:
        return wide[-1]
    return max(reversed(names), key=lambda name: shapes[name][-2] * shapes[name][-1])


def class_score(logits: torch.Tensor, target: int) -> torch.Tensor:
    """The score whose gradient Grad-CAM follows: the target's logit. A sigmoid head has one logit, the
    evidence for class 1; class 0's evidence is its negative."""
    if logits.numel() == 1:
        return logits.reshape(()) if target == 1 else -logits.reshape(())
    return logits.reshape(-1)[target]


def _predicted(logits: torch.Tensor) -> int:
    return int(logits.reshape(()) > 0) if logits.numel() == 1 else int(logits.argmax())


def grad_cam(model: nn.Module, batch: torch.Tensor, target: int | None = None,
             stage: str | None = None) -> tuple[torch.Tensor, int]:
    """Grad-CAM of the first image of ``batch`` (normalised, on the model's device) for class ``target``
    (default: the predicted one), at ``stage`` (a name from ``conv_stages``; default ``cam_stage``).

    Returns the map [H, W] at the input's size, float on the CPU, scaled so that its peak is 1 (all
    zeros when nothing speaks for the class), and the target."""
    stages = conv_stages(model)
    # A leaf input that needs gradients puts every activation in the graph, even when no parameter
    # requires grad (a frozen backbone) or the caller is inside torch.no_grad.
    x = batch[:1].detach().requires_grad_(True)
    with _evaluating(model), _capturing(stages) as outputs, torch.enable_grad():
        logits = model(x)
        maps = _spatial(outputs, stages, _channels_last_output(model))
        if not maps:
            raise OculiError(f"{type(model).__name__} {NO_STAGES}")
        stage = _check_stage(stage, maps)
        target = _predicted(logits[0]) if target is None else _check_target(target, logits.shape[1])
        # Gradients of the raw output (NHWC or not), permuted as its activations were.
        grads = torch.autograd.grad(class_score(logits[0], target), outputs[stage])[0]
    activations = maps[stage][0].detach().float()
    grads = _nchw(grads, _channels_last_output(model))[0].float()
    weights = grads.mean(dim=(1, 2))  # one number per channel: how much the class score wants more of it
    cam = F.relu(torch.einsum("c,chw->hw", weights, activations))
    cam = F.interpolate(cam[None, None], size=batch.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return _unit_peak(cam).cpu(), target


def _check_stage(stage: str | None, maps: dict[str, torch.Tensor]) -> str:
    if stage is None:
        return cam_stage({name: tuple(x.shape) for name, x in maps.items()})
    if stage not in maps:
        raise OculiError(f"unknown stage '{stage}'; this model's stages are: {', '.join(maps)}")
    return stage


def _check_target(target: int, num_outputs: int) -> int:
    num_classes = 2 if num_outputs == 1 else num_outputs
    if not 0 <= int(target) < num_classes:
        raise OculiError(f"class index {target} is out of range: the model has {num_classes} classes")
    return int(target)


def _unit_peak(cam: torch.Tensor) -> torch.Tensor:
    """Divide by the peak rather than min-max scale: zero keeps meaning "no evidence", a map that is the
    same everywhere stays flat instead of 0/0, and an all-zero map stays zeros."""
    peak = cam.max()
    return cam / peak if peak > 0 else torch.zeros_like(cam)


# ---------------------------------------------------------------- one image, for the CLI and reports

@dataclass
class Explanation:
    """Everything shown for one image: the image as the model saw it, its feature maps and Grad-CAM."""

    image: torch.Tensor  # uint8 [C, H, W], resized (and filtered) as the model's input
    maps: list[tuple[str, torch.Tensor]]  # each stage's output [C, H, W]
    cam: torch.Tensor  # [H, W] in [0, 1], the input's size
    target: int  # the class the heat map explains
    probs: np.ndarray  # [classes], the probabilities `oculi predict` gives this image
    classes: list[str]
    stage: str  # the stage Grad-CAM was taken at

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs))

    @property
    def label(self) -> str:
        return self.classes[self.target]

    @property
    def cam_size(self) -> tuple[int, int]:
        """(height, width) of the stage's map: the heat map's true resolution, before upsampling."""
        return tuple(dict(self.maps)[self.stage].shape[-2:])

    @property
    def stage_note(self) -> str:
        """Which stage the heat map comes from, and why that one."""
        h, w = self.cam_size
        if min(h, w) >= MIN_CAM_SIDE:
            return (f"Taken at {self.stage}, whose map is {h}x{w}: the last stage whose map is at least "
                    f"{MIN_CAM_SIDE}x{MIN_CAM_SIDE} (a smaller one can only say roughly where).")
        return (f"Taken at {self.stage}, the largest map this model has, yet only {h}x{w}: the heat map can "
                "only say roughly where.")

    @property
    def title(self) -> str:
        h, w = self.cam_size
        coarse = ", coarse" if min(h, w) < MIN_CAM_SIDE else ""
        return f"Grad-CAM for '{self.label}' ({self.probs[self.target]:.1%}) at {self.stage}: {h}x{w} map{coarse}"


def explain_image(classifier, image, target: int | str | None = None) -> Explanation:
    """Feature maps and Grad-CAM of ``image`` (anything ``Classifier.prepare`` takes) for ``target`` (a
    class index or name; default: the predicted class)."""
    return explain_prepared(classifier, classifier.prepare(image), target)


def explain_prepared(classifier, pixels: torch.Tensor, target: int | str | None = None) -> Explanation:
    """``explain_image`` of an image already prepared for the model (uint8 [C, H, W], as
    ``Classifier.prepare`` or ``oculi.data.contained.prepare_file`` give it)."""
    # Probabilities as `oculi predict` reports them (flip TTA and temperature included), so the two never disagree.
    probs = classifier.prepared_probs(pixels[None])[0]
    target = int(np.argmax(probs)) if target is None else _class_index(target, classifier.classes)
    batch = model_input(classifier.preprocessing.normalize(pixels[None].to(classifier.device)))
    maps = feature_maps(classifier.model, batch)
    if not maps:
        raise OculiError(f"model '{classifier.meta['model']['name']}' {NO_STAGES}")
    stage = cam_stage({name: tuple(x.shape) for name, x in maps})
    cam, _ = grad_cam(classifier.model, batch, target, stage)
    return Explanation(pixels, maps, cam, target, probs, classifier.classes, stage)


def _class_index(target: int | str, classes: list[str]) -> int:
    """A class name or index -> its index."""
    if isinstance(target, str):
        if target not in classes:
            shown = ", ".join(classes[:20]) + (", ..." if len(classes) > 20 else "")
            raise OculiError(f"unknown class '{target}'; this model's classes are: {shown}")
        return classes.index(target)
    return _check_target(target, len(classes))


def cam_overlay(image: torch.Tensor, cam: torch.Tensor) -> np.ndarray:
    """The uint8 image [C, H, W] with its Grad-CAM map [H, W] (in [0, 1]) laid over it in jet colours, as
    the report draws it: the more evidence, the more opaque; where there is none the image shows unchanged.
    Returns uint8 [H, W, 3]."""
    rgb = image.expand(3, -1, -1).permute(1, 2, 0).float().numpy()
    heat = cam.float().clamp(0, 1).numpy()[..., None]
    alpha = 0.6 * heat
    return (rgb * (1 - alpha) + 255 * _jet(heat) * alpha).round().astype(np.uint8)


def _jet(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (shape [..., 1]) -> the jet colour map's RGB in [0, 1]: blue, cyan, yellow, red.
    Its piecewise-linear form, so that drawing one overlay needs no matplotlib."""
    return np.clip(1.5 - np.abs(4 * x - np.array([3.0, 2.0, 1.0])), 0, 1)
