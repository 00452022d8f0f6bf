"""A trained classifier loaded from its bundle: ``oculi.load(run_dir).predict(images)``."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .bundle import load_bundle
from .data.decode import IMAGE_EXTENSIONS, convert_channels, decode_image, is_hidden
from .data.transforms import Preprocessing
from .errors import ImageDecodeError, OculiError
from .inference import place_model, predict_probs, resolve_device


@dataclass
class Prediction:
    source: str
    label: str
    confidence: float
    top_k: list[tuple[str, float]]

    def to_dict(self) -> dict:
        return {"source": self.source, "label": self.label, "confidence": self.confidence,
                "top_k": [{"label": c, "probability": p} for c, p in self.top_k]}


class Classifier:
    """The model with its classes and preprocessing; predicts on files, PIL images, arrays or tensors."""

    def __init__(self, model: torch.nn.Module, meta: dict, device: str = "auto"):
        self.device = resolve_device(device)
        self.model = place_model(model, self.device).eval()
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.head: str = meta["model"]["head"]

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Classifier":
        model, meta = load_bundle(path)
        return cls(model, meta, device)

    def prepare(self, image) -> torch.Tensor:
        """Any supported image -> the model's uint8 input [C, H, W], by the bundle's preprocessing."""
        return self.preprocessing.prepare(to_uint8_chw(image, self.preprocessing.channels))

    def predict_proba(self, images, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, classes] for a list of images (or one image)."""
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        batch = torch.stack([self.prepare(im) for im in images])
        return predict_probs(self.model, batch, self.preprocessing, self.head, self.device, batch_size).numpy()

    def predict(self, images, top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
        """Top-k predictions for each image (k is capped at the number of classes)."""
        images = images if isinstance(images, (list, tuple)) else [images]
        probs = self.predict_proba(images, batch_size)
        return [self._prediction(_describe(im), row, top_k) for im, row in zip(images, probs)]

    def predict_files(self, paths: Iterable[str | Path], top_k: int = 5, batch_size: int = 64,
                      failures: list | None = None) -> Iterator[Prediction]:
        """Predict files in batches as they are read; unreadable files go to ``failures``, not fatal."""
        batch, names = [], []
        for path in paths:
            try:
                batch.append(self.prepare(Path(path)))
                names.append(str(path))
            except ImageDecodeError as err:
                if failures is not None:
                    failures.append((str(path), err.reason))
            if len(batch) == batch_size:
                yield from self._predict_batch(batch, names, top_k)
                batch, names = [], []
        if batch:
            yield from self._predict_batch(batch, names, top_k)

    def _predict_batch(self, batch, names, top_k) -> Iterator[Prediction]:
        probs = predict_probs(self.model, torch.stack(batch), self.preprocessing, self.head, self.device).numpy()
        for name, row in zip(names, probs):
            yield self._prediction(name, row, top_k)

    def _prediction(self, source: str, row: np.ndarray, top_k: int) -> Prediction:
        order = np.argsort(-row, kind="stable")[: max(1, min(top_k, len(self.classes)))]
        return Prediction(source, self.classes[order[0]], float(row[order[0]]),
                          [(self.classes[i], float(row[i])) for i in order])


def to_uint8_chw(image, channels: int) -> torch.Tensor:
    """Path, PIL image, HxW / HxWxC uint8 array, or uint8 [C, H, W] tensor -> uint8 [channels, H, W]."""
    if isinstance(image, (str, Path)):
        return decode_image(image, channels=channels)
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        image = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise OculiError(f"arrays must be uint8 images, got {image.dtype}")
        # np.array copies: the caller's array stays untouched and the tensor owns writable memory.
        image = torch.from_numpy(np.array(image[..., None] if image.ndim == 2 else image)).permute(2, 0, 1)
    if not torch.is_tensor(image) or image.dtype != torch.uint8 or image.ndim != 3:
        raise OculiError("images must be file paths, PIL images, uint8 arrays or uint8 [C, H, W] tensors")
    return convert_channels(image[:3], channels)


def _describe(image) -> str:
    return str(image) if isinstance(image, (str, Path)) else type(image).__name__


def expand_paths(items: Iterable[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (recursively, image files only) and glob patterns -> (image paths, not found)."""
    found, missing = [], []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and not is_hidden(p)
                            and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True)) if any(ch in item for ch in "*?[") else []
            found += [Path(m) for m in matches if Path(m).is_file()]
            if not matches:
                missing.append(item)
    return found, missing
