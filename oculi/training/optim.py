"""Optimizers and the learning-rate schedule (a pure function of the step, so resuming needs no state)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    backbone_lr: float = 1.0) -> torch.optim.Optimizer:
    """``backbone_lr`` scales the learning rate of parameters under ``model.backbone``: fine-tuning keeps
    pretrained features near where they were, while the head moves at the full rate. Frozen parameters
    stay in the optimizer (they get no gradient, so no update), ready for gradual unfreezing."""
    groups = []
    for scale, params in _by_lr_scale(model, backbone_lr):
        # No weight decay on biases and norm parameters: decaying them only hurts (they are 1-d).
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lr_scale": scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_scale": scale}]
    groups = [g for g in groups if g["params"]]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    return torch.optim.RMSprop(groups, lr=lr, momentum=momentum)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step``.

    cosine: linear warmup then cosine decay to 0; onecycle: warmup over the first 30% then cosine
    (the one-cycle shape); constant: warmup then flat."""
    if schedule == "onecycle":
        warmup_steps = max(1, int(0.3 * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _by_lr_scale(model: nn.Module, backbone_lr: float) -> list[tuple[float, list[nn.Parameter]]]:
    named = list(model.named_parameters())
    backbone = [p for n, p in named if n.startswith("backbone.")]
    rest = [p for n, p in named if not n.startswith("backbone.")]
    return [(backbone_lr, backbone), (1.0, rest)]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class Lookahead:
    """Lookahead on the weights (Zhang et al. 2019, as airbench uses it): every ``every`` steps the
    network is pulled back to a slow copy that follows it, ``slow += (1 - decay) * (net - slow); net =
    slow``. ``decay`` grows over training as 0.95^5 * progress^3: no smoothing at first, heavy averaging
    near the end, where it smooths out the noise of the last steps. It acts on every float tensor of the
    state dict (BatchNorm statistics too). Created at an epoch's start and synced at its end, the slow
    copy is then the network itself, so a checkpoint needs nothing more."""

    def __init__(self, model: torch.nn.Module, every: int = 5):
        self.every = every
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def step(self, model: torch.nn.Module, step: int, total_steps: int, force: bool = False) -> None:
        """After optimizer step ``step`` (counted over the whole run, from 0)."""
        if not force and (step + 1) % self.every:
            return
        decay = 0.95 ** 5 * ((step + 1) / total_steps) ** 3
        state = model.state_dict()
        with torch.no_grad():
            for name, slow in self.slow.items():
                slow.lerp_(state[name], 1 - decay)
                state[name].copy_(slow)
