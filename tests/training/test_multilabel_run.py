"""Multi-label end to end (issue 26): a table of label sets made here (coloured squares on noise: an image's
labels are the colours it holds) trains with the defaults, keeps its epoch by val mAP, chooses thresholds,
scores label sets on test; predict, evaluate, export, serve, report and card all speak label sets."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import oculi
from oculi.errors import BundleError, OculiError
from oculi.runtime.bundle import check_meta

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def squares(rng: np.random.Generator, labels: list[str], side: int = 32) -> Image.Image:
    """Noise with one square of each label's colour, each in its own quadrant."""
    pixels = (rng.random((side, side, 3)) * 60 + 100).astype(np.uint8)
    half = side // 2
    for name, quadrant in zip(labels, rng.permutation(4)):
        y, x = divmod(int(quadrant), 2)
        pixels[y * half + 3:y * half + half - 3, x * half + 3:x * half + half - 3] = COLOURS[name]
    return Image.fromarray(pixels)


def make_label_sets(folder: Path, images: int = 240, seed: int = 0) -> Path:
    """images/NNN.png and labels.csv (path,label with ';' between labels): one or two colours an image."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(images):
        labels = sorted(rng.choice(names, int(rng.integers(1, 3)), replace=False).tolist())
        squares(rng, labels).save(folder / "images" / f"{i:03d}.png")
        rows.append((f"images/{i:03d}.png", ";".join(labels)))
    with open(folder / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return folder / "labels.csv"


@pytest.fixture(scope="module")
def label_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("label-sets")
    table = make_label_sets(folder / "data")
    result = oculi.train(str(table), epochs=25, seed=0, out=str(folder / "run"), progress=False, cache=False)
    return result, table


def test_label_sets_train_with_a_sigmoid_per_class_and_score_as_label_sets(label_run):
    result, _ = label_run
    run = result.run_dir
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["head"] == "multilabel" and config["select_by"] == "map"
    metrics = json.loads((run / "test_metrics.json").read_text())
    for key in ("mAP", "micro_mAP", "subset_accuracy", "hamming_loss", "macro_avg", "micro_avg", "co_occurrence"):
        assert key in metrics
    assert metrics["mAP"] > 0.9 and metrics["macro_avg"]["f1"] > 0.8  # colours are easy to see
    assert all(c["ap"] is not None and 0 <= c["threshold"] <= 1 for c in metrics["per_class"])
    meta = json.loads((run / "model.json").read_text())
    assert meta["model"]["head"] == "multilabel" and len(meta["thresholds"]) == 3
    rows = list(csv.DictReader(open(run / "test_predictions.csv")))
    assert {"path", "true", "predicted", "p_red", "p_green", "p_blue"} <= set(rows[0])
    history = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert all("val_map" in row for row in history)
    for name in ("pr_curves.png", "co_occurrence.png", "report.html", "README.md"):
        assert (run / name).is_file()


def test_predict_gives_each_new_image_its_label_set(label_run, tmp_path):
    result, _ = label_run
    rng = np.random.default_rng(99)
    squares(rng, ["blue", "red"]).save(tmp_path / "both.png")
    squares(rng, ["green"]).save(tmp_path / "green.png")
    model = oculi.load(result.run_dir)
    both, green = model.predict([str(tmp_path / "both.png"), str(tmp_path / "green.png")], top_k=3)
    assert set(both.labels) == {"blue", "red"} and both.label in ("blue;red", "red;blue")
    assert green.labels == ["green"] and len(both.top_k) == 3
    assert both.to_dict()["labels"] == both.labels


def test_the_cli_predicts_label_sets_through_the_gated_export(label_run, tmp_path):
    from typer.testing import CliRunner
    from oculi.cli import app
    result, _ = label_run
    assert (result.run_dir / "model.onnx").is_file()  # trained on a CPU: exported and gated at the end
    gate = json.loads((result.run_dir / "model.onnx.json").read_text())
    assert gate["parity"]["set_agreement"] >= 0.999 and gate["thresholds"] == \
        json.loads((result.run_dir / "model.json").read_text())["thresholds"]
    squares(np.random.default_rng(5), ["red", "green"]).save(tmp_path / "rg.png")
    answer = CliRunner().invoke(app, ["predict", str(result.run_dir), str(tmp_path / "rg.png"), "--json"])
    assert answer.exit_code == 0, answer.output
    row = json.loads(next(line for line in answer.stdout.splitlines() if line.startswith("{")))
    assert set(row["labels"]) == {"red", "green"}


def test_evaluate_reproduces_the_test_map_from_the_run_and_from_the_table(label_run, tmp_path):
    from oculi.evaluate import evaluate_folder, evaluate_run
    result, table = label_run
    model = oculi.load(result.run_dir)
    again, _ = evaluate_run(model, result.run_dir, out=tmp_path / "e1")
    trained = json.loads((result.run_dir / "test_metrics.json").read_text())
    assert again["mAP"] == pytest.approx(trained["mAP"], abs=1e-6)
    assert again["subset_accuracy"] == pytest.approx(trained["subset_accuracy"])
    whole, _ = evaluate_folder(model, table, out=tmp_path / "e2")
    assert whole["n"] == 240 and whole["multi_label"]


def test_each_class_is_calibrated_and_predict_answers_with_the_calibrated_probabilities(label_run):
    result, table = label_run
    run = result.run_dir
    metrics = json.loads((run / "test_metrics.json").read_text())
    c = metrics["calibration"]
    assert [r["class"] for r in c["classes"]] == ["blue", "green", "red"]
    assert c["log_loss_after"] == pytest.approx(metrics["log_loss"])
    # a temperature is kept only where held-out val images confirmed it, and then it lowered the test log loss
    # of these easy colours (label smoothing leaves the raw sigmoids far from 0 and 1)
    assert all(r["applied"] == (r["held_out_gain"] is not None and r["held_out_gain"] > 0) for r in c["classes"])
    kept = json.loads((run / "model.json").read_text())["calibration"]
    if c["applied"]:
        assert kept["class_temperatures"] == c["temperatures"] and c["log_loss_after"] < c["log_loss_before"]
        export = json.loads((run / "model.onnx.json").read_text())
        assert export["calibration"]["class_temperatures"] == c["temperatures"]
    # predict gives the probabilities the test metrics were computed from
    rows = list(csv.DictReader(open(run / "test_predictions.csv")))[:6]
    answers = oculi.load(run).predict([str(table.parent / r["path"]) for r in rows], top_k=3)
    for row, answer in zip(rows, answers):
        got = {k["label"]: k["probability"] for k in answer.to_dict()["top_k"]}
        assert all(got[name] == pytest.approx(float(row[f"p_{name}"]), abs=1e-4) for name in COLOURS)


def test_a_bundle_with_wrong_class_temperatures_is_refused_by_name(label_run, tmp_path):
    result, _ = label_run
    meta = json.loads((result.run_dir / "model.json").read_text())
    for bad in ([1.0, 1.0], [1.0, 0.0, 1.0], "2"):
        with pytest.raises(BundleError, match="class_temperatures"):
            check_meta({**meta, "calibration": {**meta["calibration"], "class_temperatures": bad}}, tmp_path / "m")
    one_label = {**meta, "model": {**meta["model"], "head": "softmax"}, "calibration": {
        "temperature": 1.0, "abstain_threshold": None, "class_temperatures": [1.0, 1.0, 1.0]}}
    one_label.pop("thresholds")
    with pytest.raises(BundleError, match="class_temperatures belongs to a multilabel head only"):
        check_meta(one_label, tmp_path / "m")


def test_a_bundle_with_wrong_thresholds_is_refused_by_name(label_run, tmp_path):
    result, _ = label_run
    meta = json.loads((result.run_dir / "model.json").read_text())
    for bad in ([0.5, 0.5], [0.5, 2.0, 0.5], "0.5"):
        with pytest.raises(BundleError, match="thresholds"):
            check_meta({**meta, "thresholds": bad}, tmp_path / "model.json")
    with pytest.raises(BundleError, match="thresholds is missing"):
        check_meta({k: v for k, v in meta.items() if k != "thresholds"}, tmp_path / "model.json")


def test_the_report_draws_label_sets(label_run):
    result, _ = label_run
    page = (result.run_dir / "report.html").read_text()
    for words in ("threshold", "precision-recall curves per class", "label co-occurrence matrix",
                  "every label right", "Grad-CAM for"):
        assert words in page, words
    card = (result.run_dir / "README.md").read_text()
    assert "multi-label-classification" in card and "mAP" in card


def test_serve_answers_with_the_label_set(label_run, tmp_path):
    from tests.deploy.conftest import make_service, serving
    result, _ = label_run
    squares(np.random.default_rng(7), ["blue", "green"]).save(tmp_path / "bg.png")
    with serving(make_service(result.run_dir)) as client:
        upload = ("files", ("bg.png", (tmp_path / "bg.png").read_bytes(), "application/octet-stream"))
        response = client.post("/v1/predict", files=[upload])
    assert response.status_code == 200, response.text
    assert set(response.json()["predictions"][0]["labels"]) == {"blue", "green"}


def test_options_that_cannot_hold_label_sets_are_refused(label_run, tmp_path):
    _, table = label_run
    for settings, flag in ((dict(head="softmax"), "--head softmax"), (dict(sampler="balanced"), "--sampler balanced"),
                           (dict(select_by="accuracy"), "--select-by accuracy")):
        with pytest.raises(OculiError, match=flag):
            oculi.train(str(table), out=str(tmp_path / "x"), progress=False, **settings)
    with pytest.raises(OculiError, match="--labels: .* label sets"):
        from oculi.check.run import run_check
        run_check(str(table), labels=True, out=tmp_path / "c")
