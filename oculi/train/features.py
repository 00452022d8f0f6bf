"""Transfer learning's fast path: a frozen backbone's features, computed once, and a head trained on them.

This is the tutorials' "bottleneck features" method. The backbone runs once per image (and once per
augmented view when asked); the features are cached on disk, keyed by the exact pixels and backbone,
so a second run on the same data skips the backbone entirely. The head then trains on a small float
matrix: an epoch takes milliseconds, so it gets many of them and its best epoch is kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..console import Reporter
from ..data.cache import TensorCache, cache_key
from ..data.loading import TensorSet
from ..data.transforms import Augmentation, Preprocessing
from ..deploy.engines import model_input
from .loop import LoopSettings, LoopState, epoch_generator, epoch_order, is_better, loss_fn, validation_metrics
from .optim import build_optimizer, lr_factor, set_lr


@dataclass
class FeatureSet:
    """Backbone features [N * views, D] (float32, CPU) and their labels."""

    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def extract_features(backbone: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     preprocessing: Preprocessing, device: torch.device, augmentation: Augmentation | None = None,
                     generator: torch.Generator | None = None, batch_size: int = 32,
                     advance: Callable = lambda n: None) -> torch.Tensor:
    """Pooled features of uint8 images [N, C, H, W], optionally augmented, from ``backbone`` (a frozen
    backbone in eval mode, or its ``FrozenForward``)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        if augmentation is not None:
            batch = augmentation(batch, generator)
        out.append(backbone(model_input(preprocessing.normalize(batch))).float().cpu())
        advance(len(batch))
    return torch.cat(out) if out else torch.empty(0, 0)


def split_features(backbone: Callable[[torch.Tensor], torch.Tensor], data: TensorSet, preprocessing: Preprocessing, device: torch.device,
                   identity: dict, views: int, augmentation: Augmentation | None, seed: int,
                   cache: TensorCache | None, reporter: Reporter, name: str) -> FeatureSet:
    """Features of one split: view 0 plain, views 1.. augmented with generators seeded by (seed, view).
    Each view is looked up in, or added to, the cache."""
    parts = []
    for view in range(views):
        augmented = view > 0 and augmentation is not None
        description = {**identity, "preprocessing": preprocessing.to_dict(), "view": view if augmented else 0,
                       "augmentation": augmentation.to_dict() if augmented else None, "seed": seed if augmented else None}
        key = cache_key(description, data.images)
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            parts.append(hit["features"])
            continue
        label = f"features: {name}" + (f", view {view + 1}/{views}" if views > 1 else "")
        with reporter.bar(label, len(data)) as advance:
            features = extract_features(backbone, data.images, preprocessing, device,
                                        augmentation if augmented else None, epoch_generator(seed, 10_000 + view),
                                        advance=advance)
        if cache is not None:
            cache.put(key, {"features": features})
        parts.append(features)
    return FeatureSet(torch.cat(parts), data.labels.repeat(views))


def head_outputs(head: nn.Module, features: torch.Tensor, device: torch.device) -> torch.Tensor:
    head.eval()
    with torch.no_grad():
        return head(features.to(device)).float().cpu()


def validate_head(head: nn.Module, val: FeatureSet, settings: LoopSettings, device: torch.device) -> dict:
    if len(val) == 0:
        return {"val_loss": None, "val_acc": None}
    return validation_metrics(head_outputs(head, val.features, device), val.labels, settings.head)


def fit_head(head: nn.Module, train: FeatureSet, val: FeatureSet, settings: LoopSettings, optimizer_name: str,
             weight_decay: float, device: torch.device, reporter: Reporter) -> LoopState:
    """Train ``head`` on cached features for ``settings.epochs``; ``head`` ends with its best epoch's weights."""
    head.to(device)
    optimizer = build_optimizer(head, optimizer_name, settings.lr, weight_decay, 0.9)
    steps = max(1, len(train) // settings.batch_size)
    state = LoopState()
    started = time.perf_counter()
    with reporter.bar("training the head", settings.epochs) as advance:
        for epoch in range(settings.epochs):
            row = {"epoch": epoch + 1, "phase": "features",
                   **_head_epoch(head, optimizer, train, settings, epoch, steps, device),
                   **validate_head(head, val, settings, device), "time": round(time.time(), 2)}
            state.history.append(row)
            state.epoch = epoch + 1
            if is_better(row, state):
                state.best_epoch, state.best_state = state.epoch, _copy_state(head)
            advance(1, val_acc=f"{row['val_acc'] or 0:.1%}")
    head.load_state_dict(state.best_state)
    best = state.best_row
    val = "" if best["val_acc"] is None else f"  val loss {best['val_loss']:.4f} acc {best['val_acc']:.2%}"
    reporter.info(f"head   {settings.epochs} epochs on {len(train)} feature vectors in "
                  f"{time.perf_counter() - started:.1f}s; best epoch {state.best_epoch}: train loss "
                  f"{best['train_loss']:.4f} acc {best['train_acc']:.2%}{val}")
    return state


def _head_epoch(head, optimizer, train: FeatureSet, settings: LoopSettings, epoch: int, steps: int,
                device: torch.device) -> dict:
    generator = epoch_generator(settings.seed, epoch)
    torch.manual_seed(settings.seed * 100_003 + epoch)  # dropout draws
    head.train()
    order = epoch_order(train.labels, settings, generator)
    loss_sum = correct = seen = 0
    for step in range(steps):
        index = order[step * settings.batch_size:(step + 1) * settings.batch_size]
        features, labels = train.features[index].to(device), train.labels[index].to(device)
        set_lr(optimizer, settings.lr * lr_factor(epoch * steps + step, steps * settings.epochs,
                                                  int(settings.warmup_epochs * steps), settings.schedule))
        logits = head(features)
        loss = loss_fn(logits, labels, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(index)
        correct += int((_predicted(logits.detach(), settings.head) == labels).sum())
        seen += len(index)
    return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "lr": optimizer.param_groups[0]["lr"]}


def _predicted(logits: torch.Tensor, head: str) -> torch.Tensor:
    return (logits[:, 0] > 0).long() if head == "sigmoid" else logits.argmax(1)


def _copy_state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
