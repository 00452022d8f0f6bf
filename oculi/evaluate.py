"""Metrics and evaluation of a trained classifier."""

from __future__ import annotations

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
    from .data.loading import load_split
    from .inference import predict_probs
    from .io import atomic_write_json
    from .report.plots import plot_confusion_matrix, save_figure

    source, root = _labelled_folder(Path(data).expanduser(), classifier.classes)
    skipped: list = list(source.skipped)
    images = load_split(source, source.records, classifier.preprocessing, skipped)
    if len(images) == 0:
        raise OculiError(f"--data {data}: no readable images")
    probs = predict_probs(classifier.model, images.images, classifier.preprocessing, classifier.head,
                          classifier.device).numpy()
    metrics = {**classification_metrics(images.labels.numpy(), probs, classifier.classes, top_k),
               "data": str(root), "skipped": [list(s) for s in skipped]}
    name = Path(data).expanduser().resolve().name
    folder = Path(out) if out else Path(run_dir or ".") / f"evaluate-{name}"
    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_json(folder / "confusion_matrix.json", {"classes": classifier.classes,
                                                         "matrix": metrics["confusion_matrix"]})
    save_figure(plot_confusion_matrix(np.array(metrics["confusion_matrix"]), classifier.classes),
                folder / "confusion_matrix.png")
    return metrics, folder


def _labelled_folder(path: Path, classes: list[str]):
    """The class-folder source to evaluate on, with its labels mapped to the model's classes."""
    from .data.sources import scan_class_folders, split_folders

    if not path.is_dir():
        raise OculiError(f"--data: no such folder: {path}")
    splits = split_folders(path)
    root = splits.get("test") or splits.get("val") or path
    source = scan_class_folders(root)
    unknown = [c for c in source.classes if c not in classes]
    if unknown:
        raise OculiError(f"--data {root}: class '{unknown[0]}' is not one the model knows ({', '.join(classes)})")
    for record in source.records:
        record.label = classes.index(source.classes[record.label])
    return source, root
