"""Trust the answers, end to end: the temperature a run fits and keeps, predict's and evaluate's threshold,
the export with the temperature in its graph, and the OOD score on a class the model never saw."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from oculi.calibration import (Calibration, class_logits, expected_calibration_error, fit_temperature, nll,
                               softmax)
from oculi.cli import main
from oculi.data.loading import load_split
from oculi.data.sources import DataSource
from oculi.data.split import Record, read_manifest
from oculi.deploy.export import export_classifier
from oculi.deploy.predict import Classifier
from oculi.errors import BundleError
from oculi.runtime.bundle import bundle_calibration, seal
from oculi.runtime.engines import predict_logits

KNOWN, HELD_OUT = range(8), (8, 9)  # the run learns digits 0-7; 8 and 9 are what it has never seen


def write_digits(root, labels, per_class=None):
    """sklearn's digits as 8x8 PNGs in root/<digit>/ (``per_class``: at most that many of each)."""
    digits = load_digits()
    seen = {}
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        if label not in labels or seen.get(label, 0) == (per_class or 10**9):
            continue
        seen[label] = seen.get(label, 0) + 1
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, tiny_run):
    """fast-cnn on digits 0-7 with an abstain threshold chosen for 99% precision on val. Read only: the
    tests that edit its model.json take a copy."""
    root = tmp_path_factory.mktemp("trust")
    data = write_digits(root / "known", KNOWN)
    # Flipped (class folders 0-7 are not by default): a model that still errs, whose calibration has something
    # to fix (unflipped, its test ECE is 0.03 at 5x too sharp, within the noise of ~140 images).
    run = tiny_run(data, model="fast-cnn", epochs=6, target_precision=0.99, flip=True, tta="flip")
    return run, root


def resealed(run_dir, **calibration):
    """The run's model.json with its calibration section replaced (None: removed), sealed again."""
    path = run_dir / "model.json"
    meta = json.loads(path.read_text())
    meta.pop("calibration")
    if calibration:
        meta["calibration"] = calibration
    path.write_text(json.dumps(seal(meta)))


@pytest.mark.slow
def test_the_run_fits_a_temperature_and_keeps_it_with_its_threshold(digits_run):
    run, _ = digits_run
    metrics = json.loads((run.run_dir / "test_metrics.json").read_text())
    c = metrics["calibration"]
    assert c["fitted_on"] == "val" and c["temperature"] != 1.0
    assert c["after"]["log_loss"] <= c["before"]["log_loss"] + 1e-3  # fitted on val, measured on test
    clf = Classifier.load(run.run_dir, device="cpu")
    assert clf.calibration.temperature == pytest.approx(c["temperature"])
    assert clf.min_confidence == metrics["abstain"]["threshold"] is not None
    assert metrics["log_loss"] == pytest.approx(c["after"]["log_loss"], rel=1e-6)  # headline: calibrated


@pytest.mark.slow
def test_temperature_scaling_fixes_a_deliberately_overconfident_model(digits_run):
    run, root = digits_run
    clf = Classifier.load(run.run_dir, device="cpu")
    # the images it did not train on, as the run's split.csv lists them
    held_out = [Record(path, clf.classes.index(name), split) for path, name, split in
                read_manifest(run.run_dir / "split.csv") if split in ("val", "test")]
    images = load_split(DataSource("known", clf.classes, held_out, root=root / "known"), held_out,
                        clf.preprocessing, [])
    raw = class_logits(predict_logits(clf.model, images.images, clf.preprocessing, clf.device).numpy(), "softmax")
    labels = images.labels.numpy()
    # Logits 5x sharper than calibrated ones: the same ranking, far too sure of itself.
    logits = raw * 5 / fit_temperature(raw, labels)
    val, test = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    t = fit_temperature(logits[val], labels[val])
    before = expected_calibration_error(softmax(logits[test]), labels[test])
    after = expected_calibration_error(softmax(logits[test], t), labels[test])
    assert t > 2 and after < 0.75 * before  # ~140 test images: ECE is noisy, the drop is not
    assert nll(logits[test], labels[test], t) < nll(logits[test], labels[test])


@pytest.mark.slow
def test_min_confidence_answers_unknown_and_evaluate_agrees_with_a_hand_count(digits_run, tmp_path, capsys):
    run, _ = digits_run
    folder = write_digits(tmp_path / "eval", KNOWN, per_class=10)
    clf = Classifier.load(run.run_dir, device="cpu")
    threshold = float(np.median([p.confidence for p in clf.predict_files(sorted(folder.rglob("*.png")))]))
    assert main(["predict", str(run.run_dir), str(folder), "--min-confidence", str(threshold), "--json",
                 "--engine", "torch"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 80
    for row in rows:
        assert (row["label"] == "unknown") == (row["confidence"] < threshold)
        assert row["top_label"] == row["top_k"][0]["label"] and row["ood_score"] is not None
    answered = [r for r in rows if r["label"] != "unknown"]
    right = sum(r["label"] == r["source"].split("/")[-2] for r in answered)
    assert 0 < len(answered) < 80
    assert main(["evaluate", str(run.run_dir), "--data", str(folder), "--min-confidence", str(threshold),
                 "--json", "--out", str(tmp_path / "out")]) == 0
    abstain = json.loads(capsys.readouterr().out)["abstain"]
    assert abstain["answered"] == len(answered) and abstain["coverage"] == pytest.approx(len(answered) / 80)
    assert abstain["selective_accuracy"] == pytest.approx(right / len(answered))


@pytest.mark.slow
def test_min_confidence_out_of_range_is_one_error_line(digits_run, capsys):
    run, _ = digits_run
    assert main(["predict", str(run.run_dir), str(run.run_dir), "--min-confidence", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --min-confidence must be between 0 and 1, got 1.5"


@pytest.mark.slow
def test_the_ood_score_ranks_a_held_out_class_above_the_known_ones(digits_run, tmp_path):
    run, _ = digits_run
    known = write_digits(tmp_path / "known", KNOWN, per_class=20)
    unseen = write_digits(tmp_path / "unseen", HELD_OUT, per_class=40)
    clf = Classifier.load(run.run_dir, device="cpu")
    scores = {name: np.array([p.ood_score for p in clf.predict_files(sorted(folder.rglob("*.png")))])
              for name, folder in (("known", known), ("unseen", unseen))}
    from sklearn.metrics import roc_auc_score  # how often an unseen digit scores above a known one
    area = roc_auc_score(np.r_[np.zeros(len(scores["known"])), np.ones(len(scores["unseen"]))],
                         np.r_[scores["known"], scores["unseen"]])
    print(f"energy-score AUROC, digits 8 and 9 against 0-7: {area:.3f}")
    assert area > 0.65  # chance is 0.5; this run measures 0.74


@pytest.mark.slow
def test_a_bundle_without_calibration_loads_with_t_1_and_no_threshold(digits_run, tmp_path):
    run, _ = digits_run
    copy = shutil.copytree(run.run_dir, tmp_path / "old")
    resealed(copy)
    clf = Classifier.load(copy, device="cpu")
    assert clf.calibration == Calibration() and clf.min_confidence is None
    assert bundle_calibration({}) == Calibration()


@pytest.mark.parametrize("calibration, message", [({"temperature": -1}, "calibration.temperature"),
                                                  ({"temperature": 1, "abstain_threshold": 2}, "abstain_threshold"),
                                                  ({"temperature": 1, "bias": 0}, "calibration.bias")])
@pytest.mark.slow
def test_a_bad_calibration_is_refused(digits_run, tmp_path, calibration, message):
    run, _ = digits_run
    copy = shutil.copytree(run.run_dir, tmp_path / "bad")
    resealed(copy, **calibration)
    with pytest.raises(BundleError, match=message):
        Classifier.load(copy, device="cpu")


@pytest.mark.slow
def test_the_exported_graph_divides_by_the_temperature(digits_run, tmp_path):
    run, root = digits_run
    copy = shutil.copytree(run.run_dir, tmp_path / "hot")
    resealed(copy, temperature=3.0, abstain_threshold=None)
    clf = Classifier.load(copy, device="cpu")
    images = torch.stack([clf.prepare(p) for p in sorted((root / "known").rglob("*.png"))[:64]])
    meta = export_classifier(clf, images, "onnx", copy, "test images")
    assert meta["parity"]["max_abs_diff"] < 1e-4 and meta["calibration"]["temperature"] == 3.0
    onnx = Classifier.load(copy, device="cpu", engine="onnx")
    assert onnx.engine == "onnx"
    np.testing.assert_allclose(onnx.prepared_probs(images), clf.prepared_probs(images), atol=1e-4)
    clf.calibration = Calibration(1.0)
    assert np.abs(onnx.prepared_probs(images) - clf.prepared_probs(images)).max() > 0.01


def test_a_threshold_and_a_target_precision_together_are_refused():
    from oculi.config import TrainConfig
    from oculi.errors import OculiError
    with pytest.raises(OculiError, match="--abstain-threshold and --target-precision"):
        TrainConfig(abstain_threshold=0.5, target_precision=0.9).validate()
