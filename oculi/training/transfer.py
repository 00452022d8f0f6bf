"""The transfer-learning phases around the training loop: a head on frozen features, then fine-tuning.

``--mode features`` runs only the first phase. ``--mode auto`` runs both: the head trained on
features becomes the starting point of fine-tuning (linear probing then fine-tuning, which distorts
pretrained features less than fine-tuning from a random head: Kumar et al. 2022, "Fine-Tuning can
Distort Pretrained Features and Underperform Out-of-Distribution"), and the features model stays the
one to beat: a fine-tuned epoch is kept only if its validation accuracy is higher by more than the val
images can resolve (``loop.keep_with_margin``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.nn as nn
from timm.models import group_parameters

from ..console import Reporter
from ..data.cache import cache_key
from ..data.loading import TensorSet
from ..data.transforms import Augmentation
from ..errors import WeightsUnavailable
from ..models import BackboneClassifier
from ..plan import Plan
from ..runtime.engines import place_model, resolve_device
from .features import features_cache, split_features
from .frozen import FrozenForward
from .loop import FeatureData, FeatureSet, HeadBar, Learner, LoopSettings, LoopState, copy_state
from .optim import build_optimizer

# Folds of the training images for the out-of-fold heads whose logits the temperature is fitted on: each head
# trains on 4/5 of them (a head's 60 epochs take ~2 s on 1,800 vectors, so 5 cost a 2-core CPU ~10 s).
OUT_OF_FOLD = 5


def features_phase(model: BackboneClassifier, plan: Plan, sets: dict[str, TensorSet], settings: LoopSettings,
                   device: torch.device, reporter: Reporter, feats: dict[str, FeatureSet] | None = None) -> LoopState:
    """Compute (or read from the cache) the frozen backbone's features, unless ``feats`` has them already,
    and train ``model.head`` on them. Returns the head's training state; ``model.head`` holds its best epoch."""
    feats = feats or backbone_features(model, plan, sets, device, reporter)
    cfg = plan.config
    # The head's epochs take milliseconds: all of them run (no early stop; the last is kept unless an earlier
    # one is significantly better), in float32 (bfloat16 saves nothing on so small a matrix), without
    # Lookahead. Every process trains the same head alone, on the whole step's batch (the recipe's, whatever
    # the number of processes). A time budget bounds the head only when the head is the run (--mode features,
    # each trial of `oculi tune`); before fine-tuning it is the fine-tune's.
    head_settings = dataclasses.replace(settings, epochs=cfg.head_epochs, lr=cfg.head_lr,
                                        batch_size=min(cfg.batch_size * cfg.world_size, len(feats["train"])),
                                        phase="features", patience=None, lookahead=False, mixed_precision=False,
                                        time_budget=settings.time_budget if plan.route == "features" else None)
    initial = copy_state(model.head)

    def fit(train: FeatureSet, val: FeatureSet, said: Reporter, loop: LoopSettings = head_settings) -> LoopState:
        optimizer = build_optimizer(model.head, cfg.optimizer, cfg.head_lr, cfg.weight_decay, cfg.momentum)
        return Learner(model.head, optimizer, loop, FeatureData(train, val), device, said, progress=HeadBar()).fit()

    state = fit(feats["train"], feats["val"], reporter)
    kept = state.best_state
    if cfg.calibrate:  # the out-of-fold heads train the epochs the kept head trained, whatever stopped it
        folds = dataclasses.replace(head_settings, epochs=state.epoch, time_budget=None)
        state.out_of_fold = out_of_fold_logits(model.head, initial, feats["train"], cfg.feature_views, cfg.seed,
                                               lambda train, val, said: fit(train, val, said, folds), reporter)
    model.head.load_state_dict(kept)
    return state


def out_of_fold_logits(head: nn.Module, initial: dict, train: FeatureSet, views: int, seed: int,
                       fit: Callable[[FeatureSet, FeatureSet, Reporter], LoopState], reporter: Reporter,
                       folds: int = OUT_OF_FOLD) -> dict:
    """Logits of every training image that no head trained on: ``folds`` seeded folds of the images (all
    views of one image in one fold), each fold's plain views scored by a head trained as the kept one was
    (``fit``, from the same initial weights) on the other folds. What the temperature is fitted on, since
    these logits took no part in choosing anything (calibration.checked_temperature). ``head`` is left
    holding the last fold's weights."""
    n = len(train) // views
    fold = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) % folds
    logits = None
    with reporter.bar("calibration: out-of-fold heads", folds) as advance:
        for k in range(folds):
            head.load_state_dict(initial)
            rows, held = (fold != k).repeat(views), torch.nonzero(fold == k).squeeze(1)
            held_out = FeatureSet(train.features[held], train.labels[held])
            state = fit(FeatureSet(train.features[rows], train.labels[rows]), held_out, Reporter(quiet=True))
            head.load_state_dict(state.best_state)
            with torch.no_grad():
                scored = head.eval()(held_out.features.to(next(head.parameters()).device)).float().cpu()
            logits = torch.zeros(n, scored.shape[1]) if logits is None else logits
            logits[held] = scored
            advance(1)
    return {"logits": logits.numpy(), "labels": train.labels[:n].numpy()}


class BackboneFeatures:
    """A frozen backbone's features of a run's images, through the features cache: keyed by the backbone's
    name and exact weights and the plan's pixels, so that every phase that asks for the same images' features
    (the head, the kept model's logits, ``oculi check --labels`` before a run) finds the same entries."""

    def __init__(self, backbone: nn.Module, plan: Plan, device: torch.device):
        self.forward = FrozenForward(backbone, device)  # through ONNX Runtime on a CPU where it can
        self.identity = {"backbone": plan.config.model, "weights": backbone_digest(backbone)}
        self.cache = features_cache(plan.config)
        self.plan, self.device = plan, device

    def of(self, data: TensorSet, reporter: Reporter, name: str, views: int = 1,
           augmentation: Augmentation | None = None) -> FeatureSet:
        """``data``'s features: the plain view, then ``views - 1`` views augmented by ``augmentation``."""
        return split_features(self.forward, data, self.plan.preprocessing, self.device, self.identity, views,
                              augmentation, self.plan.config.seed, self.cache, reporter, name)


def backbone_features(model: BackboneClassifier, plan: Plan, sets: dict[str, TensorSet], device: torch.device,
                      reporter: Reporter) -> dict[str, FeatureSet]:
    """The frozen backbone's features of train (``--feature-views`` of each image) and val, cached."""
    cfg = plan.config
    features = BackboneFeatures(model.backbone, plan, device)
    feats = {split: features.of(data, reporter, split, cfg.feature_views if split == "train" else 1,
                                plan.augmentation)
             for split, data in sets.items() if split in ("train", "val")}
    if features.forward.runner is not None:
        reporter.info("features computed with ONNX Runtime (the frozen backbone exported to ONNX)")
    elif features.forward.fallback_reason and device.type == "cpu":
        reporter.info(f"features computed with PyTorch: {features.forward.fallback_reason}")
    return feats


def frozen_logits(model: BackboneClassifier, plan: Plan, data: TensorSet, device: torch.device,
                  reporter: Reporter, name: str) -> torch.Tensor:
    """Logits (float32, CPU) of a model whose backbone stayed frozen: its head on the backbone's plain
    features, read from the features cache under ``features_phase``'s keys (or computed through ONNX Runtime
    on a CPU, and added). The whole model in eager PyTorch recomputes what the cache holds, 3x slower."""
    features = BackboneFeatures(model.backbone, plan, device).of(data, reporter, name).features
    was_training = model.head.training
    with torch.no_grad():
        logits = model.head.eval()(features.to(device)).float().cpu()
    model.head.train(was_training)
    return logits


def plan_features(plan: Plan, sets: dict[str, TensorSet], reporter: Reporter) -> dict[str, torch.Tensor] | None:
    """The plain backbone features of every split (``oculi check --labels``), through the features cache and
    keyed as ``features_phase`` keys its first view, so a training run of ``plan`` afterwards finds them;
    None when the plan has no pretrained backbone or its weights cannot be had."""
    cfg = plan.config
    if not cfg.pretrained:
        return None
    torch.manual_seed(cfg.seed)  # as training.run builds it
    try:
        model, weights = plan.model.create(True, cfg.weights)
    except WeightsUnavailable as err:
        reporter.warn(f"{err}: labels are judged on pixels")
        return None
    if weights is None:
        return None
    device = resolve_device(cfg.device)
    place_model(model, device)
    features = BackboneFeatures(model.backbone, plan.with_statistics(weights.mean, weights.std), device)
    return {split: features.of(data, reporter, split).features for split, data in sets.items()}


def backbone_digest(backbone: nn.Module) -> str:
    """A key for the backbone's exact weights (features from other weights must not be reused)."""
    return cache_key({}, *[t.detach().cpu() for t in backbone.state_dict().values()])


def gradual_unfreezing(model: BackboneClassifier, epochs: int) -> Callable[[int], None]:
    """``on_epoch_start`` that trains the top of the backbone first and one more block group each epoch,
    all of it from epoch ``epochs`` on (ULMFiT's gradual unfreezing, over timm's block groups)."""
    groups = backbone_groups(model.backbone)

    def on_epoch_start(epoch: int) -> None:
        thawed = len(groups) if epochs == 0 else math.ceil(len(groups) * min(1.0, (epoch + 1) / epochs))
        for i, params in enumerate(groups):
            for p in params:
                p.requires_grad_(i >= len(groups) - thawed)

    return on_epoch_start


def backbone_groups(backbone: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters in timm's coarse block groups, stem first."""
    params = dict(backbone.named_parameters())
    if not hasattr(backbone, "group_matcher"):
        return [list(params.values())]
    names = group_parameters(backbone, backbone.group_matcher(coarse=True))
    return [[params[n] for n in group if n in params] for _, group in sorted(names.items())]


def freeze(module: nn.Module, frozen: bool = True) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)
