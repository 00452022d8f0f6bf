"""``oculi augment-preview``: what the training augmentation does to a few images of a dataset, as one
picture (the Keras tutorials' folder of augmented previews)."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from ..config import TrainConfig
from ..data.sources import DataSource, open_source
from ..data.transforms import Augmentation, Preprocessing
from ..errors import ImageDecodeError, OculiError
from ..plan import resolve_plan
from ..plots import plot_augmentation_preview


def augmentation_preview(data: str, n: int = 20, images: int = 3, augment: str = "auto",
                         image_size: tuple[int, int] | None = None, seed: int = 0, **knobs) -> Figure:
    """``n`` augmented versions of ``images`` images of ``data`` (one per class, in class order), with
    the augmentation ``oculi train --augment`` would use, at the size and colour it would train at (per-image
    policies and random erasing included; MixUp and CutMix, which mix pairs of a batch, are named in the title,
    not drawn). ``knobs``: TrainConfig's augmentation fields (rotation=40, fill_mode="wrap", ...) over the preset."""
    if n < 1 or images < 1:
        raise OculiError("--n and --images must be at least 1")
    # Validated before the data is opened: the seed also draws the split, and a bad one must be a flag error.
    asked = TrainConfig(data=data, augment=augment, image_size=image_size, seed=seed, **knobs).validate()
    source = open_source(data, seed=seed)
    # Planned as `oculi train` plans it: the size and colour it trains at, the augmentation it trains with.
    plan = resolve_plan(asked, source)
    return preview_figure(source, plan.augmentation, plan.preprocessing, n, images, seed)


def preview_figure(source: DataSource, augmentation: Augmentation | None, preprocessing: Preprocessing,
                   n: int, images: int, seed: int) -> Figure:
    """``n`` versions of ``images`` sample images of ``source`` under ``augmentation`` (None: unchanged)."""
    originals, titles = _samples(source, images, preprocessing)
    generator = torch.Generator().manual_seed(seed)
    repeated = originals.repeat_interleave(n, dim=0)
    augmented = augmentation(repeated, generator) if augmentation is not None else repeated
    figure = plot_augmentation_preview(originals, augmented.view(len(originals), n, *originals.shape[1:]), titles)
    note = mixing_note(augmentation)
    if note:
        figure.suptitle(note, fontsize=9)
    return figure


def mixing_note(augmentation: Augmentation | None) -> str:
    """What the preview leaves out: MixUp and CutMix blend pairs of images (and their labels) of each training
    batch, after the per-image changes the grid shows."""
    if augmentation is None or not augmentation.mixes:
        return ""
    parts = [f"{name} {alpha:g}" for name, alpha in (("MixUp", augmentation.mixup), ("CutMix", augmentation.cutmix))
             if alpha]
    return f"not previewed: {' / '.join(parts)} mix pairs of images of each training batch"


def _samples(source, count: int, preprocessing: Preprocessing) -> tuple[torch.Tensor, list[str]]:
    """The first readable image of each class, then of the next ones round again, up to ``count``."""
    picked, titles = [], []
    by_class = [[r for r in source.records if r.label == c] for c in range(len(source.classes))]
    for round_ in range(max(len(records) for records in by_class)):
        for c, records in enumerate(by_class):
            if len(picked) == count:
                return torch.stack(picked), titles
            if round_ < len(records):
                try:
                    image = source.read(records[round_], channels=preprocessing.channels)
                except ImageDecodeError:
                    continue
                picked.append(preprocessing.prepare(image))
                titles.append(source.classes[c])
    if not picked:
        raise OculiError(f"{source.root or source.name}: no readable images")
    return torch.stack(picked), titles
