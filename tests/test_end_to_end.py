"""Whole runs, as a user does them: train, load, predict, evaluate, resume."""

import json

import numpy as np
import pytest
import torch

import oculi
from oculi.evaluate import evaluate_folder
from tests.conftest import make_class_folder, without_timing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_run(tiny_run):
    """The README's main job: `oculi train digits`, all defaults (its report and cache too)."""
    return tiny_run("digits", name="digits", report=True, cache=True)


def test_digits_default_reaches_95_percent(digits_run):
    assert digits_run.test_metrics["split"] == "test"
    assert digits_run.test_metrics["n"] >= 170
    assert digits_run.test_metrics["accuracy"] >= 0.95
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "model.json", "curves.png",
                 "confusion_matrix.png", "split.csv", "skipped_files.csv", "test_metrics.json"):
        assert (digits_run.run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (digits_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))


def test_bundle_round_trip_gives_the_test_predictions(digits_run):
    clf = oculi.load(digits_run.run_dir)
    images = torch.from_numpy(_digits_images(digits_run))
    probs = clf.predict_proba(list(images))
    saved = np.loadtxt(digits_run.run_dir / "test_predictions.csv", delimiter=",", skiprows=1,
                       usecols=3, dtype=float)
    np.testing.assert_allclose(probs.max(1), saved, atol=1e-6)
    assert clf.predict(images[0], top_k=50)[0].top_k.__len__() == 10  # k capped at the class count


def _digits_images(run):
    from oculi.data.builtin import load_builtin
    ds = load_builtin("digits")
    paths = [line.split(",")[0] for line in (run.run_dir / "test_predictions.csv").read_text().splitlines()[1:]]
    return ds.images[[int(p.rsplit("/", 1)[1]) for p in paths]]


def test_reproducible_with_the_same_seed(tmp_path):
    a = oculi.train("digits", epochs=2, out=str(tmp_path / "a"), progress=False)
    b = oculi.train("digits", epochs=2, out=str(tmp_path / "b"), progress=False)
    assert a.history[-1]["val_loss"] == b.history[-1]["val_loss"]
    assert a.test_metrics == b.test_metrics


@pytest.mark.parametrize("lookahead", [False, True])  # Lookahead's slow weights must survive the crash too
def test_resume_after_a_crash_mid_epoch_matches_an_uninterrupted_run(tmp_path, monkeypatch, lookahead):
    options = dict(data="digits", epochs=4, image_size=12, progress=False, lookahead=lookahead)
    full = oculi.train(out=str(tmp_path / "full"), **options)

    from oculi.training import loop
    real_set_lr, calls = loop.set_lr, {"n": 0}

    def crash_in_epoch_three(optimizer, lr):
        calls["n"] += 1
        if calls["n"] == 2 * 22 + 5:  # digits: 22 steps an epoch at batch 64; die 5 steps into epoch 3
            raise KeyboardInterrupt
        real_set_lr(optimizer, lr)

    monkeypatch.setattr(loop, "set_lr", crash_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        oculi.train(out=str(tmp_path / "crashed"), **options)
    monkeypatch.setattr(loop, "set_lr", real_set_lr)
    assert len((tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = oculi.train(resume=tmp_path / "crashed")
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]
    assert resumed.test_metrics == full.test_metrics
    assert (tmp_path / "full" / "test_predictions.csv").read_text() == \
        (tmp_path / "crashed" / "test_predictions.csv").read_text()


def test_folder_run_with_bad_files_skips_and_reports_them(tmp_path):
    data = make_class_folder(tmp_path / "photos", per_class=10, classes=("cats", "dogs"))
    (data / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "dogs" / "empty.png").write_bytes(b"")
    (data / "dogs" / "readme.txt").write_text("hi")
    (data / "dogs" / ".DS_Store").write_bytes(b"\0\0")
    run = oculi.train(str(data), epochs=2, out=str(tmp_path / "run"), progress=False)
    assert sorted(p for p, _ in run.skipped) == ["cats/broken.jpg", "dogs/empty.png", "dogs/readme.txt"]
    listed = (tmp_path / "run" / "skipped_files.csv").read_text().splitlines()
    assert len(listed) == 4 and listed[0] == "path,reason"


def test_predict_matches_evaluate(tmp_path):
    data = make_class_folder(tmp_path / "photos", per_class=10)
    run = oculi.train(str(data), epochs=3, out=str(tmp_path / "run"), progress=False)
    clf = oculi.load(run.run_dir)
    metrics, _ = evaluate_folder(clf, str(data), out=tmp_path / "eval")
    files = sorted(data.rglob("*.png"))
    predicted = [clf.classes.index(p.label) for p in clf.predict(files)]
    truth = [clf.classes.index(f.parent.name) for f in files]
    assert metrics["accuracy"] == pytest.approx(np.mean(np.array(predicted) == np.array(truth)))


def test_sigmoid_head_balanced_sampler_and_class_weights(tmp_path):
    data = make_class_folder(tmp_path / "two", per_class=12, classes=("cars", "elephants"), size=(32, 32))
    run = oculi.train(str(data), model="small-cnn", epochs=2, sampler="balanced", class_weights="auto",
                      label_smoothing=0.1, out=str(tmp_path / "run"), progress=False)
    assert run.config.head == "sigmoid"  # the tutorial's one-output head, chosen for 2 classes
    clf = oculi.load(run.run_dir)
    assert clf.model.head[-1].out_features == 1
    probs = clf.predict_proba(sorted(data.rglob("*.png")))
    assert probs.shape == (24, 2) and np.allclose(probs.sum(1), 1)


def test_kill_9_mid_run_then_resume_gives_the_same_model(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["digits", "--epochs", "8", "--image-size", "16", "-q"]
    command = [sys.executable, "-m", "oculi.cli", "train"]
    subprocess.run(command + args + ["--no-report", "--out", str(tmp_path / "full")], check=True)  # its report is not compared
    victim = subprocess.Popen(command + args + ["--out", str(tmp_path / "killed")])
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            os.kill(victim.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "model.json").exists()
    subprocess.run(command + ["--resume", str(tmp_path / "killed"), "-q"], check=True)
    assert (tmp_path / "killed" / "report.html").is_file()  # a resumed run is reported as a whole one
    for name in ("test_predictions.csv", "metrics.jsonl"):
        full = (tmp_path / "full" / name).read_text()
        resumed = (tmp_path / "killed" / name).read_text()
        if name == "metrics.jsonl":  # wall-clock fields differ; everything learned must not
            full, resumed = (_without_timing(t) for t in (full, resumed))
        assert full == resumed, name


def _without_timing(text: str) -> list[dict]:
    return without_timing([json.loads(line) for line in text.splitlines()])
