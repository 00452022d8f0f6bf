"""Confident learning (Northcutt et al. 2021) on probabilities with a known answer, and on features."""

import numpy as np

from oculi.check.label_errors import (confident_joint, estimated_joint, find_label_issues, out_of_fold_probs,
                                      per_class_thresholds)


def test_thresholds_and_confident_joint_by_hand():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1, 1])
    # t_0 = mean p0 of the images labelled 0 = (0.9 + 0.7 + 0.2) / 3 = 0.6; t_1 = (0.6 + 0.9) / 2 = 0.75
    assert np.allclose(per_class_thresholds(probs, labels), [0.6, 0.75])
    # image 2 (labelled 0) is confidently 1 (0.8 >= 0.75); image 3 (labelled 1) reaches no threshold
    assert confident_joint(probs, labels).tolist() == [[2, 1], [0, 1]]
    joint = estimated_joint(probs, labels)
    assert np.isclose(joint.sum(), 1) and np.allclose(joint.sum(1) * 5, [3, 2])  # rows = class counts


def test_the_flipped_labels_of_separable_features_come_first():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, size=(4, 20))
    true = np.repeat(np.arange(4), 60)
    features = centres[true] + rng.normal(0, 1, size=(240, 20))
    given = true.copy()
    flipped = rng.choice(240, 24, replace=False)
    given[flipped] = (true[flipped] + rng.integers(1, 4, 24)) % 4
    probs, folds = out_of_fold_probs(features, given, 4)
    issues = find_label_issues(probs, given, folds)
    top = set(issues.order[:24].tolist())
    assert len(top & set(flipped.tolist())) >= 22  # precision@k >= 0.9
    assert issues.flagged[flipped].mean() >= 0.75 and issues.flagged.sum() <= 30  # the noise rate, estimated
    assert (issues.suggested[flipped] == true[flipped]).mean() >= 0.9
    assert folds == 5


def test_clean_labels_give_few_issues():
    rng = np.random.default_rng(1)
    true = np.repeat(np.arange(3), 50)
    features = rng.normal(0, 5, size=(3, 10))[true] + rng.normal(0, 1, size=(150, 10))
    probs, _ = out_of_fold_probs(features, true, 3)
    assert find_label_issues(probs, true).flagged.sum() <= 2
