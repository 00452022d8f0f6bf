"""Choosing between two models on the val images (oculi.selection): a gain must be larger than the val split
can resolve, counting every candidate the winner was the best of."""

import math

import numpy as np
import pytest

from oculi.selection import ALPHA, compare, macro_f1, mcnemar_p


def _predictions(labels: np.ndarray, wrong: list[int]) -> np.ndarray:
    """``labels`` with the images at ``wrong`` answered as the next class."""
    out = labels.copy()
    out[wrong] = (out[wrong] + 1) % (labels.max() + 1)
    return out


def test_mcnemar_counts_only_the_images_the_two_disagree_on():
    a = np.array([1, 1, 1, 1, 1, 0, 1, 1])
    b = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    assert mcnemar_p(a, b) == pytest.approx(1 / 8)  # 3 wins, 0 losses: (1/2)^3
    assert mcnemar_p(b, a) == 1.0  # B wins none of the 3
    assert mcnemar_p(a, a) == 1.0
    wins, losses = 7, 2  # one-sided: P(X >= 7 | n = 9, p = 1/2)
    a = np.r_[np.ones(wins), np.zeros(losses)].astype(bool)
    assert mcnemar_p(a, ~a) == pytest.approx(sum(math.comb(9, k) for k in range(7, 10)) / 2 ** 9)


def test_one_image_of_200_is_not_a_gain_but_many_are():
    # The cat/dog set: the fine-tune 99.50% against the head's 99.00% on 200 val images.
    labels = np.arange(200) % 2
    head, finetuned = _predictions(labels, [3, 77]), _predictions(labels, [3])
    verdict = compare(finetuned, head, labels)
    assert not verdict.better and verdict.gained == 1 and verdict.p_value == pytest.approx(0.5)
    words = verdict.words("fine-tuned epoch 3", "the features head")
    assert words.startswith("fine-tuned epoch 3 99.50% vs the features head 99.00% val accuracy on 200 val images "
                            "(+1 image, p = 0.5)")
    assert words.endswith("not a significant gain (needs p < 0.05), kept the features head")
    clearly = compare(labels, _predictions(labels, list(range(0, 40, 4))), labels)  # 10 images better, none worse
    assert clearly.better and clearly.gained == 10 and "a significant gain, kept A" in clearly.words("A", "B")


def test_the_best_of_several_candidates_must_clear_a_stricter_level():
    labels = np.arange(300) % 3
    b = _predictions(labels, list(range(5)))
    a = labels  # 5 wins, 0 losses: p = 1/32 = 0.031
    assert compare(a, b, labels).better
    verdict = compare(a, b, labels, candidates=5)
    assert not verdict.better and verdict.level == pytest.approx(ALPHA / 5)


def test_a_worse_candidate_is_never_kept_and_says_so():
    labels = np.arange(50) % 2
    verdict = compare(_predictions(labels, [1, 2]), labels, labels)
    assert not verdict.better and verdict.gained == -2 and verdict.words("A", "B").endswith("not better, kept B")


def test_macro_f1_is_compared_by_a_seeded_bootstrap():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(90), np.ones(10)].astype(int)  # imbalanced: the small class is what matters
    b = labels.copy()
    b[90:97] = 0  # misses 7 of the 10 small-class images
    a = labels.copy()
    a[rng.choice(90, 3, replace=False)] = 1  # 3 false alarms, every small-class image found
    first, again = compare(a, b, labels, "macro-f1"), compare(a, b, labels, "macro-f1")
    assert first == again and first.better and first.score_a == pytest.approx(macro_f1(a, labels, 2))
    assert not compare(b, a, labels, "macro-f1").better
