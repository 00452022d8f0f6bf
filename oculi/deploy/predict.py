"""A trained classifier loaded from its bundle: ``oculi.load(run_dir).predict(images)``."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..calibration import UNKNOWN, class_logits, energy_score, softmax
from ..data.decode import IMAGE_EXTENSIONS, convert_channels, decode_image, is_hidden
from ..data.contained import prepare_files
from ..data.transforms import Preprocessing
from ..data.unreadable import Unreadable
from ..errors import OculiError
from ..runtime.bundle import bundle_calibration, bundle_paths, load_bundle
from ..runtime.engines import place_model, predict_logits, resolve_device


# --engine's choices and the precision of the export each runs (auto: fp32 when there is one, else torch).
ENGINES = {"auto": "fp32", "torch": None, "onnx": "fp32", "onnx-int8": "int8", "onnx-fp16": "fp16"}


@dataclass
class Prediction:
    """One image's answer: ``label`` is the top class, or "unknown" when its (calibrated) ``confidence`` is
    below the classifier's ``min_confidence``; ``top_label`` is the top class either way. ``ood_score``:
    the energy score (oculi.calibration; higher = less like the training images); None only from a file
    exported before exported graphs gave it."""

    source: str
    label: str
    confidence: float
    top_k: list[tuple[str, float]]
    top_label: str = ""
    ood_score: float | None = None

    def to_dict(self) -> dict:
        return {"source": self.source, "label": self.label, "confidence": self.confidence,
                "top_label": self.top_label, "ood_score": self.ood_score,
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
        self.calibration = bundle_calibration(meta)
        # Below this confidence the answer is "unknown": the bundle's threshold unless the caller sets another.
        self.min_confidence: float | None = self.calibration.abstain_threshold
        self.runner = None  # an exported graph that ``prepared_probs`` runs instead of the model
        self.engine = "torch"

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", engine: str = "torch") -> "Classifier":
        """The bundle at ``path``, run by ``engine`` (one of ``ENGINES``): torch; onnx, onnx-int8, onnx-fp16
        (the run's model.onnx, model.int8.onnx, model.fp16.onnx from `oculi export`, which must come from
        this very bundle); auto: model.onnx when there is one and the device is the CPU, else torch.
        ``predict``, ``evaluate`` and ``serve`` all choose their engine here."""
        model, meta = load_bundle(path)
        classifier = cls(model, meta, device)
        classifier.use_engine(engine, bundle_paths(path)[0].parent)
        return classifier

    def use_engine(self, engine: str, folder: Path) -> None:
        """Run predictions through an export in ``folder`` as ``engine`` asks (see ``load``)."""
        from ..runtime.onnx import OnnxRunner
        from .export import find_export
        if engine not in ENGINES:
            raise OculiError(f"--engine: unknown engine '{engine}' (use {', '.join(ENGINES)})")
        if engine == "torch" or (engine == "auto" and self.device.type != "cpu"):
            return
        file, why_not = find_export(folder, self.meta, "onnx", ENGINES[engine])
        if file is None:
            if engine != "auto":
                raise OculiError(f"--engine {engine}: {why_not}")
            return
        # ONNX Runtime's CPU session, whatever --device says: the export was checked there.
        # No spinning threads: predict's decoding workers and serve's batcher share the cores with it.
        self.runner = OnnxRunner(file.read_bytes(), spin=False)
        self.engine = "onnx" if engine == "auto" else engine

    def prepare(self, image) -> torch.Tensor:
        """Any supported image -> the model's uint8 input [C, H, W], by the bundle's preprocessing (a large JPEG
        file decoded drafted, as training decoded its files)."""
        pre = self.preprocessing
        return pre.prepare(to_uint8_chw(image, pre.channels, at_least=pre.image_size))

    def predict_proba(self, images, batch_size: int = 64) -> np.ndarray:
        """Class probabilities [N, classes] for a list of images (or one image)."""
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.prepared_probs(torch.stack([self.prepare(im) for im in images]), batch_size)

    def prepared_probs(self, batch: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Calibrated class probabilities [N, classes] of images already prepared (uint8 [N, C, H, W], as
        ``prepare`` gives them): the step that needs the model, apart from reading the images."""
        return self.prepared_outputs(batch, batch_size)[0]

    def prepared_outputs(self, batch: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
        """(calibrated probabilities [N, classes], OOD scores [N]) of prepared images. An exported graph
        applies the temperature itself and gives both (one exported before graphs gave the OOD score: None)."""
        if self.runner is not None:
            from .export import run_batches
            return run_batches(self.runner, batch, batch_size)
        logits = class_logits(predict_logits(self.model, batch, self.preprocessing, self.device, batch_size).numpy(),
                              self.head)
        # Energy at T = 1, as Liu et al. define it: the temperature only sharpens or softens every row alike.
        return softmax(logits, self.calibration.temperature).astype(np.float32), energy_score(logits)

    def predict(self, images, top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
        """Top-k predictions for each image (k is capped at the number of classes)."""
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            return []
        probs, ood = self.prepared_outputs(torch.stack([self.prepare(im) for im in images]), batch_size)
        return [self.prediction(_describe(im), row, top_k, _at(ood, i)) for i, (im, row) in enumerate(zip(images, probs))]

    def predict_files(self, paths: Iterable[str | Path], top_k: int = 5, batch_size: int = 64,
                      failures: list | None = None, draft: bool = True) -> Iterator[Prediction]:
        """Predict files in batches as they are read; unreadable files go to ``failures`` as (path, reason),
        not fatal. They are read in worker processes, a few chunks ahead of the model: a file that crashes its
        decoder is a failure too ("decoder crashed"). ``draft``: JPEGs of at least twice the model's input size
        are decoded at 1/2-1/8 scale before the resize (faster; as training decoded them); False: at full size."""
        paths = [Path(p) for p in paths]
        batch, names = [], []
        for path, image in zip(paths, prepare_files(paths, self.preprocessing, draft=draft)):
            if isinstance(image, Unreadable):
                if failures is not None:
                    failures.append((str(path), image.reason))
            else:
                batch.append(torch.from_numpy(image))
                names.append(str(path))
            if len(batch) == batch_size:
                yield from self.predict_prepared(batch, names, top_k)
                batch, names = [], []
        if batch:
            yield from self.predict_prepared(batch, names, top_k)

    def predict_prepared(self, batch: list[torch.Tensor], names: list[str], top_k: int) -> Iterator[Prediction]:
        """The predictions of images already prepared (uint8 [C, H, W] each, as ``prepare`` gives them), named
        ``names``: how image files and video frames alike end."""
        probs, ood = self.prepared_outputs(torch.stack(batch))
        for i, (name, row) in enumerate(zip(names, probs)):
            yield self.prediction(name, row, top_k, _at(ood, i))

    def prediction(self, source: str, row: np.ndarray, top_k: int, ood_score: float | None = None) -> Prediction:
        """The top-k classes of one row of probabilities (k capped at the number of classes); the label is
        "unknown" when the top probability is below ``min_confidence``."""
        order = np.argsort(-row, kind="stable")[: max(1, min(top_k, len(self.classes)))]
        top, confidence = self.classes[order[0]], float(row[order[0]])
        answered = self.min_confidence is None or confidence >= self.min_confidence
        return Prediction(source, top if answered else UNKNOWN, confidence,
                          [(self.classes[i], float(row[i])) for i in order], top, ood_score)


def _at(scores: np.ndarray | None, i: int) -> float | None:
    return None if scores is None else float(scores[i])


def to_uint8_chw(image, channels: int, at_least: tuple[int, int] | None = None) -> torch.Tensor:
    """Path, PIL image, HxW / HxWxC uint8 array, or uint8 [C, H, W] tensor -> uint8 [channels, H, W].
    ``at_least``: a JPEG file of at least twice that size is decoded at reduced scale (``decode_image``)."""
    if isinstance(image, (str, Path)):
        return decode_image(image, channels=channels, at_least=at_least)
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
    """Files, folders (recursively, image files only) and glob patterns -> (image paths, not found).

    A file named twice (a path and a glob, ./a.png and a.png) is listed once, as first spelled."""
    found, missing, seen = [], [], set()
    for item in items:
        files = _files_named(item)
        if files is None:
            missing.append(item)
        for path in files or ():
            key = path.resolve()  # one file, however it is spelled
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found, missing


def _files_named(item: str) -> list[Path] | None:
    """The files ``item`` names (a file, a folder's image files, a glob's files); None if nothing matches."""
    path = Path(item).expanduser()
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not is_hidden(p)
                      and p.suffix.lower() in IMAGE_EXTENSIONS)
    if path.is_file():
        return [path]
    matches = sorted(glob.glob(os.path.expanduser(item), recursive=True)) if any(ch in item for ch in "*?[") else []
    return [Path(m) for m in matches if Path(m).is_file()] if matches else None
