"""The Python API: thin functions over the same code the CLI runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import SETTINGS, TrainConfig
from .console import Reporter
from .data.cache import cache_root
from .data.table import frame_as_table, is_data_frame
from .deploy.predict import Classifier
from .report.build import write_report
from .runtime.world import world
from .training.run import RunResult, resume as _resume, train as _train


def train(data="digits", resume: str | Path | None = None, **options) -> RunResult:
    """Train a classifier on a folder, a table of labels (a .csv/.tsv file, or a pandas DataFrame with
    ``images=`` the folder its paths are relative to; default: the working folder) or a built-in dataset;
    options are ``TrainConfig`` fields.

    >>> run = oculi.train("path/to/insects", epochs=5)
    >>> run.test_metrics["accuracy"], run.run_dir
    """
    if resume is not None:
        return resume_and_report(resume)
    if is_data_frame(data):  # saved as a CSV the run's config.json can name
        data = frame_as_table(data, cache_root() / "tables")
        options.setdefault("images", str(Path.cwd()))
    return train_and_report(TrainConfig(data=str(data), **_parsed(options)))


def _parsed(options: dict) -> dict:
    """``options`` with every value of a setting that has a ``parse`` function parsed as the CLI parses it:
    "2m", "160x120" and "160" as the flags take them (a value given as the setting's own type is kept)."""
    return {name: SETTINGS[name].parse(value) if name in SETTINGS and SETTINGS[name].parse else value
            for name, value in options.items()}


def check(data: str, labels: bool = False, out: str | Path | None = None, reporter: Reporter | None = None,
          device: str = "auto", **table):
    """``oculi check``: duplicates, leaks, a profile of the data and (``labels``) likely label errors, written
    to ``out`` (default checks/<data>/). Returns the ``CheckResult`` and the folder. ``table``: a table of
    labels' ``images``, ``path_column``, ``label_column``, ``split_column``, as ``train`` takes them."""
    from .check.run import run_check
    from .training.transfer import plan_features
    return run_check(data, labels, out, reporter or Reporter(), plan_features, device, table)


def load(path: str | Path, device: str = "auto") -> Classifier:
    """Load a trained classifier from a run folder (or its model.json)."""
    return Classifier.load(path, device=device)


def train_and_report(cfg: TrainConfig, reporter: Reporter | None = None) -> RunResult:
    """A new run from ``cfg``, then its report.html (unless ``cfg.report`` is off)."""
    reporter = reporter or Reporter(quiet=not cfg.progress)
    return _reported(_train(cfg, reporter), reporter)


def resume_and_report(run_dir: str | Path, reporter: Reporter | None = None) -> RunResult:
    """An interrupted run finished from its checkpoint, then its report.html (as its config says)."""
    run = _resume(run_dir, reporter)
    return _reported(run, reporter or Reporter(quiet=not run.config.progress))


def _reported(run: RunResult, reporter: Reporter) -> RunResult:
    """``run``, its report.html written (by rank 0 of several processes) when its config asks for one."""
    if run.config.report and world().main:
        _write_report(run, reporter)
        _write_card(run, reporter)
    # The report was the last reader of the run's data: its images need not live as long as the result.
    return dataclasses.replace(run, source=None)


def _write_card(run: RunResult, reporter: Reporter) -> None:
    """README.md, the model card; like the report, a card that fails is a warning, never a lost run."""
    from .report.card import write_card
    if run.test_metrics is None:
        return
    try:
        reporter.info(f"[bold]card[/bold]   {write_card(run.run_dir)}")
    except Exception as err:  # noqa: BLE001 - the trained model must not be lost to its card
        reporter.warn(f"README.md (the model card) could not be written ({type(err).__name__}: {err}); "
                      f"`oculi card {run.run_dir}` tries again")


def _write_report(run: RunResult, reporter: Reporter) -> None:
    """report.html; the model is saved by now, so a report that fails is a warning, never a lost run."""
    if run.test_metrics is None:
        reporter.info("report.html skipped: there are no held-out images to report on")
        return
    try:
        path = write_report(run.run_dir, run.source, reporter)
    except Exception as err:  # noqa: BLE001 - whatever went wrong, the trained model must not be lost
        reporter.warn(f"report.html could not be written ({type(err).__name__}: {err}); "
                      f"`oculi report {run.run_dir}` tries again")
        return
    reporter.info(f"[bold]report[/bold] {path}")
