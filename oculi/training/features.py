"""Transfer learning's fast path: a frozen backbone's features, computed once, and a head trained on them.

This is the tutorials' "bottleneck features" method. The backbone runs once per image (and once per
augmented view when asked); the features are cached on disk, keyed by the exact pixels and backbone,
so a second run on the same data skips the backbone entirely. The head then trains on a small float
matrix (the Learner with FeatureData, transfer.features_phase): an epoch takes milliseconds, so it gets
many of them and its best epoch is kept.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..console import Reporter
from ..data.cache import TensorCache, cache_key
from ..data.loading import TensorSet
from ..data.transforms import Augmentation, Preprocessing
from ..runtime.engines import model_input
from .loop import FeatureSet, epoch_generator


def features_cache(config, kind: str = "features") -> TensorCache | None:
    """The on-disk cache of a frozen backbone's outputs that a run of ``config`` (a TrainConfig) reads and adds
    to: "features" (pooled features) or "activations" (a cut backbone's bottom's maps); None with --no-cache."""
    return TensorCache(kind) if config.cache else None


@torch.no_grad()
def extract_features(backbone: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     preprocessing: Preprocessing, device: torch.device, augmentation: Augmentation | None = None,
                     generator: torch.Generator | None = None, batch_size: int = 32,
                     advance: Callable = lambda n: None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pooled features of uint8 images [N, C, H, W], optionally augmented, from ``backbone`` (a frozen
    backbone in eval mode, or its ``FrozenForward``)."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        if augmentation is not None:
            batch = augmentation(batch, generator)
        out.append(backbone(model_input(preprocessing.normalize(batch))).to(dtype).cpu())
        advance(len(batch))
    return torch.cat(out) if out else torch.empty(0, 0)


def split_features(backbone: Callable[[torch.Tensor], torch.Tensor], data: TensorSet, preprocessing: Preprocessing, device: torch.device,
                   identity: dict, views: int, augmentation: Augmentation | None, seed: int,
                   cache: TensorCache | None, reporter: Reporter, name: str, what: str = "features",
                   dtype: torch.dtype = torch.float32) -> FeatureSet:
    """Features of one split: view 0 plain, views 1.. augmented with generators seeded by (seed, view).
    Each view is looked up in, or added to, the cache, as ``dtype`` (``what``: the progress bar's word, e.g.
    "activations" for a cut backbone's maps)."""
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
        label = f"{what}: {name}" + (f", view {view + 1}/{views}" if views > 1 else "")
        with reporter.bar(label, len(data)) as advance:
            features = extract_features(backbone, data.images, preprocessing, device,
                                        augmentation if augmented else None, epoch_generator(seed, 10_000 + view),
                                        advance=advance, dtype=dtype)
        if cache is not None:
            cache.put(key, {"features": features})
        parts.append(features)
    return FeatureSet(torch.cat(parts), data.labels.repeat(views, *[1] * (data.labels.dim() - 1)))
