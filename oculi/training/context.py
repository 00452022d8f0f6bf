"""The run context: what every step of a run works with once its data is loaded, as one value.

Before it, the same eight arguments (plan, source, sets, device, run folder, reporter, world, weights) went
through fitting and finishing one by one; a step that needs one more now reads it here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..console import Reporter
from ..data.loading import TensorSet
from ..data.sources import DataSource
from ..models import Weights
from ..plan import Plan
from ..rundir import RunDir
from ..runtime.world import World


@dataclass(frozen=True)
class RunContext:
    """One run's plan, data, device, folder, voice and processes. ``sets``: the decoded train/val/test
    images after the data check; ``weights``: where pretrained weights came from (None from scratch)."""
    plan: Plan
    source: DataSource
    sets: dict[str, TensorSet]
    device: torch.device
    run: RunDir
    reporter: Reporter
    world: World
    weights: Weights | None = None

    @property
    def cfg(self) -> TrainConfig:
        return self.plan.config
