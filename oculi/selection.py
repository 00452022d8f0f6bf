"""Choosing between two models on the val images, with a margin the val split can resolve.

Every "keep A over B" a run makes (a fine-tuned epoch over the features head, an earlier epoch over the last)
goes through ``compare``: A replaces B only when a paired test on the same val images says its gain is larger
than chance, at ``ALPHA`` divided by the number of candidates A was the best of (Bonferroni: the best of five
epochs is the maximum of five noisy scores, and a maximum looks better than any one of them). Otherwise B, the
cheaper or the default choice, stays.

- Accuracy: McNemar's exact test (one-sided), which looks only at the images the two models disagree on:
  under "no difference" each such image is A's with probability 1/2 (McNemar 1947; the exact binomial form
  is Dietterich 1998's recommendation for comparing classifiers on one test set).
- Macro-F1 (imbalanced data): a paired bootstrap of the difference of the two macro-F1s over the val images,
  seeded, so the same predictions always get the same verdict.

What the rule costs and saves on real data is in BENCHMARKS.md ("Decisions that hold"): the full-size cat/dog
photos kept a fine-tune that beat the head by one image of 200 (98.60% test against the head's 99.35%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # the one-sided level of every "A is better than B" on the val images
BOOTSTRAP_DRAWS = 2000


@dataclass(frozen=True)
class Verdict:
    """The outcome of ``compare``: whether A replaces B, and the evidence in numbers."""

    better: bool  # A significantly better than B: keep A
    score_a: float
    score_b: float
    images: int
    gained: int  # val images A gets right that B gets wrong, minus the reverse
    p_value: float
    level: float  # the p-value A had to be under (ALPHA / candidates)
    metric: str

    def to_dict(self) -> dict:
        return {"better": self.better, "score_a": self.score_a, "score_b": self.score_b, "images": self.images,
                "gained": self.gained, "p_value": self.p_value, "level": self.level, "metric": self.metric}

    def words(self, a: str, b: str) -> str:
        """e.g. "fine-tuned epoch 3 99.50% vs features head 99.00% on 200 val images (+1 image, p = 0.50):
        not a significant gain, kept the features head"."""
        name = {"accuracy": "accuracy", "map": "mAP"}.get(self.metric, "macro-F1")
        gain = (f"{self.gained:+d} image{'s' * (abs(self.gained) != 1)}, p = {self.p_value:.2g}"
                + (f" < {self.level:.2g}" if self.better else ""))
        if self.better:
            verdict = f"a significant gain, kept {a}"
        elif self.score_a <= self.score_b:
            verdict = f"not better, kept {b}"
        else:
            verdict = f"not a significant gain (needs p < {self.level:.2g}), kept {b}"
        return (f"{a} {self.score_a:.2%} vs {b} {self.score_b:.2%} val {name} on {self.images} val images "
                f"({gain}): {verdict}")


def mcnemar_p(a_right: np.ndarray, b_right: np.ndarray) -> float:
    """One-sided exact McNemar p-value of "A is more often right than B" on paired outcomes."""
    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    wins, losses = int((a_right & ~b_right).sum()), int((~a_right & b_right).sum())
    n = wins + losses
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n)


def macro_f1(predicted: np.ndarray, labels: np.ndarray, classes: int) -> float:
    """Unweighted mean over classes of 2 TP / (2 TP + FP + FN), 0 for a class neither predicted nor present, as
    sklearn's f1_score(average="macro", zero_division=0) computes it (each epoch's val score and the bootstrap)."""
    hits = np.bincount(labels[predicted == labels], minlength=classes)
    total = np.bincount(predicted, minlength=classes) + np.bincount(labels, minlength=classes)
    return float(np.mean(2 * hits / np.maximum(total, 1)))


def bootstrap_p(a: np.ndarray, b: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0) -> float:
    """One-sided paired bootstrap p-value of "A's macro-F1 is higher than B's": the share of resamples of the
    val images on which it is not."""
    rng = np.random.default_rng(seed)
    n, not_higher = len(labels), 0
    for _ in range(BOOTSTRAP_DRAWS):
        i = rng.integers(0, n, n)
        not_higher += macro_f1(a[i], labels[i], classes) <= macro_f1(b[i], labels[i], classes)
    return (not_higher + 1) / (BOOTSTRAP_DRAWS + 1)


def compare(a_predicted, b_predicted, labels, metric: str = "accuracy", candidates: int = 1,
            classes: int | None = None) -> Verdict:
    """Is A (the val predictions ``a_predicted``, the best of ``candidates`` tried) better than B beyond what
    the val images can resolve? ``metric``: accuracy (McNemar) or macro-f1 (paired bootstrap)."""
    level = ALPHA / max(1, candidates)
    a, b, y = (np.asarray(x, dtype=np.int64) for x in (a_predicted, b_predicted, labels))
    gained = int(((a == y) & (b != y)).sum() - ((a != y) & (b == y)).sum())
    if metric == "macro-f1":
        k = classes or int(max(a.max(initial=0), b.max(initial=0), y.max(initial=0))) + 1
        score_a, score_b = macro_f1(a, y, k), macro_f1(b, y, k)
        p = bootstrap_p(a, b, y, k) if score_a > score_b else 1.0
    else:
        score_a, score_b = float((a == y).mean()), float((b == y).mean())
        p = mcnemar_p(a == y, b == y)
    return Verdict(score_a > score_b and p < level, score_a, score_b, len(y), gained, p, level, metric)

