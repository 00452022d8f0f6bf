"""What every engine's classifier answers with, torch or not: ``Prediction``, the ranking of one row of
probabilities (top-k, the abstain threshold), predicting files in batches as worker processes read them,
and the files a command line names. ``deploy.predict.Classifier`` (torch) and ``deploy.lite.ExportClassifier``
(ONNX Runtime, no torch) both build on ``Answering``."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..calibration import UNKNOWN, Calibration
from ..data.contained import prepare_files
from ..data.pixels import IMAGE_EXTENSIONS, is_hidden
from ..data.preprocessing import Preprocessing
from ..data.split import LABEL_SEP
from ..data.unreadable import Unreadable
from ..runtime.bundle import bundle_thresholds


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
    labels: list[str] | None = None  # a multi-label model's answer: every class over its threshold

    def to_dict(self) -> dict:
        return {"source": self.source, "label": self.label, "confidence": self.confidence,
                "top_label": self.top_label, "ood_score": self.ood_score,
                "top_k": [{"label": c, "probability": p} for c, p in self.top_k],
                **({} if self.labels is None else {"labels": self.labels})}


class Answering:
    """A bundle's classes, preprocessing and calibration, and the answers made from probabilities; a subclass
    gives ``prepared_outputs`` (the engine) and ``engine`` / ``engine_note`` (which one, in words)."""

    torch_free = False  # whether its files are read without torch (``prepare_files``' torch_free)

    def __init__(self, meta: dict, calibration: Calibration):
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.head: str = meta["model"]["head"]
        self.calibration = calibration
        self.thresholds = bundle_thresholds(meta)  # a multi-label model's, one a class; else None
        # Below this confidence the answer is "unknown": the bundle's threshold unless the caller sets another.
        self.min_confidence: float | None = calibration.abstain_threshold
        self.engine = "torch"
        self.engine_note = ""  # why this engine, when it is not the one asked for or the fast one

    def prepared_outputs(self, batch, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
        """(calibrated probabilities [N, classes], OOD scores [N] or None) of prepared uint8 images."""
        raise NotImplementedError

    def stacked(self, images: list[np.ndarray]):
        """Prepared images as the batch ``prepared_outputs`` takes."""
        return np.stack(images)

    def predict_files(self, paths: Iterable[str | Path], top_k: int = 5, batch_size: int = 64,
                      failures: list | None = None, draft: bool = True) -> Iterator[Prediction]:
        """Predict files in batches as they are read; unreadable files go to ``failures`` as (path, reason),
        not fatal. They are read in worker processes, a few chunks ahead of the model: a file that crashes its
        decoder is a failure too ("decoder crashed"). ``draft``: JPEGs of at least twice the model's input size
        are decoded at 1/2-1/8 scale before the resize (faster; as training decoded them); False: at full size."""
        paths = [Path(p) for p in paths]
        batch, names = [], []
        prepared = prepare_files(paths, self.preprocessing, draft=draft, torch_free=self.torch_free)
        for path, image in zip(paths, prepared):
            if isinstance(image, Unreadable):
                if failures is not None:
                    failures.append((str(path), image.reason))
            else:
                batch.append(image)
                names.append(str(path))
            if len(batch) == batch_size:
                yield from self.predict_prepared(batch, names, top_k)
                batch, names = [], []
        if batch:
            yield from self.predict_prepared(batch, names, top_k)

    def predict_prepared(self, batch: list, names: list[str], top_k: int) -> Iterator[Prediction]:
        """The predictions of images already prepared (uint8 [C, H, W] each, as ``prepare`` gives them), named
        ``names``: how image files and video frames alike end."""
        probs, ood = self.prepared_outputs(self.stacked(batch))
        for i, (name, row) in enumerate(zip(names, probs)):
            yield self.prediction(name, row, top_k, score_at(ood, i))

    def prediction(self, source: str, row: np.ndarray, top_k: int, ood_score: float | None = None) -> Prediction:
        """The top-k classes of one row of probabilities (k capped at the number of classes); the label is
        "unknown" when the top probability is below ``min_confidence``."""
        order = np.argsort(-row, kind="stable")[: max(1, min(top_k, len(self.classes)))]
        top, confidence = self.classes[order[0]], float(row[order[0]])
        if self.thresholds is not None:
            return self._label_set(source, row, order, ood_score)
        answered = self.min_confidence is None or confidence >= self.min_confidence
        return Prediction(source, top if answered else UNKNOWN, confidence,
                          [(self.classes[i], float(row[i])) for i in order], top, ood_score)


    def _label_set(self, source: str, row: np.ndarray, order: np.ndarray, ood_score) -> Prediction:
        """A multi-label answer: every class whose probability reaches its threshold (``label``: their names
        joined by ';', "unknown" when there is none); ``confidence`` is the top class's probability."""
        labels = [c for c, p, t in zip(self.classes, row, self.thresholds) if p >= t]
        return Prediction(source, LABEL_SEP.join(labels) if labels else UNKNOWN, float(row[order[0]]),
                          [(self.classes[i], float(row[i])) for i in order], self.classes[order[0]], ood_score,
                          labels)


def score_at(scores: np.ndarray | None, i: int) -> float | None:
    return None if scores is None else float(scores[i])


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
