"""The one preprocessing definition, stored in every bundle.

It runs in two halves, each where it is cheapest:
- ``prepare``: per image, on the CPU, once: channel conversion and resize to the model's input size,
  kept as uint8 (4x smaller than float; this is what gets cached).
- ``normalize``: per batch, on the training device: uint8 -> float, minus mean, over std.
Training, evaluation and prediction all call these same two functions, so a file predicted alone
gets exactly the probabilities it gets during evaluation. Both take torch tensors and import torch when
called; the definition itself does not, so that a torch-free prediction (``oculi.data.pixels``, an
exported graph) reads the same settings from the same class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preprocessing:
    image_size: tuple[int, int]  # (height, width)
    channels: int
    resize: str = "squash"  # squash: ignore aspect | pad: letterbox | crop: centre crop
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    tta: str = "none"  # test-time views averaged: none | flip (and the mirror) | flip-shift (runtime.engines.tta_logits)
    filter: str | None = None  # an image filter applied after resizing (oculi.data.filters): edges, blur...

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(image_size=tuple(d["image_size"]), channels=int(d["channels"]), resize=d["resize"],
                   mean=tuple(d["mean"]), std=tuple(d["std"]), tta=d.get("tta") or _legacy_tta(d),
                   filter=d.get("filter"))

    def prepare(self, image):
        """uint8 [C, H, W] tensor (already ``channels`` channels) -> uint8 [C, *image_size], filtered if asked."""
        from .filters import FILTERS
        from .transforms import resize_image
        image = resize_image(image, self.image_size, self.resize)
        if self.filter is None:
            return image
        filtered = FILTERS[self.filter](image)
        return filtered.expand(image.shape[0], -1, -1).contiguous()  # edges give one channel

    def pixel_settings(self) -> dict:
        """What ``prepare`` depends on: the key of its cached output (normalisation and TTA come later)."""
        return {"image_size": list(self.image_size), "channels": self.channels, "resize": self.resize,
                "filter": self.filter}

    def normalize(self, batch):
        """uint8 [N, C, H, W] tensor -> float32 normalised, on the batch's device."""
        import torch
        mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1) * 255
        std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1) * 255
        return (batch.float() - mean) / std


def _legacy_tta(d: dict) -> str:
    """Bundles from before --tta flip-shift stored a flag, ``flip_tta``."""
    return "flip" if d.get("flip_tta") else "none"
