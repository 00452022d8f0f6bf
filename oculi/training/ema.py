"""``--ema``: an exponential moving average of the weights, updated after every optimizer step.

The average is bias-corrected, as Adam corrects its moments: after k steps with decay d it is
``sum_i d^(k-i) w_i / sum_i d^(k-i)`` over the weights w_1..w_k after each step, so it never holds the
starting weights (a plain average started from them would still be d^k of them: at a 5%-of-the-run horizon,
37% after the first of 10 epochs). BatchNorm's running statistics, and every other buffer, are copied from the
trained model instead of averaged: they are already a running average, of the trained weights' activations.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class WeightAverage:
    """The average of ``model``'s weights, as a model of its own (``module``, in eval mode) that validation
    and the kept epoch read; ``steps``: the updates so far (what the bias correction needs)."""

    def __init__(self, model: nn.Module, decay: float, state: dict | None = None, steps: int = 0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        if state is not None:
            self.module.load_state_dict(state)
        self.decay, self.steps = decay, steps

    def update(self, model: nn.Module) -> None:
        """Fold in ``model``'s weights after a step: w_avg += (w - w_avg) (1 - d) / (1 - d^k), the recursion of
        the bias-corrected average (the first step's weight is 1: the average starts at the trained weights)."""
        self.steps += 1
        share = (1 - self.decay) / (1 - self.decay ** self.steps)
        with torch.no_grad():
            for average, weight in zip(self.module.parameters(), model.parameters()):
                average.lerp_(weight.detach(), share)
        self.copy_buffers(model)

    def copy_buffers(self, model: nn.Module) -> None:
        with torch.no_grad():
            for average, buffer in zip(self.module.buffers(), model.buffers()):
                average.copy_(buffer)

    def to_checkpoint(self) -> dict:
        """What ``--resume`` needs to go on with the same average: its weights and step count."""
        return {"state": self.module.state_dict(), "steps": self.steps}
