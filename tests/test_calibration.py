import numpy as np
import pytest

from oculi.calibration import (at_bound, calibration_figures, choose_threshold_for_precision, class_logits,
                               energy_score, expected_calibration_error, fit_temperature, nll,
                               reliability, selective_figures, softmax)


def calibrated_logits(n: int, classes: int = 4, seed: int = 0):
    """Logits and labels drawn so that softmax(logits) is calibrated by construction: each label is
    sampled from the very probabilities the logits give."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, size=(n, classes))
    probs = softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_temperature_of_a_calibrated_model_is_about_one():
    logits, labels = calibrated_logits(4000)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_temperature_undoes_overconfidence_and_ece_drops():
    logits, labels = calibrated_logits(6000, seed=1)
    sharp = logits * 4  # the same ranking, four times too sure of itself
    val, test = slice(0, 3000), slice(3000, None)
    t = fit_temperature(sharp[val], labels[val])
    assert t == pytest.approx(4.0, rel=0.15)
    before = expected_calibration_error(softmax(sharp[test]), labels[test])
    after = expected_calibration_error(softmax(sharp[test], t), labels[test])
    assert after < before / 3
    assert nll(sharp[test], labels[test], t) < nll(sharp[test], labels[test])
    # the winning class never changes
    assert (softmax(sharp, t).argmax(1) == sharp.argmax(1)).all()


def test_fitted_temperature_minimises_the_nll():
    logits, labels = calibrated_logits(500, seed=2)
    t = fit_temperature(logits * 2.5, labels)
    best = nll(logits * 2.5, labels, t)
    for other in (t * 0.9, t * 1.1):
        assert nll(logits * 2.5, labels, other) > best


def test_sigmoid_logit_reads_as_two_class_logits():
    z = np.array([[-3.0], [0.0], [2.0]])
    probs = softmax(class_logits(z, "sigmoid"))
    np.testing.assert_allclose(probs[:, 1], 1 / (1 + np.exp(-z[:, 0])))


def test_ece_by_hand():
    # two bins used (of 10): 0.95 confidence, 1 of 2 right; 0.55 confidence, 2 of 2 right
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55)
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(expected)
    rows = reliability(probs, labels, bins=10)
    assert [r["count"] for r in rows] == [0] * 5 + [2, 0, 0, 0, 2]
    assert rows[0]["accuracy"] is None


def test_confidence_of_one_falls_in_the_last_bin():
    rows = reliability(np.array([[1.0, 0.0]]), np.array([0]), bins=5)
    assert rows[-1]["count"] == 1


def test_threshold_for_precision_is_the_lowest_that_reaches_it():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 0, 1, 0], bool)
    assert choose_threshold_for_precision(confidence, correct, 1.0) == 0.9
    assert choose_threshold_for_precision(confidence, correct, 0.8) == 0.7  # 4 of 5
    assert choose_threshold_for_precision(confidence, correct, 0.5) == 0.6
    assert choose_threshold_for_precision(np.array([0.9]), np.array([False]), 0.5) is None


def test_threshold_never_splits_tied_confidences():
    confidence = np.array([0.9, 0.8, 0.8])
    correct = np.array([1, 1, 0], bool)
    # answering one 0.8 but not the other is not a threshold; both together are 2 of 3
    assert choose_threshold_for_precision(confidence, correct, 0.7) == 0.9


def test_selective_figures_agree_with_a_hand_count():
    confidence = np.array([0.99, 0.5, 0.85, 0.79, 0.8])
    correct = np.array([1, 0, 0, 1, 1], bool)
    figures = selective_figures(confidence, correct, 0.8)
    assert figures["answered"] == 3 and figures["coverage"] == pytest.approx(3 / 5)
    assert figures["selective_accuracy"] == pytest.approx(2 / 3)
    assert selective_figures(confidence, correct, None)["coverage"] == 1.0


def test_energy_is_higher_for_flat_small_logits():
    sure = np.array([[8.0, 0.0, 0.0]])
    vague = np.array([[0.5, 0.4, 0.3]])
    assert energy_score(vague)[0] > energy_score(sure)[0]
    assert energy_score(sure)[0] == pytest.approx(-np.log(np.exp(8) + 2))
    assert (energy_score(sure) < energy_score(vague)).all()


def test_calibration_figures_hold_before_and_after():
    logits, labels = calibrated_logits(1000, seed=3)
    figures = calibration_figures(logits * 3, labels, 3.0)
    assert figures["after"]["ece"] < figures["before"]["ece"]
    assert figures["before"]["log_loss"] == pytest.approx(nll(logits * 3, labels))


def test_a_temperature_at_the_end_of_its_range_is_noticed():
    logits, labels = calibrated_logits(500, seed=4)
    assert not at_bound(fit_temperature(logits, labels))
    right = logits.argmax(1)  # every answer right: sharper is always better, down to the range's end
    assert at_bound(fit_temperature(logits * 0.01, right))


def test_a_temperature_is_applied_only_when_images_it_was_not_fitted_on_confirm_it():
    from oculi.calibration import checked_temperature
    logits, labels = calibrated_logits(1000, seed=3)
    sharp = checked_temperature(logits * 4, labels)  # four times too sure: every fold sees the gain
    assert sharp["applied"] and sharp["temperature"] == pytest.approx(4.0, rel=0.2) and sharp["held_out_gain"] > 0
    assert sharp["temperature"] == sharp["fitted"] and sharp["fitted_on"] == "val (cross-fitted)"
    # The cat/dog val split: 199 of 200 right and sure, one wrong. T fitted on all of them sharpens;
    # the fold holding the error pays for it, so it is not applied.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = np.zeros((200, 2))
    logits[np.arange(200), labels] = rng.uniform(3, 6, 200)
    logits[0] = logits[0][::-1]  # the one mistake, as sure as the rest
    check = checked_temperature(logits, labels)
    assert check["fitted"] < 1 and not check["applied"] and check["temperature"] == 1.0
    assert check["why"].startswith("not applied: fitted on 4/5 of the val images")
    few = checked_temperature(logits[:6], labels[:6])
    assert not few["applied"] and "too few" in few["why"]


def test_a_temperature_fitted_out_of_fold_is_applied_only_when_val_confirms_it():
    from oculi.calibration import checked_temperature
    logits, labels = calibrated_logits(3000, seed=4)
    train, val = slice(0, 2000), slice(2000, None)
    sure = {"logits": logits[train] * 3, "labels": labels[train]}  # a head three times too sure, out of fold
    check = checked_temperature(logits[val] * 3, labels[val], fit_on=sure)
    assert check["applied"] and check["fitted"] == pytest.approx(3.0, rel=0.15)
    assert check["fitted_on"] == "train (out of fold)" and check["why"].startswith(
        "fitted on the out-of-fold logits of the 2000 training images, it lowered the log loss of the 1000 val")
    # out-of-fold logits that ask for flatter probabilities than val shows: val refuses them
    refused = checked_temperature(logits[val], labels[val], fit_on=sure)
    assert not refused["applied"] and refused["temperature"] == 1.0 and refused["held_out_gain"] < 0


def _smoothed(n: int, seed: int, mistakes: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a net trained with label smoothing: almost always right, and too soft about it (top ~0.8)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    logits = rng.normal(0, 0.3, (n, 10))
    logits[np.arange(n), labels] += 3.5
    for i in range(mistakes):
        logits[i] = np.roll(logits[i], 1)
    return logits, labels


def test_one_val_mistake_does_not_stop_a_temperature_that_fresh_images_confirm():
    # sklearn's digits: 179 val images, one wrong. The cross-fitting fold without that mistake must not fit a
    # T at the range's end (all right: sharper is always better), or the check refuses a T that helps.
    from oculi.calibration import checked_temperature
    logits, labels = _smoothed(179, seed=0, mistakes=1)
    check = checked_temperature(logits, labels)
    assert check["applied"] and 0.3 < check["temperature"] < 0.6
    fresh, fresh_labels = _smoothed(2000, seed=1, mistakes=20)
    assert nll(fresh, fresh_labels, check["temperature"]) < 0.5 * nll(fresh, fresh_labels)


def test_the_prior_keeps_a_fit_on_right_answers_finite_and_moves_a_pinned_fit_little():
    logits, labels = _smoothed(150, seed=2, mistakes=0)
    assert not at_bound(fit_temperature(logits, labels))
    pinned, pinned_labels = calibrated_logits(2000, seed=5)
    assert fit_temperature(pinned * 2, pinned_labels) == pytest.approx(2.0, rel=0.1)
