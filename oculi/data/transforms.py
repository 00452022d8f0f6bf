"""The preprocessing's torch half (resizing uint8 tensors) and the training augmentation; the definition
itself, stored in every bundle, is ``oculi.data.preprocessing.Preprocessing``.

Preprocessing is split in two so that it runs where it is cheapest:
- ``prepare``: per image, on the CPU, once: channel conversion and resize to the model's input size,
  kept as uint8 (4x smaller than float; this is what gets cached).
- ``normalize``: per batch, on the training device: uint8 -> float, minus mean, over std.
Training, evaluation and prediction all call these same two functions, so a file predicted alone
gets exactly the probabilities it gets during evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import math

import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF

from .filters import FILTERS
from .mixing import Mixed, mix_batch
from .preprocessing import Preprocessing  # noqa: F401 (where callers have long found it)


def resize_image(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize uint8 [C, H, W] to ``size`` by squashing, letterboxing (pad) or centre-cropping."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image
    if 1 in (h, w):
        # torch's uint8 antialiased resize reads the stride of a side of 1, which may be anything (5,000 for a
        # one-pixel-wide gray JPEG turned upright by its EXIF orientation) and then segfaults: plain strides.
        image = image.clone(memory_format=torch.contiguous_format)
    if mode == "squash":
        return _resize(image, size)
    # pad fits the whole image inside; crop fills the whole target and cuts the overflow.
    scale = (min if mode == "pad" else max)(size[0] / h, size[1] / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "crop" and new_h * new_w > 16 * size[0] * size[1]:
        # Resized whole, it would be huge: 480 million pixels for a 1 x 12,000,000 sliver (a corrupt header)
        # cropped to 40 x 24. Cut first, then resize what is kept; the centre may move by a fraction of a
        # pixel, so images of ordinary shape keep the exact path below.
        kept = [min(h, max(1, round(size[0] / scale))), min(w, max(1, round(size[1] / scale)))]
        return _resize(TF.center_crop(image, kept), size)
    image = _resize(image, (new_h, new_w))
    if mode == "crop":
        return TF.center_crop(image, list(size))
    top, left = (size[0] - new_h) // 2, (size[1] - new_w) // 2
    # Zero padding, as tf.image.resize_with_pad does.
    return F.pad(image, (left, size[1] - new_w - left, top, size[0] - new_h - top))


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased resize to ``size``. torch resizes the width first: when the width grows and the height
    shrinks, it holds every input row at the new width, which for a tall sliver (a corrupt header: 16 x
    10,000,000 to 32 x 32) takes 1 GB; shrinking the height first takes 155 MB. Only past 2^24 such pixels:
    the two steps may round a level apart, and ordinary images keep the one-step result."""
    h, w = image.shape[-2:]
    if size[0] < h and size[1] > w and h * size[1] > 2**24:
        image = TF.resize(image, [size[0], w], antialias=True)
    return TF.resize(image, list(size), antialias=True)


def channel_stats(images: torch.Tensor, max_images: int = 10_000, chunk: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, from up to ``max_images`` images (for models trained
    from scratch; pretrained backbones bring their own statistics). Summed a chunk at a time, so that the
    sample is never converted to floats all at once (10,000 photos at 224 px would take 6 GB)."""
    step = max(1, len(images) // max_images)
    total = squares = torch.zeros(images.shape[1], dtype=torch.float64)
    count = 0
    for start in range(0, len(images), chunk * step):
        part = images[start:start + chunk * step:step].double() / 255
        total = total + part.sum(dim=(0, 2, 3))
        squares = squares + (part * part).sum(dim=(0, 2, 3))
        count += part.numel() // part.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


# ---- augmentation (batched, on the training device) ---------------------------------------------



@dataclass(frozen=True)
class Augmentation:
    """Random changes to a uint8 batch [N, C, H, W], all drawn from one generator (a seeded epoch repeats
    exactly), all batched on the batch's device. The knobs are Keras ImageDataGenerator's."""

    flip: bool = True  # random horizontal flip (off for digits: a mirrored 3 is not a 3)
    translate: float = 0.125  # random shift by whole pixels, as a fraction of the side, reflect padding
    vflip: bool = False  # random vertical flip
    rotation: float = 0.0  # degrees, up to +-rotation
    shift: float = 0.0  # sub-pixel shift, up to +-shift of the width and height (Keras' *_shift_range)
    shear: float = 0.0  # degrees, up to +-shear
    zoom: float = 0.0  # scale between 1 - zoom and 1 + zoom
    fill_mode: str = "reflect"  # what the affine changes bring in at the borders: constant|nearest|reflect|wrap
    brightness: float = 0.0  # pixel values times 1 +- brightness
    contrast: float = 0.0  # distance from each image's mean times 1 +- contrast
    saturation: float = 0.0  # distance from gray times 1 +- saturation (colour images)
    auto_augment: str = "none"  # a per-image policy of AUTO_AUGMENTS: randaugment or trivialaugment
    erasing: float = 0.0  # probability of erasing a random rectangle of each image (random erasing)
    # Batch mixing, applied by the training loop to normalised images with their labels (``mix``), on the
    # routes that train on images: Beta(alpha, alpha) of MixUp and CutMix, 0 off.
    mixup: float = 0.0
    cutmix: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def affine(self) -> bool:
        return any((self.rotation, self.shift, self.shear, self.zoom))

    @property
    def changes_anything(self) -> bool:
        return any((self.flip, self.vflip, self.translate > 0, self.affine, self.brightness, self.contrast,
                    self.saturation, self.auto_augment != "none", self.erasing, self.mixes))

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (MixUp or CutMix), which needs their labels: ``mix``."""
        return self.mixup > 0 or self.cutmix > 0

    def mix(self, batch: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Mixed]:
        """A float batch mixed with a shuffled copy of itself, and the labels of both (``mixing.mix_batch``)."""
        return mix_batch(batch, labels, self.mixup, self.cutmix, generator)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.flip:
            batch = random_flip(batch, generator)
        if self.vflip:
            batch = random_flip(batch, generator, dim=-2)
        if self.translate > 0:
            batch = random_translate(batch, self.translate, generator)
        if self.affine:
            batch = random_affine(batch, self, generator)
        if self.brightness or self.contrast or self.saturation:
            batch = random_colour(batch, self, generator)
        if self.auto_augment != "none":
            batch = auto_augment(batch, self.auto_augment, generator)
        if self.erasing:
            batch = random_erasing(batch, self.erasing, generator)
        return batch


# Presets for --augment. light: airbench's flip and translate, right for small images; standard and strong:
# the Keras tutorials' ImageDataGenerator settings (strong is the cars-vs-elephants "heavy augmentation").
AUGMENT_PRESETS = {
    "light": Augmentation(),
    "standard": Augmentation(translate=0, rotation=15, shift=0.1, zoom=0.1, brightness=0.1, contrast=0.1),
    "strong": Augmentation(translate=0, rotation=40, shift=0.2, shear=11.3, zoom=0.2, fill_mode="nearest",
                           brightness=0.2, contrast=0.2, saturation=0.2),
    # modern: the DeiT / timm ImageNet recipe's augmentations over light's flip and translate (Touvron et al.
    # 2021, with TrivialAugment, Mueller & Hutter 2021, for RandAugment: no magnitude to tune). Made for long
    # schedules from scratch; MixUp and CutMix slow down how fast a short run fits (not auto's choice).
    "modern": Augmentation(auto_augment="trivialaugment", erasing=0.25, mixup=0.8, cutmix=1.0),
}
# torchvision's policies, by --auto-augment's names.
AUTO_AUGMENTS = {"randaugment": T.RandAugment, "trivialaugment": T.TrivialAugmentWide}


def _uniform(n: int, generator: torch.Generator, device) -> torch.Tensor:
    # Random numbers come from a CPU generator so that a run is the same on every device.
    return torch.rand(n, generator=generator).to(device)


def _symmetric(n: int, limit: float, generator: torch.Generator, device) -> torch.Tensor:
    """n draws from U(-limit, limit)."""
    return (_uniform(n, generator, device) * 2 - 1) * limit


def random_flip(batch: torch.Tensor, generator: torch.Generator, dim: int = -1) -> torch.Tensor:
    flip = _uniform(len(batch), generator, batch.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), batch.flip(dim), batch)


def random_translate(batch: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``fraction`` of its size (at least a pixel when ``fraction`` > 0: 8x8 digits
    still move), filling with the reflected border."""
    n, _, h, w = batch.shape
    pad_h, pad_w = (max(1, round(side * fraction)) if fraction > 0 else 0 for side in (h, w))
    if pad_h == 0 and pad_w == 0:
        return batch
    padded = F.pad(batch.float(), (pad_w, pad_w, pad_h, pad_h), mode="reflect").to(batch.dtype)
    dy = (_uniform(n, generator, batch.device) * (2 * pad_h + 1)).long()
    dx = (_uniform(n, generator, batch.device) * (2 * pad_w + 1)).long()
    rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]
    index = torch.arange(n, device=batch.device)[:, None, None, None]
    channels = torch.arange(batch.shape[1], device=batch.device)[None, :, None, None]
    return padded[index, channels, rows, cols]


def random_affine(batch: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Rotate, shear, zoom and shift each image by its own random amounts, in one resampling."""
    n, device = len(batch), batch.device
    angle = torch.deg2rad(_symmetric(n, aug.rotation, generator, device))
    shear = torch.deg2rad(_symmetric(n, aug.shear, generator, device))
    scale = 1 + _symmetric(n, aug.zoom, generator, device)
    shift = _symmetric(2 * n, aug.shift, generator, device).view(n, 2)
    return affine_batch(batch, angle, shear, scale, shift, aug.fill_mode)


def affine_batch(batch: torch.Tensor, angle: torch.Tensor, shear: torch.Tensor, scale: torch.Tensor,
                 shift: torch.Tensor, fill: str) -> torch.Tensor:
    """Per image: rotate by ``angle`` and shear by ``shear`` (radians), zoom by ``scale`` (2: twice as
    large), shift by ``shift`` [N, 2] (fractions of width and height: output pixel x shows input pixel
    x + shift * w), filling the borders as ``fill`` says."""
    n, _, h, w = batch.shape
    device = batch.device
    # The output-to-input map in pixel units around the centre, A = R(angle) @ Shear(shear) / scale, is
    # moved to affine_grid's [-1, 1] units by D^-1 A D with D = diag(w, h) / 2 (non-square images stay true).
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    a = torch.stack([torch.stack([cos, cos * tan - sin], 1), torch.stack([sin, sin * tan + cos], 1)], 1)
    a = a / scale.view(n, 1, 1)
    d = torch.tensor([w / 2, h / 2], device=device)
    theta = torch.cat([a * d.view(1, 1, 2) / d.view(1, 2, 1), 2 * shift.view(n, 2, 1)], dim=2)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if fill == "wrap":
        grid = torch.remainder(grid + 1, 2) - 1
    padding = {"constant": "zeros", "nearest": "border", "reflect": "reflection", "wrap": "border"}[fill]
    out = F.grid_sample(batch.float(), grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return out.round_().clamp_(0, 255).to(batch.dtype)


def random_colour(batch: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each image by its own factors."""
    n, device = len(batch), batch.device
    x = batch.float()
    factor = lambda limit: 1 + _symmetric(n, limit, generator, device).view(n, 1, 1, 1)  # noqa: E731
    if aug.brightness:
        x = x * factor(aug.brightness)
    if aug.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor(aug.contrast) + mean
    if aug.saturation and x.shape[1] == 3:
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (x - gray) * factor(aug.saturation) + gray
    return x.round_().clamp_(0, 255).to(batch.dtype)


def auto_augment(batch: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ``policy`` (AUTO_AUGMENTS) applied to each uint8 image on its own. Per image because
    torchvision draws one operation and magnitude a call: called on the batch, every image would get the same
    one. That costs a Python loop of small operations a batch (BENCHMARKS.md: images/s at 32 and 224 px).
    torchvision draws from torch's global generator: it is seeded from ``generator`` inside a fork, so an epoch
    repeats exactly and nothing outside sees a draw."""
    transform = AUTO_AUGMENTS[policy]()
    seed = int(torch.randint(2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for image in batch])


def random_erasing(batch: torch.Tensor, p: float, generator: torch.Generator, area: tuple[float, float] = (0.02, 1 / 3),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2017), batched: with probability ``p`` an image gets a rectangle of random
    uint8 noise, of ``area`` (fraction of the image) and aspect ``ratio`` (height over width, log-uniform)
    drawn per image. A rectangle larger than a side is cut to it (torchvision draws again instead)."""
    n, c, h, w = batch.shape
    draws = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    size = h * w * (area[0] + (area[1] - area[0]) * draws[:, 1])
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * draws[:, 2])
    height = (size * aspect).sqrt().round().clamp(1, h)
    width = (size / aspect).sqrt().round().clamp(1, w)
    top = (draws[:, 3] * (h - height + 1)).floor()
    left = (draws[:, 4] * (w - width + 1)).floor()
    rows, cols = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    inside_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
    mask = (draws[:, 0] < p)[:, None, None] & inside_rows[:, :, None] & inside_cols[:, None, :]
    noise = torch.randint(0, 256, batch.shape, generator=generator, dtype=torch.uint8)
    return torch.where(mask[:, None].to(batch.device), noise.to(batch.device, batch.dtype), batch)
