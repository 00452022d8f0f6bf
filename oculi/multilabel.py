"""Scores and decisions of a multi-label model: several classes an image, each a sigmoid probability.

- Average precision (AP) per class: the area under its precision-recall curve, as scikit-learn's
  ``average_precision_score`` computes it (precision at each positive, in order of score); mAP is their mean
  (macro: over the classes with a positive image; micro: every (image, class) pair pooled). The kept epoch is
  the one with the best val mAP, and an epoch replaces another only when a paired bootstrap of the mAP
  difference over the val images says so (``map_bootstrap_p``, at ``selection.ALPHA``).
- A label set is the classes whose probability reaches their threshold. Each class's threshold is 0.5 unless
  one that maximises its F1 on logits that chose nothing (a features head's out-of-fold logits, or the other
  folds of val) beats 0.5 on images it was not chosen on, by a paired bootstrap (``checked_thresholds``): the
  same rule as the temperature's, for the same reason (a few val images pin a threshold down poorly).
- Calibration per class: each class's sigmoid gets its own temperature, fitted and checked by the rule of a
  one-label model's (``calibration.checked_temperature`` on the class read as two logits): fitted on logits
  that chose nothing and applied only when val images it was not fitted on confirm a lower log loss. A class
  with too few positive (or negative) val images to check one keeps T = 1. Thresholds are chosen after, on
  the calibrated probabilities, so a bundle's thresholds are read against the probabilities it reports.
- Set metrics: per-class precision, recall, F1 and support; micro and macro F1; subset accuracy (the whole set
  right); Hamming loss (the share of (image, class) pairs wrong).
"""

from __future__ import annotations

import numpy as np

from .calibration import CHECK_FOLDS as TEMPERATURE_FOLDS
from .calibration import binary_logits, checked_temperature
from .selection import ALPHA, BOOTSTRAP_DRAWS, Verdict

CHECK_FOLDS = 5  # the folds of val a threshold is cross-fitted on when nothing else can choose it
DEFAULT_THRESHOLD = 0.5


def sigmoid(logits: np.ndarray, temperature: float | np.ndarray = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return 1.0 / (1.0 + np.exp(-z))


def label_sets_of(probs: np.ndarray, thresholds) -> list[tuple[int, ...]]:
    """The classes over their threshold, for each row of ``probs``."""
    over = np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)[None, :]
    return [tuple(np.flatnonzero(row).tolist()) for row in over]


# ---------------------------------------------------------------- average precision

def weighted_ap(targets: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AP of one class under image weights: [B] for weights [B, N] (each row a resample's image counts;
    all ones is the plain AP). Images with equal scores count as one threshold in scikit-learn; here a
    resample's copies of one image share its score and its place, which is the same thing for them."""
    order = np.argsort(-scores, kind="stable")
    positive, w = targets[order].astype(np.float64), weights[:, order]
    true_positives = np.cumsum(w * positive, axis=1)
    precision = true_positives / np.maximum(np.cumsum(w, axis=1), 1e-12)
    total = true_positives[:, -1]
    return np.where(total > 0, (w * positive * precision).sum(1) / np.maximum(total, 1e-12), np.nan)


def average_precisions(targets: np.ndarray, probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """AP of every class: [C], or [B, C] under resample weights [B, N]; NaN for a class with no positive."""
    targets, probs = np.asarray(targets), np.asarray(probs, dtype=np.float64)
    w = np.ones((1, len(targets))) if weights is None else weights
    ap = np.stack([weighted_ap(targets[:, c], probs[:, c], w) for c in range(targets.shape[1])], axis=1)
    return ap[0] if weights is None else ap


def mean_ap(targets: np.ndarray, probs: np.ndarray) -> float:
    """Macro mAP over the classes that have a positive image (0 when none has)."""
    ap = average_precisions(targets, probs)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


def micro_ap(targets: np.ndarray, probs: np.ndarray) -> float:
    """AP of every (image, class) pair pooled: frequent classes weigh more."""
    flat_t, flat_p = np.asarray(targets).reshape(-1, 1), np.asarray(probs).reshape(-1, 1)
    return float(average_precisions(flat_t, flat_p)[0]) if flat_t.any() else 0.0


def map_bootstrap_p(a_probs, b_probs, targets, seed: int = 0, draws: int = BOOTSTRAP_DRAWS) -> float:
    """One-sided paired bootstrap p-value of "A's val mAP is higher than B's": the share of resamples of the
    val images (the same resample for both) on which it is not."""
    a, b, y = (np.asarray(x, dtype=np.float64) for x in (a_probs, b_probs, targets))
    counts = np.random.default_rng(seed).multinomial(len(y), np.full(len(y), 1 / len(y)), size=draws)
    with np.errstate(invalid="ignore"):
        ap_a, ap_b = average_precisions(y, a, counts), average_precisions(y, b, counts)
    both = np.isfinite(ap_a) & np.isfinite(ap_b)
    gain = np.where(both, ap_a - ap_b, 0.0).sum(1) / np.maximum(both.sum(1), 1)
    return float(((gain <= 0).sum() + 1) / (draws + 1))


def compare_map(a_probs, b_probs, targets, candidates: int = 1) -> Verdict:
    """``selection.compare`` for multi-label models: is A's val mAP (``a_probs``, ``b_probs``: probabilities
    [N, classes]; ``targets`` 0/1) higher than B's beyond chance (paired bootstrap, at ALPHA / candidates)?
    "gained" counts the val images whose whole label set at 0.5 A gets right and B does not, minus the reverse."""
    a, b, y = (np.asarray(x, dtype=np.float64) for x in (a_probs, b_probs, targets))
    level = ALPHA / max(1, candidates)
    score_a, score_b = mean_ap(y, a), mean_ap(y, b)
    p = map_bootstrap_p(a, b, y) if score_a > score_b else 1.0
    a_right, b_right = (((x >= 0.5) == (y >= 0.5)).all(1) for x in (a, b))
    gained = int((a_right & ~b_right).sum() - (~a_right & b_right).sum())
    return Verdict(score_a > score_b and p < level, score_a, score_b, len(y), gained, p, level, "map")


# ---------------------------------------------------------------- thresholds

def f1_at(targets: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of one class's 0/1 predictions (0 when it is neither predicted nor present)."""
    tp = float((predicted & targets).sum())
    total = float(predicted.sum() + targets.sum())
    return 2 * tp / total if total else 0.0


def best_f1_threshold(targets: np.ndarray, scores: np.ndarray) -> float:
    """The threshold that maximises one class's F1 on these images: midway between the score that is the
    last one in and the next one out (so that it holds for scores between them too); 0.5 without a positive."""
    targets = np.asarray(targets, dtype=bool)
    if not targets.any():
        return DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order]
    tp = np.cumsum(t)
    f1 = 2 * tp / (np.arange(1, len(s) + 1) + t.sum())
    distinct = np.append(s[1:] != s[:-1], True)  # a cut only between different scores
    k = int(np.flatnonzero(distinct)[np.argmax(f1[distinct])])
    below = s[k + 1] if k + 1 < len(s) else 0.0
    return float((s[k] + below) / 2)


def precision_threshold(targets: np.ndarray, scores: np.ndarray, target: float) -> float | None:
    """The lowest threshold whose answers on these images are right at least ``target`` of the time (the
    most recall at that precision), midway to the next score as ``best_f1_threshold``; None when none is."""
    targets = np.asarray(targets, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], targets[order]
    precision = np.cumsum(t) / np.arange(1, len(s) + 1)
    distinct = np.append(s[1:] != s[:-1], True)
    reach = np.flatnonzero(distinct & (precision >= target))
    if not len(reach):
        return None
    k = int(reach[-1])
    below = s[k + 1] if k + 1 < len(s) else 0.0
    return float((s[k] + below) / 2)


def precision_at(targets: np.ndarray, predicted: np.ndarray) -> float | None:
    """The share of one class's answers that are right (None when it answers none)."""
    answered = int(predicted.sum())
    return float((predicted & targets).sum() / answered) if answered else None


def f1_bootstrap_p(targets, a_predicted, b_predicted, seed: int = 0, draws: int = BOOTSTRAP_DRAWS) -> float:
    """One-sided paired bootstrap p-value of "A's F1 is higher than B's" on one class's 0/1 predictions."""
    y, a, b = (np.asarray(x, dtype=bool) for x in (targets, a_predicted, b_predicted))
    index = np.random.default_rng(seed).integers(0, len(y), (draws, len(y)))
    yy, aa, bb = y[index], a[index], b[index]

    def f1(p):
        total = p.sum(1) + yy.sum(1)
        return np.where(total > 0, 2 * (p & yy).sum(1) / np.maximum(total, 1), 0.0)
    return float(((f1(aa) <= f1(bb)).sum() + 1) / (draws + 1))


def checked_thresholds(probs: np.ndarray, targets: np.ndarray, classes: list[str], seed: int = 0,
                       fit_on: dict | None = None, folds: int = CHECK_FOLDS,
                       target_precision: float | None = None) -> dict:
    """Each class's threshold and why: F1-optimal on ``fit_on`` (``{"probs", "targets"}``, out-of-fold) and
    checked on val, or cross-fitted on val's folds and checked on the fold each was not fitted on; applied
    when the checked F1 is significantly above 0.5's (paired bootstrap, p < ALPHA), else 0.5. With
    ``target_precision``: ``precision_thresholds`` instead."""
    if target_precision is not None:
        return precision_thresholds(probs, targets, classes, target_precision, seed, fit_on, folds)
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(bool)
    rows = []
    for c, name in enumerate(classes):
        fitted, held = _fitted_and_held(probs[:, c], targets[:, c], fit_on, c, best_f1_threshold, seed, folds)
        plain = probs[:, c] >= DEFAULT_THRESHOLD
        f1_held, f1_plain = f1_at(targets[:, c], held), f1_at(targets[:, c], plain)
        p = f1_bootstrap_p(targets[:, c], held, plain, seed) if f1_held > f1_plain else 1.0
        applied = p < ALPHA
        rows.append({"class": name, "threshold": fitted if applied else DEFAULT_THRESHOLD, "fitted": fitted,
                     "applied": applied, "f1_checked": f1_held, "f1_at_half": f1_plain, "p_value": p})
    return {"thresholds": [r["threshold"] for r in rows], "classes": rows,
            "fitted_on": "train (out of fold)" if fit_on is not None else "val (cross-fitted)",
            "checked_on": f"the {len(targets)} val images" if fit_on is not None else "the val fold each was not fitted on"}


def precision_thresholds(probs: np.ndarray, targets: np.ndarray, classes: list[str], target: float, seed: int = 0,
                         fit_on: dict | None = None, folds: int = CHECK_FOLDS) -> dict:
    """Each class's lowest threshold whose answers are right ``target`` of the time (``--target-precision``),
    fitted as ``checked_thresholds`` fits (``fit_on``, else val's other folds), with the precision it held on
    images it was not fitted on; a class that reaches ``target`` at no threshold keeps 0.5, said so."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(bool)
    rows = []
    for c, name in enumerate(classes):
        fit = lambda y, p: precision_threshold(y, p, target)  # noqa: E731 - the rule, one class at a time
        fitted, held = _fitted_and_held(probs[:, c], targets[:, c], fit_on, c, fit, seed, folds)
        checked = precision_at(targets[:, c], held)
        rows.append({"class": name, "threshold": DEFAULT_THRESHOLD if fitted is None else fitted, "fitted": fitted,
                     "applied": fitted is not None, "precision_checked": checked,
                     "recall_checked": recall_at(targets[:, c], held), "target_met": checked is not None
                     and checked >= target})
    return {"thresholds": [r["threshold"] for r in rows], "classes": rows, "target_precision": target,
            "fitted_on": "train (out of fold)" if fit_on is not None else "val (cross-fitted)",
            "checked_on": f"the {len(targets)} val images" if fit_on is not None else "the val fold each was not fitted on"}


def recall_at(targets: np.ndarray, predicted: np.ndarray) -> float | None:
    """The share of one class's positives answered (None without a positive)."""
    positives = int(targets.sum())
    return float((predicted & targets).sum() / positives) if positives else None


def _fitted_and_held(scores, targets, fit_on: dict | None, c: int, fit, seed: int, folds: int):
    """A class's threshold by ``fit(targets, scores)`` (on ``fit_on``'s column ``c`` when given, else on all
    of val) and val's 0/1 answers at thresholds that did not see them (``fit_on``'s, or the other folds')."""
    if fit_on is not None:
        fitted = fit(np.asarray(fit_on["targets"])[:, c].astype(bool), np.asarray(fit_on["probs"])[:, c])
        return fitted, scores >= (np.inf if fitted is None else fitted)
    return fit(targets, scores), _cross_fitted(scores, targets, seed, folds, fit)


def _cross_fitted(scores: np.ndarray, targets: np.ndarray, seed: int, folds: int, fit=best_f1_threshold) -> np.ndarray:
    """Each val image's 0/1 prediction at the threshold ``fit`` gives on the other folds (positives dealt round
    the folds evenly, so that each fold's threshold sees positives; a fold whose threshold is None answers no)."""
    rng, fold = np.random.default_rng(seed), np.empty(len(targets), dtype=int)
    for group in (np.flatnonzero(targets), np.flatnonzero(~targets)):
        fold[rng.permutation(group)] = np.arange(len(group)) % folds
    predicted = np.zeros(len(targets), dtype=bool)
    for k in range(folds):
        held = fold == k
        t = fit(targets[~held], scores[~held]) if (~held).any() else DEFAULT_THRESHOLD
        predicted[held] = scores[held] >= (np.inf if t is None else t)
    return predicted


# ---------------------------------------------------------------- calibration, a class at a time

def checked_class_temperatures(logits: np.ndarray, targets: np.ndarray, classes: list[str], seed: int = 0,
                               fit_on: dict | None = None) -> dict:
    """Each class's temperature and why (``checked_temperature`` on that class's sigmoid; ``fit_on``:
    ``{"logits", "targets"}`` out of fold); ``temperatures`` holds 1 where none was confirmed."""
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets).astype(int)
    rows = []
    for c, name in enumerate(classes):
        fit = None if fit_on is None else {"logits": binary_logits(np.asarray(fit_on["logits"])[:, c]),
                                           "labels": np.asarray(fit_on["targets"]).astype(int)[:, c]}
        rows.append({"class": name, **_class_temperature(logits[:, c], targets[:, c], seed, fit)})
    return {"temperatures": [r["temperature"] for r in rows], "classes": rows,
            "applied": sum(r["applied"] for r in rows)}


def _class_temperature(z: np.ndarray, y: np.ndarray, seed: int, fit: dict | None) -> dict:
    """One class's checked temperature; T = 1 when val holds fewer positives or negatives than the check
    needs: on a class all of whose val images are right the log loss only falls as T -> 0, and a T so fitted
    would make the first test mistake cost dozens of nats."""
    fewest = int(min(y.sum(), len(y) - y.sum()))
    needed = 1 if fit is not None else TEMPERATURE_FOLDS
    if fewest < needed:
        return {"temperature": 1.0, "fitted": None, "applied": False, "held_out_gain": None,
                "why": f"{fewest} val images on one side of this class (it needs {needed}) are too few to check a "
                       f"temperature on"}
    check = checked_temperature(binary_logits(z), y, seed, fit)
    return {k: check[k] for k in ("temperature", "fitted", "applied", "held_out_gain", "why")}


# ---------------------------------------------------------------- the metrics of a labelled split

def log_loss(targets: np.ndarray, probs: np.ndarray) -> float:
    """The mean binary cross-entropy over every (image, class) pair."""
    y, p = np.asarray(targets).astype(bool), np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + ~y * np.log(1 - p)).mean())


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, classes: list[str], thresholds) -> dict:
    """mAP (macro, micro), per-class AP/precision/recall/F1/support at ``thresholds``, micro and macro F1,
    subset accuracy, Hamming loss, the mean BCE (log loss) and the label co-occurrence counts; plain numbers."""
    from sklearn.metrics import precision_recall_fscore_support  # here: predict imports this module, not sklearn
    y, p = np.asarray(targets).astype(bool), np.asarray(probs, dtype=np.float64)
    if p.shape != y.shape or len(y) == 0:
        raise ValueError(f"probs {p.shape} and targets {y.shape} must be the same non-empty shape")
    predicted = p >= np.asarray(thresholds, dtype=np.float64)[None, :]
    ap = average_precisions(y, p)
    prec, rec, f1, support = precision_recall_fscore_support(y, predicted, average=None, zero_division=0)
    averaged = {avg: precision_recall_fscore_support(y, predicted, average=avg, zero_division=0)[:3]
                for avg in ("micro", "macro")}
    return {"n": int(len(y)), "multi_label": True, "classes": list(classes),
            "mAP": mean_ap(y, p), "micro_mAP": micro_ap(y, p),
            "subset_accuracy": float((predicted == y).all(1).mean()),
            "hamming_loss": float((predicted != y).mean()),
            "log_loss": log_loss(y, p),
            "micro_avg": dict(zip(("precision", "recall", "f1"), map(float, averaged["micro"]))),
            "macro_avg": dict(zip(("precision", "recall", "f1"), map(float, averaged["macro"]))),
            "per_class": [{"class": c, "ap": None if np.isnan(ap[i]) else float(ap[i]),
                           "precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                           "support": int(support[i]), "threshold": float(np.asarray(thresholds)[i])}
                          for i, c in enumerate(classes)],
            "labels_per_image": {"true": float(y.sum(1).mean()), "predicted": float(predicted.sum(1).mean())},
            "co_occurrence": (y.T.astype(int) @ y.astype(int)).tolist()}
