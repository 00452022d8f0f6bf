"""Classification metrics from labels and predicted probabilities: plain numbers, for JSON, tables and plots."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

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


def headline_figures(metrics: dict) -> dict:
    """The scores runs are compared by, from a test_metrics.json: accuracy, macro-F1, log loss and the
    expected calibration error of the probabilities the model gives (``calibration.after.ece``); None for
    one the metrics lack (ECE in runs made before calibration was measured)."""
    calibration = metrics.get("calibration") or {}
    return {"accuracy": metrics.get("accuracy"), "macro_f1": (metrics.get("macro_avg") or {}).get("f1"),
            "log_loss": metrics.get("log_loss"), "ece": (calibration.get("after") or {}).get("ece")}
