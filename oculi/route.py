"""Which way a run trains, decided once (``plan.resolve_plan``) and read everywhere else, and its words.

A route is one of:

- ``scratch``: every layer from random weights;
- ``features``: a head on the frozen pretrained backbone's cached features;
- ``whole``: the whole pretrained network fine-tuned;
- ``top``: the backbone's last ``unfreeze_stages`` stages and the head fine-tuned, from the bottom's cached
  activations (what a CPU can afford);
- ``features+whole``, ``features+top``: the features head first, then that fine-tuning, which must beat the
  head by a margin the val images can resolve (``selection``) to replace it.

A run keeps the weights of one *part* of its route: ``scratch``, ``features``, ``whole`` or ``top``.
"""

from __future__ import annotations

from .config import TrainConfig

ROUTES = ("scratch", "features", "whole", "top", "features+whole", "features+top")
PARTS = ("scratch", "features", "whole", "top")


def route_of(cfg: TrainConfig) -> str:
    """The route of a resolved config (its mode, pretrained and unfreeze_stages concrete)."""
    if not cfg.pretrained:
        return "scratch"
    finetune = "top" if cfg.unfreeze_stages is not None else "whole"
    return {"features": "features", "finetune": finetune, "auto": f"features+{finetune}"}[cfg.mode]


def head_first(route: str) -> bool:
    """The route starts with a head on cached features."""
    return route.startswith("features")


def finetune_part(route: str) -> str | None:
    """What trains after (or instead of) the features head: scratch, whole or top; None for a head alone."""
    last = route.split("+")[-1]
    return None if last == "features" else last


def trains_backbone(route: str) -> bool:
    return finetune_part(route) is not None


def kept_part(route: str, kept_head: bool) -> str:
    """The part of ``route`` whose weights were kept (``kept_head``: the features head won)."""
    return "features" if kept_head or route == "features" else finetune_part(route)


def legacy_part(training: str | None, unfreeze_stages: int | None) -> str:
    """The kept part of a bundle written before routes: model.json's ``training`` (scratch, features,
    finetune) and the config's unfreeze_stages."""
    if training == "finetune":
        return "top" if unfreeze_stages is not None else "whole"
    return training if training in PARTS else "scratch"


def training_word(part: str) -> str:
    """model.json's ``training`` (what produced the kept weights): scratch, features or finetune."""
    return "finetune" if part in ("whole", "top") else part


def stages(n: int) -> str:
    return f"{n} stage{'s' * (n != 1)}"


def part_words(part: str, unfreeze_stages: int | None) -> str:
    """What a part trained, for the report's model section."""
    if part == "top":
        return (f"the last {stages(unfreeze_stages or 1)} of the backbone and the head, fine-tuned from the "
                "pretrained weights")
    return {"scratch": "from scratch, every layer", "features": "head only, on the frozen backbone's features",
            "whole": "the whole network, fine-tuned from the pretrained weights"}.get(part, part)


def plan_words(cfg: TrainConfig, route: str) -> str:
    """The plan line's description of the route, with its epochs and learning rates."""
    head = (f"{cfg.classifier} head on frozen features ({cfg.feature_views} view{'s' * (cfg.feature_views > 1)} "
            f"per training image, cached), {cfg.head_epochs} epochs at lr {cfg.head_lr:g}")
    what = "everything" if cfg.unfreeze_stages is None else f"the last {stages(cfg.unfreeze_stages)} (cached inputs)"
    budget = "" if cfg.time_budget is None else f", within {cfg.time_budget:g}s"
    finetune = (f"fine-tune {what} {cfg.epochs} epochs at lr {cfg.lr:g} (backbone x{cfg.backbone_lr:g}"
                + (f", unfrozen over {cfg.unfreeze_epochs} epochs" if cfg.unfreeze_epochs else "") + f"){budget}")
    early = ("" if cfg.patience is None else
             f", stopped after {cfg.patience} epoch{'s' * (cfg.patience != 1)} without a better val score")
    if route == "scratch":
        if cfg.epochs_from_budget:
            return (f"from scratch at lr {cfg.lr:g}, as many epochs as fit in {cfg.time_budget:g}s "
                    f"(counted after the second; {cfg.epochs} until then)")
        return f"from scratch, {cfg.epochs} epochs at lr {cfg.lr:g}"
    if route == "features":
        return head + budget
    if not head_first(route):
        return finetune
    return f"{head}; then {finetune}{early}; kept only if it beats the head by more than the val images can resolve"
