"""The Python API: thin functions over the same code the CLI runs."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig, parse_image_size
from .predict import Classifier
from .train.run import RunResult, resume as _resume, train as _train


def train(data: str = "digits", resume: str | Path | None = None, **options) -> RunResult:
    """Train a classifier on a folder or built-in dataset; options are ``TrainConfig`` fields.

    >>> run = oculi.train("path/to/insects", epochs=5)
    >>> run.test_metrics["accuracy"], run.run_dir
    """
    if resume is not None:
        return _resume(resume)
    if isinstance(options.get("image_size"), (str, int)):
        options["image_size"] = parse_image_size(options["image_size"])
    return _train(TrainConfig(data=str(data), **options))


def load(path: str | Path, device: str = "auto") -> Classifier:
    """Load a trained classifier from a run folder (or its model.json)."""
    return Classifier.load(path, device=device)
