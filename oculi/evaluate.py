"""Metrics and evaluation of a trained classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

from .errors import OculiError

# Keeps log_loss finite when the true class was given probability 0.
_PROB_FLOOR = 1e-15


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], top_k: int = 5
) -> dict:
    """Accuracy, top-k, log loss, per-class and averaged P/R/F1 and confusion matrix.

    ``probs`` is [N, K] with rows summing to 1, ``y_true`` int [N]. Every value in the
    result is a plain Python int/float/str/list so the dict can go straight to json.
    """
    y_true = np.asarray(y_true, dtype=int).reshape(-1)
    probs = np.asarray(probs, dtype=float)
    n, k = len(y_true), len(classes)
    if probs.shape != (n, k):
        raise ValueError(f"probs has shape {probs.shape}, expected ({n}, {k})")
    if n == 0:
        raise ValueError("cannot compute metrics on zero samples")
    labels = list(range(k))
    y_pred = probs.argmax(axis=1)
    eff_k = max(1, min(int(top_k), k))
    # Stable sort so the first of tied classes ranks first, as argmax does: top-1 == accuracy.
    top = np.argsort(-probs, axis=1, kind="stable")[:, :eff_k]

    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    return {
        "n": int(n),
        "accuracy": float(np.mean(y_pred == y_true)),
        "top_k": int(eff_k),
        "top_k_accuracy": float(np.mean((top == y_true[:, None]).any(axis=1))),
        "log_loss": _log_loss(y_true, probs, labels),
        "per_class": [
            {"class": c, "precision": float(p[i]), "recall": float(r[i]),
             "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        ],
        "macro_avg": _average(y_true, y_pred, labels, "macro"),
        "weighted_avg": _average(y_true, y_pred, labels, "weighted"),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": list(classes),
    }


def _log_loss(y_true: np.ndarray, probs: np.ndarray, labels: list[int]) -> float:
    if len(labels) < 2:  # a one-class model is always right; sklearn refuses this case
        return 0.0
    clipped = np.clip(probs, _PROB_FLOOR, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    return float(log_loss(y_true, clipped, labels=labels))


def _average(y_true, y_pred, labels, average: str) -> dict:
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=average, zero_division=0
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def metrics_table_rows(metrics: dict) -> list[tuple[str, str, str, str, str]]:
    """Rows (class, precision, recall, f1, support) then macro and weighted averages."""
    def fmt(d: dict) -> tuple[str, str, str]:
        return f"{d['precision']:.3f}", f"{d['recall']:.3f}", f"{d['f1']:.3f}"

    rows = [(c["class"], *fmt(c), str(c["support"])) for c in metrics["per_class"]]
    n = str(metrics["n"])
    rows.append(("macro avg", *fmt(metrics["macro_avg"]), n))
    rows.append(("weighted avg", *fmt(metrics["weighted_avg"]), n))
    return rows


def evaluate_folder(classifier, data: str | Path, top_k: int = 5, out: str | Path | None = None,
                    run_dir: str | Path | None = None) -> tuple[dict, Path]:
    """Metrics of ``classifier`` on a labelled folder; writes metrics, confusion matrix and predictions.

    ``data`` is a folder of class folders, or a split folder (its test/, else val/, is used). The
    images go through the bundle's own preprocessing, exactly as ``predict`` does.
    """
    source, root = _labelled_folder(Path(data).expanduser(), classifier.classes)
    name = Path(data).expanduser().resolve().name
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


def _evaluate(classifier, source, top_k: int, folder: Path, about: dict, what: str) -> tuple[dict, Path]:
    """Predict every record of ``source`` (labels in the model's class order), score and write to ``folder``.
    ``about`` goes into the metrics as it is; ``what`` names the images in errors."""
    from .data.loading import load_split
    from .inference import predict_probs
    from .io import atomic_write_json
    from .report.plots import plot_confusion_matrix, save_figure

    skipped: list = list(source.skipped)
    images = load_split(source, source.records, classifier.preprocessing, skipped)
    if len(images) == 0:
        raise OculiError(f"{what}: no readable images")
    probs = predict_probs(classifier.model, images.images, classifier.preprocessing, classifier.head,
                          classifier.device).numpy()
    metrics = {**classification_metrics(images.labels.numpy(), probs, classifier.classes, top_k),
               **about, "skipped": [list(s) for s in skipped]}
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / "confusion_matrix.json", {"classes": classifier.classes,
                                                         "matrix": metrics["confusion_matrix"]})
    save_figure(plot_confusion_matrix(np.array(metrics["confusion_matrix"]), classifier.classes),
                folder / "confusion_matrix.png")
    return metrics, folder


def _run_held_out(run_dir: Path, classes: list[str]):
    """(source of the run's test images as its split.csv lists them, the data they come from, "test"),
    or of its val images, "val", when it has no test images."""
    config, manifest = run_dir / "config.json", run_dir / "split.csv"
    for file in (config, manifest):
        if not file.is_file():
            raise OculiError(f"{run_dir}: no {file.name}, so no test split to evaluate on; give --data FOLDER")
    records = _held_out_records(manifest, classes)
    if not records:
        raise OculiError(f"{run_dir}: the run held no images out for testing; give --data FOLDER")
    settings = _run_settings(config)
    source = _images_of(settings["data"], settings.get("data_dir"), records, classes, run_dir)
    return source, settings["data"], records[0].split


def _run_settings(config: Path) -> dict:
    try:
        return json.loads(config.read_text())["config"]
    except (ValueError, KeyError, TypeError):  # not JSON, or not a run's settings
        raise OculiError(f"{config}: not the config.json of an oculi run; give --data FOLDER") from None


def _held_out_records(manifest: Path, classes: list[str]) -> list:
    """The manifest's test records, else its val records, labelled in the model's class order."""
    from .data.split import Record, read_manifest

    rows = read_manifest(manifest)
    split = next((s for s in ("test", "val") if any(row[2] == s for row in rows)), None)
    return [Record(path, _model_label(label, classes, manifest), s) for path, label, s in rows if s == split]


def _images_of(data: str, data_dir: str | None, records: list, classes: list[str], run_dir: Path):
    """A source reading ``records`` from the run's data: a folder, else a built-in set."""
    from .data.builtin import is_builtin, load_builtin
    from .data.sources import DataSource

    folder = Path(data).expanduser()
    if folder.is_dir():  # a folder wins over a built-in name, as in training
        return DataSource(folder.name, list(classes), records, root=folder)
    if is_builtin(data):  # no files: the records are rows of the set's arrays
        dataset = load_builtin(data, data_dir=data_dir)
        return DataSource(dataset.name, list(classes), records, arrays=dataset.images)
    raise OculiError(f"the data of {run_dir} is gone: no such folder {folder} (give --data FOLDER)")


def _model_label(class_name: str, classes: list[str], where) -> int:
    """The model's index of ``class_name``; a class it does not know is the user's mistake."""
    if class_name not in classes:
        raise OculiError(f"{where}: class '{class_name}' is not one the model knows ({', '.join(classes)})")
    return classes.index(class_name)


def _labelled_folder(path: Path, classes: list[str]):
    """The class-folder source to evaluate on, with its labels mapped to the model's classes."""
    from .data.sources import scan_class_folders, split_folders

    if not path.is_dir():
        raise OculiError(f"--data: no such folder: {path}")
    splits = split_folders(path)
    root = splits.get("test") or splits.get("val") or path
    source = scan_class_folders(root)
    labels = [_model_label(name, classes, f"--data {root}") for name in source.classes]
    for record in source.records:
        record.label = labels[record.label]
    return source, root
