"""Scores and decisions of multi-label models (oculi/multilabel.py): AP, mAP and the set metrics against
scikit-learn's, the threshold rule, each class's checked temperature, the mAP comparison that keeps an epoch, and
the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.metrics import average_precision_score, f1_score, hamming_loss

from oculi.calibration import binary_logits, checked_temperature
from oculi.multilabel import (DEFAULT_THRESHOLD, average_precisions, best_f1_threshold, checked_class_temperatures,
                              checked_thresholds, compare_map, f1_at, log_loss, map_bootstrap_p, mean_ap, micro_ap,
                              multilabel_metrics, precision_at, precision_threshold)
from oculi.training.loop import LoopSettings, loss_fn


def random_set(seed: int, n: int = 120, classes: int = 4, signal: float = 0.4):
    rng = np.random.default_rng(seed)
    y = rng.random((n, classes)) < 0.35
    y[np.arange(n), rng.integers(0, classes, n)] = True  # every image has a label
    p = np.clip(signal * y + rng.random((n, classes)) * (1 - signal), 0, 1)
    return y, p


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_average_precision_is_sklearns_for_scores_without_ties(seed):
    y, p = random_set(seed)
    assert np.allclose(average_precisions(y, p), [average_precision_score(y[:, c], p[:, c]) for c in range(4)])
    assert mean_ap(y, p) == pytest.approx(average_precision_score(y, p, average="macro"))
    assert micro_ap(y, p) == pytest.approx(average_precision_score(y, p, average="micro"))


def test_a_class_without_positives_has_no_ap_and_is_left_out_of_the_mean():
    y, p = random_set(1)
    y[:, 2] = False
    ap = average_precisions(y, p)
    assert np.isnan(ap[2]) and mean_ap(y, p) == pytest.approx(np.nanmean(ap))


def test_set_metrics_are_sklearns():
    y, p = random_set(2)
    thresholds = [0.5, 0.4, 0.6, 0.5]
    m = multilabel_metrics(y, p, list("abcd"), thresholds)
    predicted = p >= np.array(thresholds)
    assert m["macro_avg"]["f1"] == pytest.approx(f1_score(y, predicted, average="macro", zero_division=0))
    assert m["micro_avg"]["f1"] == pytest.approx(f1_score(y, predicted, average="micro", zero_division=0))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, predicted))
    assert m["subset_accuracy"] == pytest.approx((predicted == y).all(1).mean())
    assert [c["f1"] for c in m["per_class"]] == pytest.approx(f1_score(y, predicted, average=None, zero_division=0))
    assert np.array(m["co_occurrence"]).diagonal().tolist() == y.sum(0).tolist()


def test_the_f1_optimal_threshold_gives_the_best_f1_of_every_cut():
    y, p = random_set(3)
    for c in range(4):
        t = best_f1_threshold(y[:, c], p[:, c])
        best = max(f1_at(y[:, c], p[:, c] >= s) for s in np.unique(p[:, c]))
        assert f1_at(y[:, c], p[:, c] >= t) == pytest.approx(best)


def test_a_threshold_moves_only_when_images_it_was_not_fitted_on_confirm_it():
    rng = np.random.default_rng(4)
    n = 400
    y = rng.random((n, 2)) < 0.5
    # class 0: positives score 0.2-0.45, negatives 0-0.25: 0.5 finds nothing, a lower threshold nearly all.
    # class 1: well separated around 0.5 already.
    p = np.stack([np.where(y[:, 0], rng.uniform(0.2, 0.45, n), rng.uniform(0, 0.25, n)),
                  np.where(y[:, 1], rng.uniform(0.6, 1, n), rng.uniform(0, 0.4, n))], 1)
    chosen = checked_thresholds(p, y, ["shy", "plain"])
    shy, plain = chosen["classes"]
    assert shy["applied"] and shy["threshold"] < 0.45 and shy["f1_checked"] > shy["f1_at_half"]
    assert not plain["applied"] and plain["threshold"] == DEFAULT_THRESHOLD
    # the same shy class on 10 val images: too few to resolve the gain, 0.5 stays
    few = checked_thresholds(p[:10], y[:10], ["shy", "plain"])
    assert few["thresholds"] == [DEFAULT_THRESHOLD, DEFAULT_THRESHOLD]


def test_out_of_fold_thresholds_are_checked_on_val():
    y, p = random_set(5, n=200)
    chosen = checked_thresholds(p, y, list("abcd"), fit_on={"probs": p, "targets": y})
    assert chosen["fitted_on"] == "train (out of fold)" and len(chosen["thresholds"]) == 4


def test_the_map_comparison_keeps_a_clearly_better_model_and_refuses_noise():
    y, good = random_set(6, n=300, signal=0.7)
    _, weak = random_set(6, n=300, signal=0.1)
    assert compare_map(good, weak, y).better
    jitter = np.clip(good + np.random.default_rng(7).normal(0, 0.01, good.shape), 0, 1)
    verdict = compare_map(jitter, good, y)
    assert not verdict.better and verdict.metric == "map"
    assert map_bootstrap_p(good, good, y) == 1.0  # never higher


def test_the_multilabel_loss_is_binary_cross_entropy_of_every_class_with_smoothing():
    logits, targets = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, 1.0]])
    plain = LoopSettings(epochs=1, batch_size=1, lr=0.1, schedule="constant", warmup_epochs=0, label_smoothing=0.0,
                         patience=None, head="multilabel", seed=0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert loss_fn(logits, targets, plain) == pytest.approx(float(expected))
    smooth = LoopSettings(**{**plain.__dict__, "label_smoothing": 0.2})
    soft = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets * 0.8 + 0.1)
    assert loss_fn(logits, targets, smooth) == pytest.approx(float(soft))
    weighted = LoopSettings(**{**plain.__dict__, "class_weights": torch.tensor([3.0, 1.0, 1.0])})
    assert loss_fn(logits, targets, weighted) > loss_fn(logits, targets, plain)


def overconfident_logits(rng, n: int, scale: float, flip: float = 0.1):
    """Labels drawn from sigmoid(z) (so that T = 1 is right for z), and logits ``scale`` times too large."""
    z = rng.normal(0, 2.5, n)
    y = rng.random(n) < 1 / (1 + np.exp(-z))
    return z * scale, y


def test_each_class_gets_its_own_temperature_when_held_out_val_images_confirm_it():
    rng = np.random.default_rng(0)
    z0, y0 = overconfident_logits(rng, 600, 4.0)  # 4 times too sure: its temperature should be near 4
    z1, y1 = overconfident_logits(rng, 600, 1.0)  # already calibrated
    z2 = rng.normal(-6, 1, 600)  # a class with 3 positives in val: too few to check a temperature on
    y2 = np.zeros(600, dtype=bool)
    y2[:3] = True
    checked = checked_class_temperatures(np.stack([z0, z1, z2], 1), np.stack([y0, y1, y2], 1), ["sure", "fine", "rare"])
    sure, fine, rare = checked["classes"]
    assert sure["applied"] and 3.0 < sure["temperature"] < 5.5 and sure["held_out_gain"] > 0
    assert 0.7 < fine["fitted"] < 1.4  # a calibrated class fits near 1 (applied or not)
    assert not rare["applied"] and rare["temperature"] == 1.0 and "too few" in rare["why"]
    assert checked["temperatures"] == [r["temperature"] for r in checked["classes"]]
    # each class's rule is the one-label model's, on the class read as two logits
    one = checked_temperature(binary_logits(z0), y0.astype(int))
    assert sure["temperature"] == pytest.approx(one["temperature"])


def test_class_temperatures_fitted_out_of_fold_are_checked_on_val():
    rng = np.random.default_rng(1)
    z, y = overconfident_logits(rng, 800, 3.0)
    fit = {"logits": z[:600, None], "targets": y[:600, None]}
    checked = checked_class_temperatures(z[600:, None], y[600:, None], ["c"], fit_on=fit)
    row = checked["classes"][0]
    assert row["applied"] and "out-of-fold" in row["why"] and 2.0 < row["temperature"] < 4.5


def test_the_log_loss_of_label_sets_is_mean_binary_cross_entropy():
    y, p = random_set(3)
    expected = -np.mean(y * np.log(p.clip(1e-7, 1 - 1e-7)) + ~y * np.log(1 - p.clip(1e-7, 1 - 1e-7)))
    assert log_loss(y, p) == pytest.approx(expected)
    assert multilabel_metrics(y, p, list("abcd"), [0.5] * 4)["log_loss"] == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.6, 0.8, 0.95]))
def test_the_precision_threshold_is_the_lowest_cut_that_reaches_the_target(seed, target):
    rng = np.random.default_rng(seed)
    y = rng.random(60) < 0.4
    s = np.round(np.clip(0.3 * y + rng.random(60) * 0.7, 0, 1), 2)  # ties on purpose
    t = precision_threshold(y, s, target)
    cuts = [c for c in np.unique(s) if (s >= c).sum() and (y & (s >= c)).sum() / (s >= c).sum() >= target]
    if not cuts:
        assert t is None
        return
    lowest = min(cuts)
    assert (s >= t).sum() == (s >= lowest).sum()  # the same answers as the lowest reaching cut
    assert precision_at(y, s >= t) >= target


def test_target_precision_thresholds_say_what_they_held_where_they_were_not_fitted():
    rng = np.random.default_rng(8)
    n = 500
    y = rng.random((n, 2)) < 0.4
    p = np.stack([np.clip(0.5 * y[:, 0] + rng.random(n) * 0.6, 0, 1),  # separable enough for 90% precision
                  rng.random(n)], 1)  # noise: 90% is out of reach
    chosen = checked_thresholds(p, y, ["seen", "noise"], target_precision=0.9)
    seen, noise = chosen["classes"]
    assert chosen["target_precision"] == 0.9 and seen["applied"] and seen["precision_checked"] > 0.8
    assert seen["threshold"] == precision_threshold(y[:, 0], p[:, 0], 0.9)
    assert not noise["target_met"]
    assert noise["fitted"] is None or noise["precision_checked"] is None or noise["precision_checked"] < 0.9
