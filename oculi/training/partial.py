"""Fine-tuning the top of a pretrained backbone from cached activations: what a CPU can afford.

Fine-tuning the whole network costs a full forward and backward pass per image per epoch; on a 2-core CPU an
epoch of a few hundred photos takes as long as the whole features phase. Here the backbone is cut in two at a
stage boundary: the bottom stays frozen and runs once per image (its output, the "activations", cached on disk
in float16 like the features), and only the last ``K`` stages and the head train, for as many epochs as they
like, each costing the top of the network alone. Their BatchNorm layers keep their pretrained statistics
(training them lost 1.5-5 points on hymenoptera: benchmarks/results/partial_finetune.md). Augmentation happens
on the activation maps, as far as the plan's allows: a random mirror when it flips, a random window (the global
pooling takes any size) when it moves the image (translate or an affine change); --augment none: neither.

Where the backbone is cut: ``models.cut``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..console import Reporter
from ..data.cache import cache_key
from ..data.loading import TensorSet
from ..data.transforms import Augmentation
from ..models import BackboneClassifier
from ..models.cut import BackboneSplit, split_backbone
from ..plan import Plan
from ..runtime.engines import model_input
from ..runtime.world import SINGLE, World
from .distributed import sharded_rows
from .features import features_cache, split_features
from .frozen import FrozenForward
from .loop import NO_VAL, FeatureSet, batch_indices, validation_metrics

CROP = 0.85  # the random window's side, as a fraction of the activation map's (at least 1 cell smaller)


# ---------------------------------------------------------------- the top, trained on activations


class TopOfModel(nn.Module):
    """``model.head(top(activations))``: the model's forward from its cut on. It shares the model's parameters,
    and its state dict is the whole model's, so checkpoints and the kept epoch read like any fine-tuning's."""

    def __init__(self, model: BackboneClassifier, split: BackboneSplit):
        super().__init__()
        self.top, self.head = split.top, model.head
        self._model = [model]  # in a list: not a submodule, so parameters are not listed twice

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.head(self.top(activations))

    def train(self, mode: bool = True) -> "TopOfModel":
        super().train(mode)
        for module in self.top.modules():  # pretrained statistics kept: small batches would shift them
            if isinstance(module, nn.modules.batchnorm._NormBase):
                module.eval()
        return self

    def state_dict(self, *args, **kwargs):
        return self._model[0].state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self._model[0].load_state_dict(state_dict, strict, assign)


def trainable_top(model: BackboneClassifier, split: BackboneSplit) -> None:
    """Only the top stages and the head get gradients."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [*split.top.parameters(), *model.head.parameters()]:
        p.requires_grad_(True)


@dataclass
class ActivationData:
    """The Learner's data for the top: cached activation maps [N, C, H, W] (float16, CPU), each map of a batch
    mirrored (``flip``) and cropped (``crop``) at random. With ``views`` (the cached augmented views, view-major,
    the plain view first), each image of a batch is drawn from one of its views at random: an epoch costs N
    images still."""

    train: FeatureSet
    val: FeatureSet
    views: FeatureSet | None = None
    flip: bool = True
    crop: bool = True

    def to(self, device: torch.device) -> ActivationData:
        return self

    def batches(self, order: torch.Tensor, batch_size: int, generator: torch.Generator, device: torch.device):
        for index in batch_indices(order, batch_size):
            maps = augment_maps(self._drawn_views(index, generator).float(), generator, self.flip, self.crop)
            yield model_input(maps.to(device)), self.train.labels[index].to(device)

    def _drawn_views(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count = len(self.views) // len(self.train) if self.views is not None else 1
        if count == 1:
            return self.train.features[index]
        view = torch.randint(0, count, (len(index),), generator=generator)
        return self.views.features[view * len(self.train) + index]

    def validate(self, model: nn.Module, head: str, device: torch.device, world: World = SINGLE) -> dict:
        if len(self.val) == 0:
            return NO_VAL
        logits = sharded_rows(world, lambda part: top_logits(model, self.val.features[part], device), len(self.val))
        return validation_metrics(logits, self.val.labels, head)


def augment_maps(maps: torch.Tensor, generator: torch.Generator, flip: bool = True, crop: bool = True) -> torch.Tensor:
    """Each map mirrored left-right with probability 1/2 (``flip``), then a random window of ``CROP`` of its side
    (``crop``; one size for the batch, an offset per map)."""
    n, _, h, w = maps.shape
    if flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        maps = torch.where(mirrored[:, None, None, None], maps.flip(3), maps)
    if not crop:
        return maps
    ch, cw = min(h - 1, round(h * CROP)) or h, min(w - 1, round(w * CROP)) or w
    top = torch.randint(0, h - ch + 1, (n,), generator=generator)
    left = torch.randint(0, w - cw + 1, (n,), generator=generator)
    return torch.stack([m[:, t:t + ch, s:s + cw] for m, t, s in zip(maps, top.tolist(), left.tolist())])


@torch.no_grad()
def top_logits(model: nn.Module, maps: torch.Tensor, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """Logits (float32, CPU) of ``model`` (a TopOfModel) on whole activation maps, in inference mode."""
    was_training = model.training
    model.eval()
    out = [model(model_input(maps[i:i + batch_size].float().to(device))).float().cpu()
           for i in range(0, len(maps), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


# ---------------------------------------------------------------- the activations, cached


def split_activations(split: BackboneSplit, identity: dict, plan: Plan, data: TensorSet, device: torch.device,
                      reporter: Reporter, name: str, views: int = 1) -> FeatureSet:
    """The bottom's output (float16) for every image of ``data``, plain and in ``views - 1`` augmented views
    as the features phase draws them, from the activations cache (unless the run does not cache) or computed
    (through ONNX Runtime on a CPU, see ``FrozenForward``) and added to it."""
    return split_features(FrozenForward(split.bottom, device), data, plan.preprocessing, device,
                          {**identity, "cut": split.cut}, views, plan.augmentation, plan.config.seed,
                          features_cache(plan.config, "activations"), reporter, name, what="activations",
                          dtype=torch.float16)


@torch.no_grad()
def pooled_features(split: BackboneSplit, maps: FeatureSet, device: torch.device, batch_size: int = 128) -> FeatureSet:
    """The frozen backbone's pooled features of cached activations: the rest of its forward pass, for the
    features head, without running the bottom again."""
    split.top.eval()
    out = [split.top(model_input(maps.features[i:i + batch_size].float().to(device))).float().cpu()
           for i in range(0, len(maps), batch_size)]
    return FeatureSet(torch.cat(out) if out else torch.empty(0, 0), maps.labels)


# ---------------------------------------------------------------- a run's top: cut, cached, ready


@dataclass
class CachedTop:
    """A run's cut backbone and the activations of its train images (``views`` of each, view by view, the
    plain view first) and val images."""

    split: BackboneSplit
    train: FeatureSet
    val: FeatureSet
    views: int = 1

    @property
    def plain_train(self) -> FeatureSet:
        """The plain view's activations: one row per training image, the epoch of the top."""
        n = len(self.train) // self.views
        return FeatureSet(self.train.features[:n], self.train.labels[:n])

    def data(self, augmentation: Augmentation | None) -> ActivationData:
        """The top's training data: an epoch over the images, each drawn from one of its cached views, its maps
        mirrored and moved only as far as ``augmentation`` (the plan's) mirrors and moves images."""
        flip = augmentation is not None and augmentation.flip
        crop = augmentation is not None and (augmentation.translate > 0 or augmentation.affine)
        return ActivationData(self.plain_train, self.val, self.train if self.views > 1 else None, flip, crop)

    def features(self, device: torch.device) -> dict[str, FeatureSet]:
        """The frozen model's pooled features of train and val, for the features head."""
        return {"train": pooled_features(self.split, self.train, device),
                "val": pooled_features(self.split, self.val, device)}


def cached_top(model: BackboneClassifier, plan: Plan, sets: dict[str, TensorSet], device: torch.device,
               reporter: Reporter) -> CachedTop:
    """``model``'s backbone cut before its last ``--unfreeze-stages`` stages, and the activations of the
    train and val images at the cut (cached)."""
    split = cut_model(model, plan, sets["train"], device)
    identity = activation_identity(split, plan)
    views = {"train": plan.config.feature_views, "val": 1}
    train, val = (split_activations(split, identity, plan, sets[name], device, reporter, name, views[name])
                  for name in ("train", "val"))
    return CachedTop(split, train, val, views["train"])


def cut_model(model: BackboneClassifier, plan: Plan, train: TensorSet, device: torch.device) -> BackboneSplit:
    example = model_input(plan.preprocessing.normalize(train.images[:2].to(device)))
    return split_backbone(model.backbone, plan.config.unfreeze_stages, example)


def activation_identity(split: BackboneSplit, plan: Plan) -> dict:
    """What the activations depend on besides the pixels: the bottom's weights (not the top's, which change
    as it trains)."""
    return {"backbone": plan.config.model, "bottom": cache_key({}, *[t.detach().cpu() for t in
                                                                     split.bottom.state_dict().values()])}


def partial_logits(model: BackboneClassifier, plan: Plan, data: TensorSet, device: torch.device,
                   reporter: Reporter, name: str) -> torch.Tensor:
    """Logits (float32, CPU) of a model whose bottom stayed frozen: its top on the bottom's activations,
    read from the cache (val: the run put them there) or computed through ONNX Runtime and added."""
    split = cut_model(model, plan, data, device) if len(data) else None
    if split is None:
        return torch.empty(0, 0)
    maps = split_activations(split, activation_identity(split, plan), plan, data, device, reporter, name)
    return top_logits(TopOfModel(model, split), maps.features, device)
