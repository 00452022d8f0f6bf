"""The images most likely mislabelled: out-of-fold predicted probabilities, then confident learning.

Out-of-fold: the images are split into k folds; a logistic-regression head learns from the features of k-1
of them and predicts the kth, so no image is judged by a model that saw its own label. On cached backbone
features that takes seconds, not a training per fold.

Confident learning, as published by Northcutt, Jiang & Chuang (2021), "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70 (implemented here from the paper; the cleanlab package is
AGPL-3.0 and not used):
1. per-class thresholds t_j = the mean predicted probability of class j over the images labelled j;
2. the confident joint C[i][j]: images labelled i whose probability of j reaches t_j (the largest such j
   when several do), counted;
3. calibrated so that each row sums to its class's count, normalised to the joint Q of (given, true) labels;
4. prune by noise rate: for each (i, j != i), the n * Q[i][j] images labelled i with the largest margin
   p_j - p_i are label issues;
5. the issues are ranked by self-confidence (the probability of the given label; lowest first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOLDS = 5


@dataclass(frozen=True)
class LabelIssues:
    """``order``: every image, most likely mislabelled first (the flagged ones, then the rest);
    ``flagged``: bool per image; ``suggested``: the likeliest other class; ``score``: 1 - self-confidence."""

    order: np.ndarray
    flagged: np.ndarray
    suggested: np.ndarray
    score: np.ndarray
    folds: int


def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = FOLDS,
                      seed: int = 0) -> tuple[np.ndarray, int]:
    """Predicted probabilities [N, num_classes], each from a head that did not see that image, and the
    number of folds used (fewer than ``folds`` when a class has fewer images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    smallest = np.bincount(labels, minlength=num_classes).min()
    folds = int(min(folds, smallest))
    if folds < 2:
        raise ValueError("every class needs at least 2 images for out-of-fold predictions")
    probs = np.zeros((len(labels), num_classes))
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels):
        scaler = StandardScaler().fit(features[train])
        # C: the inverse regularisation. Strong (0.003 on standardised features) keeps the heads from fitting
        # the wrong labels: precision@k on hymenoptera with 10% flipped 0.75 at C=0.1, 0.85 at 0.003 (BENCHMARKS.md).
        head = LogisticRegression(C=0.003, max_iter=500).fit(scaler.transform(features[train]), labels[train])
        probs[np.ix_(held, head.classes_)] = head.predict_proba(scaler.transform(features[held]))
    return probs, folds


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j: the mean probability of class j over the images labelled j (the paper's eq. 2)."""
    return np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(probs.shape[1])])


def confident_joint(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """C[given][true]: the images labelled ``given`` whose probability of ``true`` is at or above that class's
    threshold; an image over several thresholds counts once, for its most probable such class."""
    above = probs >= per_class_thresholds(probs, labels)
    confident = above.any(1)
    true = np.where(above, probs, -np.inf).argmax(1)
    joint = np.zeros((probs.shape[1],) * 2, dtype=np.int64)
    np.add.at(joint, (labels[confident], true[confident]), 1)
    return joint


def estimated_joint(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Q[given][true], summing to 1: the confident joint with each row scaled to its class's count."""
    joint = confident_joint(probs, labels).astype(float)
    counts = np.bincount(labels, minlength=probs.shape[1])
    rows = joint.sum(1, keepdims=True)
    calibrated = np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * counts[:, None]
    return calibrated / max(calibrated.sum(), 1e-12)


def prune_by_noise_rate(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Bool per image: a label issue. For each off-diagonal (given i, true j) of the estimated joint, the
    round(n * Q[i][j]) images labelled i with the largest margin p_j - p_i."""
    joint = estimated_joint(probs, labels)
    flagged = np.zeros(len(labels), dtype=bool)
    for given in range(probs.shape[1]):
        members = np.flatnonzero(labels == given)
        for true in range(probs.shape[1]):
            n = int(round(joint[given, true] * len(labels)))
            if true == given or n == 0:
                continue
            margin = probs[members, true] - probs[members, given]
            flagged[members[np.argsort(-margin, kind="stable")[:n]]] = True
    return flagged


def find_label_issues(probs: np.ndarray, labels: np.ndarray, folds: int = 0) -> LabelIssues:
    """Confident learning on out-of-fold ``probs``: which images are flagged, and every image ranked."""
    flagged = prune_by_noise_rate(probs, labels)
    self_confidence = probs[np.arange(len(labels)), labels]
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    order = np.lexsort((self_confidence, ~flagged))  # flagged first, each part by self-confidence
    return LabelIssues(order, flagged, others.argmax(1), 1 - self_confidence, folds)
