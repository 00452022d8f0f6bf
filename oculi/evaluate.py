"""Evaluating a trained classifier on labelled images: its metrics, confusion matrix and predictions written
to a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import OculiError
from .calibration import expected_calibration_error, selective_figures
from .metrics import classification_metrics
from .data.split import named_record
from .rundir import RunDir


def evaluate_folder(classifier, data: str | Path, top_k: int = 5, out: str | Path | None = None,
                    run_dir: str | Path | None = None, table: dict | None = None) -> tuple[dict, Path]:
    """Metrics of ``classifier`` on a labelled folder; writes metrics, confusion matrix and predictions.

    ``data`` is a folder of class folders, a split folder (its test/, else val/, is used), or a table of
    labels (its test rows, else val rows, else all; ``table``: its images folder and column names, as train
    takes them). The
    images go through the bundle's own preprocessing, exactly as ``predict`` does.
    """
    source, root = _labelled_folder(Path(data).expanduser(), classifier.classes, table or {},
                                    classifier.thresholds is not None)
    from .data.table import is_table, table_name

    given = Path(data).expanduser()
    name = table_name(given) if is_table(given) else given.resolve().name
    folder = Path(out) if out else Path(run_dir or ".") / f"evaluate-{name}"
    return _evaluate(classifier, source, top_k, folder, {"data": str(root)}, f"--data {data}")


def evaluate_run(classifier, run_dir: str | Path, top_k: int = 5, out: str | Path | None = None) -> tuple[dict, Path]:
    """Metrics of ``classifier`` on its run's own test split (split.csv; the val split when the run held
    out no test images, as training scored it), the images read again from the data the run was trained
    on; written to ``out`` (default RUN/evaluate-<split>)."""
    run_dir = Path(run_dir)
    source, data, split = _run_held_out(run_dir, classifier.classes)
    folder = Path(out) if out else run_dir / f"evaluate-{split}"
    return _evaluate(classifier, source, top_k, folder, {"data": data, "split": split}, f"the {split} split of {data}")


def labelled_check_images(classifier, run_dir: str | Path, data: list[str] | None = None, limit: int = 1000):
    """Up to ``limit`` images for checking an export against its bundle, uint8 [N, C, H, W] prepared by the
    bundle's preprocessing, with their labels in the model's class order (None for ``data``'s files, which
    need none) and what they are: the files ``data`` names, else the run's own test split (val when it has
    none), read again as ``evaluate`` reads it."""
    if data:
        return _files_as_images(classifier, data, limit), None, "--data " + " ".join(data)
    source, where, split = _run_held_out(Path(run_dir), classifier.classes)
    images, labels = _read_records(classifier, source, source.records[:limit])
    return images, labels, f"the {split} split of {where}"


def training_images(classifier, run_dir: str | Path, limit: int):
    """Up to ``limit`` of the run's training images (evenly spaced through its split.csv), prepared by the
    bundle's preprocessing: what ``export --int8`` calibrates on."""
    run = RunDir(Path(run_dir))
    if not run.split.is_file() or not run.config.is_file():
        raise OculiError(f"{run_dir}: no {run.split.name}, so no training images to calibrate on")
    records = _split_records(run.split, classifier.classes, "train")
    if not records:
        raise OculiError(f"{run.split}: no training images to calibrate on")
    records = records[::max(1, len(records) // limit)][:limit]
    settings = _run_settings(run)
    source = _images_of(settings, records, classifier.classes, Path(run_dir))
    return _read_records(classifier, source, records)[0]


def _read_records(classifier, source, records):
    """(uint8 images, labels) of ``records`` that can be read, as ``evaluate`` reads them."""
    import torch
    from .data.loading import load_split

    loaded = load_split(source, records, classifier.preprocessing, [])
    return torch.as_tensor(loaded.images), np.asarray(loaded.labels)


def _files_as_images(classifier, data: list[str], limit: int):
    import torch
    from .deploy.predict import expand_paths
    from .data.contained import prepare_files
    from .data.unreadable import Unreadable

    files, missing = expand_paths(data)
    if missing:
        raise OculiError(f"--data: no such file or folder: {missing[0]}")
    prepared = [torch.from_numpy(a) for a in prepare_files(files[:limit], classifier.preprocessing, draft=True)
                if not isinstance(a, Unreadable)]
    if not prepared:
        raise OculiError(f"--data: no readable images in {', '.join(data)}")
    return torch.stack(prepared)


def _evaluate(classifier, source, top_k: int, folder: Path, about: dict, what: str) -> tuple[dict, Path]:
    """Predict every record of ``source`` (labels in the model's class order), score and write to ``folder``.
    ``about`` goes into the metrics as it is; ``what`` names the images in errors."""
    from .data.loading import load_split
    from .io import atomic_write_json
    from .plots import plot_confusion_matrix, save_figure

    skipped: list = list(source.skipped)
    images = load_split(source, source.records, classifier.preprocessing, skipped)
    if len(images) == 0:
        raise OculiError(f"{what}: no readable images")
    # through the engine the classifier was loaded with; calibrated, as predict gives them
    probs = classifier.prepared_probs(images.images).astype(np.float64)
    labels = images.labels.numpy()
    if classifier.thresholds is not None:
        return _evaluate_label_sets(classifier, probs, labels, folder, {**about, "skipped": [list(s) for s in skipped]})
    metrics = {**classification_metrics(labels, probs, classifier.classes, top_k), **_trust(classifier, probs, labels),
               **about, "skipped": [list(s) for s in skipped]}
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / "confusion_matrix.json", {"classes": classifier.classes,
                                                         "matrix": metrics["confusion_matrix"]})
    # named as a run names its own, so that the two read alike
    save_figure(plot_confusion_matrix(np.array(metrics["confusion_matrix"]), classifier.classes),
                RunDir(folder).confusion)
    return metrics, folder


def _evaluate_label_sets(classifier, probs: np.ndarray, targets: np.ndarray, folder: Path,
                         about: dict) -> tuple[dict, Path]:
    """A multi-label model's scores at its thresholds (``multilabel.multilabel_metrics``), written with the
    precision-recall curves and the labels' co-occurrence."""
    from .io import atomic_write_json
    from .multilabel import multilabel_metrics
    from .plots import plot_co_occurrence, plot_pr_curves, save_figure

    metrics = {**multilabel_metrics(targets, probs, classifier.classes, classifier.thresholds), **about}
    atomic_write_json(folder / "metrics.json", metrics)
    save_figure(plot_pr_curves(targets, probs, classifier.classes, classifier.thresholds), RunDir(folder).pr_curves)
    save_figure(plot_co_occurrence(metrics["co_occurrence"], classifier.classes), RunDir(folder).co_occurrence)
    return metrics, folder


def _trust(classifier, probs: np.ndarray, labels: np.ndarray) -> dict:
    """The calibration error, and with a threshold in force, the share of images answered (coverage) and
    the accuracy of those answers."""
    correct = probs.argmax(1) == labels
    return {"temperature": classifier.calibration.temperature, "ece": expected_calibration_error(probs, labels),
            "abstain": selective_figures(probs.max(1), correct, classifier.min_confidence)}


def _run_held_out(run_dir: Path, classes: list[str]):
    """(source of the run's test images as its split.csv lists them, the data they come from, "test"),
    or of its val images, "val", when it has no test images."""
    run = RunDir(run_dir)
    for file in (run.config, run.split):
        if not file.is_file():
            raise OculiError(f"{run_dir}: no {file.name}, so no test split to evaluate on; give --data FOLDER")
    records = _held_out_records(run.split, classes)
    if not records:
        raise OculiError(f"{run_dir}: the run held no images out for testing; give --data FOLDER")
    settings = _run_settings(run)
    source = _images_of(settings, records, classes, run_dir)
    return source, settings["data"], records[0].split


def _run_settings(run: RunDir) -> dict:
    try:
        return run.read_config()["config"]
    except OculiError:  # not JSON, or not a run's settings
        raise OculiError(f"{run.config}: not the {run.config.name} of an oculi run; give --data FOLDER") from None


def _held_out_records(manifest: Path, classes: list[str]) -> list:
    """The manifest's test records, else its val records, labelled in the model's class order."""
    from .data.split import read_manifest

    rows = read_manifest(manifest)
    split = next((s for s in ("test", "val") if any(row[2] == s for row in rows)), None)
    return _split_records(manifest, classes, split) if split else []


def _split_records(manifest: Path, classes: list[str], split: str) -> list:
    """The manifest's records of ``split``, labelled in the model's class order."""
    from .data.split import read_manifest

    multi = _is_multi_label(manifest.parent)
    return [named_record(path, label, s, classes, multi, manifest) for path, label, s in read_manifest(manifest)
            if s == split]


def _is_multi_label(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` learned label sets (its saved plan's head)."""
    try:
        return RunDir(run_dir).read_config()["config"].get("head") == "multilabel"
    except (OculiError, KeyError, TypeError):
        return False


def _images_of(settings: dict, records: list, classes: list[str], run_dir: Path):
    """A source reading ``records`` from the run's data (``settings``: its config's; a folder or table, else a
    built-in set, by training's rule)."""
    from .data.sources import data_folder, records_source

    try:
        data_folder(settings["data"])
    except OculiError as err:  # moved or deleted since the run (a built-in set that cannot be had says why)
        raise OculiError(f"the data of {run_dir} is gone: {err}; give --data FOLDER") from None
    return records_source(settings["data"], classes, records, settings.get("data_dir"), settings.get("images"))


def _labelled_table(table: Path, classes: list[str], settings: dict, multi_label: bool):
    """The rows of a table of labels to evaluate on (its test rows, else its val rows, else all), with their
    labels mapped to the model's classes."""
    import dataclasses
    from .config import TrainConfig
    from .data.sources import DataSource, table_columns
    from .data.split import label_names
    from .data.table import read_label_table

    columns = table_columns(TrainConfig(data=str(table), **settings))
    columns = dataclasses.replace(columns, multi_label=True) if multi_label else columns
    read = read_label_table(table, settings.get("images"), columns)
    split = next((s for s in ("test", "val") if any(r.split == s for r in read.records)), None)
    records = [named_record(r.path, label_names(r, read.classes), r.split, classes, multi_label, f"--data {table}")
               for r in read.records if split is None or r.split == split]
    return DataSource(table.stem, list(classes), records, root=read.root, skipped=read.skipped, table=table,
                      multi_label=multi_label)


def _model_label(class_name: str, classes: list[str], where) -> int:
    """The model's index of ``class_name``; a class it does not know is the user's mistake."""
    if class_name not in classes:
        raise OculiError(f"{where}: class '{class_name}' is not one the model knows ({', '.join(classes)})")
    return classes.index(class_name)


def _labelled_folder(path: Path, classes: list[str], table_settings: dict, multi_label: bool = False):
    """The class-folder (or table) source to evaluate on, with its labels mapped to the model's classes (of a
    multi-label model: as label sets, a class folder's images each with the one label)."""
    from .data.sources import scan_class_folders, split_folders
    from .data.table import is_table, table_in

    table = path if is_table(path) else table_in(path) if path.is_dir() else None
    if table is not None:
        return _labelled_table(table, classes, table_settings, multi_label), table
    if not path.is_dir():
        raise OculiError(f"--data: no such folder: {path}")
    splits = split_folders(path)
    root = splits.get("test") or splits.get("val") or path
    source = scan_class_folders(root)
    labels = [_model_label(name, classes, f"--data {root}") for name in source.classes]
    for record in source.records:
        record.label = labels[record.label]
        record.labels = (record.label,) if multi_label else None
    source.classes, source.multi_label = list(classes), multi_label
    return source, root
