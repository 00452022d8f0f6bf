"""A trained classifier loaded from its bundle: ``oculi.load(run_dir).predict(images)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..calibration import class_logits, energy_score, softmax
from ..data.decode import convert_channels, decode_image
from ..errors import OculiError
from ..multilabel import sigmoid
from ..runtime.bundle import bundle_calibration, bundle_paths, load_bundle
from ..runtime.engines import place_model, predict_logits, resolve_device
from .answers import Answering, Prediction, expand_paths, score_at  # noqa: F401 (Prediction, expand_paths: imported from here)
from .exported import ENGINES, find_export


class Classifier(Answering):
    """The model with its classes and preprocessing; predicts on files, PIL images, arrays or tensors."""

    def __init__(self, model: torch.nn.Module, meta: dict, device: str = "auto"):
        super().__init__(meta, bundle_calibration(meta))
        self.device = resolve_device(device)
        self.model = place_model(model, self.device).eval()
        self.runner = None  # an exported graph that ``prepared_probs`` runs instead of the model

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", engine: str = "torch") -> "Classifier":
        """The bundle at ``path``, run by ``engine`` (one of ``ENGINES``): torch; onnx, onnx-int8, onnx-fp16,
        openvino (the run's model.onnx, model.int8.onnx, model.fp16.onnx, model.xml from `oculi export`, which
        must come from this very bundle); auto: model.onnx when there is one and the device is the CPU, else torch.
        ``predict``, ``evaluate`` and ``serve`` all choose their engine here."""
        model, meta = load_bundle(path)
        classifier = cls(model, meta, device)
        classifier.use_engine(engine, bundle_paths(path)[0].parent)
        return classifier

    def use_engine(self, engine: str, folder: Path) -> None:
        """Run predictions through an export in ``folder`` as ``engine`` asks (see ``load``); ``engine_note``
        says why auto stayed with torch."""
        from ..runtime.onnx import OnnxRunner
        if engine not in ENGINES:
            raise OculiError(f"--engine: unknown engine '{engine}' (use {', '.join(ENGINES)})")
        if engine == "torch":
            return
        if engine == "auto" and self.device.type != "cpu":
            self.engine_note = f"on {self.device.type}"
            return
        fmt, precision = ENGINES[engine]
        file, why_not = find_export(folder, self.meta, fmt, precision)
        if file is None:
            if engine != "auto":
                raise OculiError(f"--engine {engine}: {why_not}")
            self.engine_note = why_not
            return
        # The CPU runtime the export was checked with, whatever --device says.
        # No spinning threads: predict's decoding workers and serve's batcher share the cores with it.
        if fmt == "openvino":
            from .targets import OpenVinoSession
            self.runner = OpenVinoSession(file, spin=False)
        else:
            self.runner = OnnxRunner(file.read_bytes(), spin=False)
        self.engine = "onnx" if engine == "auto" else engine

    def stacked(self, images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(images))

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
            from .exported import run_batches
            return run_batches(self.runner, batch, batch_size)
        logits = class_logits(predict_logits(self.model, batch, self.preprocessing, self.device, batch_size).numpy(),
                              self.head)
        if self.head == "multilabel":  # independent classes: a sigmoid each (energy of the same logits)
            return sigmoid(logits, self.calibration.divisor).astype(np.float32), energy_score(logits)
        # Energy at T = 1, as Liu et al. define it: the temperature only sharpens or softens every row alike.
        return softmax(logits, self.calibration.temperature).astype(np.float32), energy_score(logits)

    def predict(self, images, top_k: int = 5, batch_size: int = 64) -> list[Prediction]:
        """Top-k predictions for each image (k is capped at the number of classes)."""
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            return []
        probs, ood = self.prepared_outputs(torch.stack([self.prepare(im) for im in images]), batch_size)
        return [self.prediction(_describe(im), row, top_k, score_at(ood, i)) for i, (im, row) in enumerate(zip(images, probs))]


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
