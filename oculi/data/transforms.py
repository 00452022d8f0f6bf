"""The one preprocessing definition (stored in every bundle) and the training augmentation.

Preprocessing is split in two so that it runs where it is cheapest:
- ``prepare``: per image, on the CPU, once: channel conversion and resize to the model's input size,
  kept as uint8 (4x smaller than float; this is what gets cached).
- ``normalize``: per batch, on the training device: uint8 -> float, minus mean, over std.
Training, evaluation and prediction all call these same two functions, so a file predicted alone
gets exactly the probabilities it gets during evaluation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

RESIZE_MODES = ("squash", "pad", "crop")


@dataclass(frozen=True)
class Preprocessing:
    image_size: tuple[int, int]  # (height, width)
    channels: int
    resize: str = "squash"  # squash: ignore aspect | pad: letterbox | crop: centre crop
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(image_size=tuple(d["image_size"]), channels=int(d["channels"]), resize=d["resize"],
                   mean=tuple(d["mean"]), std=tuple(d["std"]))

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 [C, H, W] (already ``channels`` channels) -> uint8 [C, *image_size]."""
        return resize_image(image, self.image_size, self.resize)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> float32 normalised, on the batch's device."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1) * 255
        return (batch.float() - mean) / std


def resize_image(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize uint8 [C, H, W] to ``size`` by squashing, letterboxing (pad) or centre-cropping."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image
    if mode == "squash":
        return TF.resize(image, list(size), antialias=True)
    # pad fits the whole image inside; crop fills the whole target and cuts the overflow.
    scale = (min if mode == "pad" else max)(size[0] / h, size[1] / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    image = TF.resize(image, [new_h, new_w], antialias=True)
    if mode == "crop":
        return TF.center_crop(image, list(size))
    top, left = (size[0] - new_h) // 2, (size[1] - new_w) // 2
    # Zero padding, as tf.image.resize_with_pad does.
    return F.pad(image, (left, size[1] - new_w - left, top, size[0] - new_h - top))


def channel_stats(images: torch.Tensor, max_images: int = 10_000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, from up to ``max_images`` images (for models trained
    from scratch; pretrained backbones bring their own statistics)."""
    sample = images[:: max(1, len(images) // max_images)].float() / 255
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


# ---- augmentation (batched, on the training device) ---------------------------------------------

@dataclass(frozen=True)
class Augmentation:
    flip: bool = True  # random horizontal flip (off for digits: a mirrored 3 is not a 3)
    translate: float = 0.125  # random shift, as a fraction of the image side, with reflect padding

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.flip:
            batch = random_flip(batch, generator)
        if self.translate > 0:
            batch = random_translate(batch, self.translate, generator)
        return batch


def _uniform(n: int, generator: torch.Generator, device) -> torch.Tensor:
    # Random numbers come from a CPU generator so that a run is the same on every device.
    return torch.rand(n, generator=generator).to(device)


def random_flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = _uniform(len(batch), generator, batch.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)


def random_translate(batch: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``fraction`` of its size, filling with the reflected border."""
    n, _, h, w = batch.shape
    pad_h, pad_w = int(round(h * fraction)), int(round(w * fraction))
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
