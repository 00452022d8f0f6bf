"""The model card (report/card.py): README.md in the Hugging Face format, written at the end of training and by
``oculi card``, from the run folder's own figures."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from oculi.cli import main
from oculi.errors import OculiError
from oculi.report.card import accuracy_interval, write_card


def _header_and_body(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


@pytest.fixture(scope="module")
def digits_run(tiny_run):
    return tiny_run("digits", name="digits", model="fast-cnn", epochs=3, report=True)


@pytest.mark.slow
def test_training_writes_a_card_whose_header_and_tables_are_the_runs_figures(digits_run):
    metrics = json.loads((digits_run.run_dir / "test_metrics.json").read_text())
    header, body = _header_and_body((digits_run.run_dir / "README.md").read_text())
    assert header["library_name"] == "oculi" and header["pipeline_tag"] == "image-classification"
    result = header["model-index"][0]["results"][0]
    figures = {m["type"]: m["value"] for m in result["metrics"]}
    assert figures["accuracy"] == round(metrics["accuracy"], 4) and result["dataset"]["name"] == "digits"
    rows = [line for line in body.splitlines() if line.startswith("| ") and line.split(" | ")[0][2:].isdigit()]
    assert len(rows) == 10  # one per class, with its recall as test_metrics.json has it
    assert f"{metrics['per_class'][3]['recall']:.3f}" in rows[3]
    low, high = accuracy_interval(round(metrics["accuracy"] * metrics["n"]), metrics["n"])
    assert f"95% interval {low:.1%} to {high:.1%}" in body
    assert "## Exports\n\nNone yet" in body


@pytest.mark.slow
def test_oculi_card_lists_an_export_with_its_agreement(digits_run, tmp_path, capsys):
    run = shutil.copytree(digits_run.run_dir, tmp_path / "run")
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert main(["card", str(run)]) == 0
    body = (run / "README.md").read_text()
    assert "- `model.onnx` (fp32):" in body and "top-1 agreement 100.00%" in body


def test_the_accuracy_interval_is_wilsons_and_stays_inside_zero_and_one():
    low, high = accuracy_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)  # 10/10 right still allows 72%
    low, high = accuracy_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = accuracy_interval(90, 100)
    assert (low, high) == pytest.approx((0.8256, 0.9448), abs=1e-4)  # asymmetric about 0.9, as it should be


def test_a_run_without_test_figures_gets_no_card_and_says_why(tmp_path):
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(OculiError, match=r"no test_metrics\.json \(nothing was held out to measure\)"):
        write_card(tmp_path)
