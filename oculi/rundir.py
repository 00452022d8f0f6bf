"""A run folder: the one place that names its files, writes the ones written more than once, and reads them back.

The files, in the order a run writes them (who writes each):

- ``.oculi-run.lock``         held by the run for its whole life (training.run)
- ``skipped_files.csv``       images that could not be read, and why (training.run)
- ``check.json``              the data check of the run's start: duplicates, leaks, warnings (check.run)
- ``split.csv``               which image went to train/val/test (training.run, via data.split)
- ``config.json``             the resolved settings, for ``--resume`` and the report (training.run)
- ``metrics.jsonl``           one row per epoch, rewritten after each (training.run, through ``RunDir``)
- ``checkpoint.safetensors``  what ``--resume`` needs, rewritten after each epoch (training.run, via
                              training.checkpoint)
- ``test_metrics.json``       scores of the kept model on the test (or val) split (training.finish)
- ``test_predictions.csv``    its prediction for each of those images (training.finish)
- ``confusion_matrix.png``    their confusion matrix (training.finish; ``oculi evaluate`` names its own the same)
- ``curves.png``              loss and accuracy per epoch (training.finish)
- ``pr_curves.png``, ``co_occurrence.png``  a multi-label run's precision-recall per class and label pairs
  (training.label_sets), in place of the confusion matrix
- ``model.safetensors``       the kept weights (runtime.bundle, called by training.finish)
- ``model.json``              what vouches for the weights; last, so a folder that has it is a finished run
                              (runtime.bundle)
- ``report.html``             written after the run by its caller (api), and again by ``oculi report`` (report.build)
- ``README.md``               the model card, after report.html (api), and again by ``oculi card`` (report.card)
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import OculiError
from .io import atomic_write_text


LABEL_SET_FILES = ("pr_curves", "co_occurrence")  # the RunDir files only a multi-label run writes


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def lock(self) -> Path:
        return self.path / ".oculi-run.lock"

    @property
    def skipped(self) -> Path:
        return self.path / "skipped_files.csv"

    @property
    def split(self) -> Path:
        return self.path / "split.csv"

    @property
    def check(self) -> Path:
        return self.path / "check.json"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_log(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.safetensors"

    @property
    def test_metrics(self) -> Path:
        return self.path / "test_metrics.json"

    @property
    def test_predictions(self) -> Path:
        return self.path / "test_predictions.csv"

    @property
    def confusion(self) -> Path:
        return self.path / "confusion_matrix.png"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def pr_curves(self) -> Path:  # of a multi-label run only, as co_occurrence (LABEL_SET_FILES)
        return self.path / "pr_curves.png"

    @property
    def co_occurrence(self) -> Path:
        return self.path / "co_occurrence.png"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def model_json(self) -> Path:
        return self.path / "model.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def card(self) -> Path:
        return self.path / "README.md"

    # ------------------------------------------------------------ reading back

    def read_text(self, file: Path) -> str:
        """One of this run's files, or a one-line OculiError saying the run lacks it."""
        if not file.is_file():
            raise OculiError(f"{self.path}: the run has no {file.name}")
        # surrogateescape: file names that are not UTF-8 come back as the io helpers wrote them.
        return file.read_text(encoding="utf-8", errors="surrogateescape")

    def read_json(self, file: Path):
        return json.loads(self.read_text(file))

    def read_csv(self, file: Path) -> list[dict]:
        return list(csv.DictReader(self.read_text(file).splitlines()))

    def read_config(self) -> dict:
        """config.json parsed, known to hold a ``"config"`` object; else a one-line OculiError naming it."""
        try:
            saved = self.read_json(self.config)
        except json.JSONDecodeError as err:
            raise OculiError(f"{self.config} is not valid JSON ({err})") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise OculiError(f"{self.config} is not an oculi run config (no \"config\" object)")
        return saved

    def read_metrics_log(self) -> list[dict]:
        return [json.loads(line) for line in self.read_text(self.metrics_log).splitlines() if line.strip()]

    # ------------------------------------------------------------ writing

    def write_metrics_log(self, rows: list[dict]) -> None:
        """metrics.jsonl, whole: it is rewritten after every epoch, so a killed run leaves a complete one."""
        atomic_write_text(self.metrics_log, "".join(json.dumps(row) + "\n" for row in rows))
