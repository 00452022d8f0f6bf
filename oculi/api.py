"""The Python API: thin functions over the same code the CLI runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import SETTINGS, TrainConfig
from .console import Reporter
from .deploy.predict import Classifier
from .report.build import write_report
from .train.distributed import world
from .train.run import RunResult, resume as _resume, train as _train


def train(data: str = "digits", resume: str | Path | None = None, **options) -> RunResult:
    """Train a classifier on a folder or built-in dataset; options are ``TrainConfig`` fields.

    >>> run = oculi.train("path/to/insects", epochs=5)
    >>> run.test_metrics["accuracy"], run.run_dir
    """
    if resume is not None:
        return resume_and_report(resume)
    return train_and_report(TrainConfig(data=str(data), **_parsed(options)))


def _parsed(options: dict) -> dict:
    """``options`` with each value given as the CLI takes it ("2m", "160x120"; an image size also as an int)
    parsed as the CLI parses it."""
    parsed = dict(options)
    for name, value in options.items():
        parse = getattr(SETTINGS.get(name), "parse", None)
        if parse is not None and (isinstance(value, str) or (name == "image_size" and type(value) is int)):
            parsed[name] = parse(value)
    return parsed
