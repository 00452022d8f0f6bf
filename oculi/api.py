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
    """Load a trained classifier from a run folder (or its model.json), or from the Hugging Face Hub:
    ``hf://owner/name[@revision]`` (downloaded into the HF cache, then verified like any folder)."""
    from .deploy.hub import resolve_run
    return Classifier.load(resolve_run(path), device=device)


def push(run: str | Path, to: str, private: bool = False, token: str | None = None, message: str | None = None,
         api=None) -> tuple[str, list[str]]:
    """Upload a finished run to the Hugging Face Hub (``to``: hf://owner/name): its bundle, once verified, the
    model card (written first when missing), the exports, test_metrics.json and the figures. (commit URL, files).
    ``api``: an ``HfApi``-like object (default: huggingface_hub's)."""
    from .deploy.hub import files_to_push, parse_address, push_files
    from .rundir import RunDir
    from .runtime.bundle import verified_meta
    parse_address(to)  # a bad address before anything is read or written
    files = files_to_push(run)
    verified_meta(run)  # a changed bundle is refused here rather than by everyone who downloads it
    folder = RunDir(Path(run))
    if not folder.card.is_file() and folder.test_metrics.is_file():
        from .report.card import write_card
        write_card(run)
        files = files_to_push(run)
    return push_files(run, files, to, private=private, token=token, message=message, api=api), files


def train_and_report(cfg: TrainConfig, reporter: Reporter | None = None) -> RunResult:
    """A new run from ``cfg``, then its report.html (unless ``cfg.report`` is off)."""
    reporter = reporter or Reporter(quiet=not cfg.progress)
    return _reported(_train(cfg, reporter), reporter)


def resume_and_report(run_dir: str | Path, reporter: Reporter | None = None) -> RunResult:
    """An interrupted run finished from its checkpoint, then its report.html (as its config says)."""
    run = _resume(run_dir, reporter)
    return _reported(run, reporter or Reporter(quiet=not run.config.progress))


def _reported(run: RunResult, reporter: Reporter) -> RunResult:
    """``run``, its model.onnx (as its config's ``export`` says), report.html and model card written (by rank 0
    of several processes) when its config asks for them. The export comes first: the card lists it."""
    if world().main and _exports(run):
        _write_export(run, reporter)
    if run.config.report and world().main:
        _write_report(run, reporter)
        _write_card(run, reporter)
    # The report was the last reader of the run's data: its images need not live as long as the result.
    return dataclasses.replace(run, source=None)


# The most test images the export's parity gate runs (both the bundle and the graph): enough for its 99.9 %
# agreement to mean something, few enough that a photo run does not wait long for it.
EXPORT_CHECK_IMAGES = 256


def _exports(run: RunResult) -> bool:
    """Whether the run gets model.onnx: ``--export onnx``, or auto and the run trained on the CPU (where
    ONNX Runtime predicts 2-3x faster than torch, and without importing it)."""
    from .runtime.engines import resolve_device
    setting = run.config.export
    return setting == "onnx" or (setting == "auto" and resolve_device(run.config.device).type == "cpu")


def _write_export(run: RunResult, reporter: Reporter) -> Path | None:
    """model.onnx and model.onnx.json beside the bundle, written only once the graph agrees with the bundle on
    up to ``EXPORT_CHECK_IMAGES`` of the run's test images (deploy.export's parity gate; a refusal leaves
    export_refused.json and nothing else). Like the report, an export that fails is a warning, never a lost run:
    predict then runs torch."""
    from .deploy.export import ParityError, clear_refusal, describe_parity, export_classifier, save_refusal
    from .evaluate import labelled_check_images
    try:
        classifier = Classifier.load(run.run_dir, device="cpu")  # the reference in float32, as the export computes
        if classifier.preprocessing.filter is not None:
            reporter.info(f"model.onnx skipped: the bundle filters its images ({classifier.preprocessing.filter}), "
                          f"which the graph cannot; predict runs torch")
            return None
        images, labels, source = labelled_check_images(classifier, run.run_dir, None, EXPORT_CHECK_IMAGES)
        meta = export_classifier(classifier, images, "onnx", run.run_dir, source, "fp32", labels)
    except ParityError as err:
        reporter.warn(f"{err} (figures in {save_refusal(run.run_dir, err)}); predict runs torch")
        return None
    except Exception as err:  # noqa: BLE001 - the trained model must not be lost to its export
        reporter.warn(f"model.onnx could not be written ({type(err).__name__}: {err}); predict runs torch; "
                      f"`oculi export {run.run_dir}` tries again")
        return None
    clear_refusal(run.run_dir, meta["file"])
    path = Path(run.run_dir) / meta["file"]
    reporter.info(f"[bold]export[/bold] {path}: {describe_parity(meta['parity'])}; `oculi predict` runs it on "
                  f"ONNX Runtime")
    return path


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
