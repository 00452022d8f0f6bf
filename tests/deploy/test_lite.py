"""Fast without asking (issue 27): a CPU run ends with a gated model.onnx, and `oculi predict` runs it with
numpy, PIL and ONNX Runtime alone, giving the torch engine's answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from oculi import api
from oculi.cli import main
from oculi.console import Reporter
from oculi.deploy import export
from oculi.deploy.export import REFUSED_FILE
from oculi.deploy.exported import find_export
from oculi.deploy.lite import ExportClassifier, ExportWarning, load_classifier
from oculi.deploy.predict import Classifier
from oculi.errors import OculiError
from oculi.runtime.bundle import verified_meta


@pytest.fixture(scope="module")
def run_and_data(tiny_data, tiny_run):
    """The session's tiny CNN run on red, green and blue images (read only) and its data."""
    data = tiny_data(per_class=12)
    return tiny_run(data, model="simple-cnn", epochs=1).run_dir, data


def _images(data):
    return sorted(str(p) for p in data.rglob("*.png"))


def test_a_cpu_run_ends_with_an_export_that_passed_the_gate(run_and_data):
    run, _ = run_and_data
    meta = json.loads((run / "model.onnx.json").read_text())
    assert meta["parity"]["passed"] is True and meta["parity"]["top1_agreement"] == 1.0
    assert meta["parity"]["source"].startswith("the test split of")
    bundle, _, _ = verified_meta(run)
    assert find_export(run, bundle) == (run / "model.onnx", "")
    assert not (run / REFUSED_FILE).exists()


def test_auto_predicts_with_the_export_and_says_so(run_and_data, capsys):
    run, data = run_and_data
    assert isinstance(load_classifier(run, engine="auto"), ExportClassifier)
    assert main(["predict", str(run), _images(data)[0], "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"engine: onnx ({run / 'model.onnx'}, ONNX Runtime, no torch)\n"
    assert json.loads(captured.out)["label"] in ("red", "green", "blue")
    assert main(["predict", str(run), _images(data)[0], "--engine", "torch"]) == 0
    assert capsys.readouterr().err == "engine: torch (cpu)\n"


@pytest.mark.parametrize("min_confidence", [None, 0.5])
def test_the_torch_free_engine_gives_the_torch_engines_answers(run_and_data, min_confidence):
    run, data = run_and_data
    engines = [load_classifier(run, engine="auto"), Classifier.load(run, device="cpu", engine="torch")]
    for classifier in engines:
        classifier.min_confidence = min_confidence
    lite, torch_ = ([p.to_dict() for p in c.predict_files(_images(data), top_k=2, batch_size=5)] for c in engines)
    assert [p["source"] for p in lite] == [p["source"] for p in torch_] and len(lite) == 36
    for a, b in zip(lite, torch_):
        # The same keys and labels; probabilities within float rounding and the resize's one or two levels.
        assert a.keys() == b.keys() and (a["label"], a["top_label"]) == (b["label"], b["top_label"])
        assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-3)
        assert a["ood_score"] == pytest.approx(b["ood_score"], abs=1e-2)
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]


def test_predict_through_the_export_imports_no_torch(run_and_data):
    run, data = run_and_data
    code = ("import sys; from oculi.cli import main; rc = main(['predict', sys.argv[1], sys.argv[2], '--csv']); "
            "heavy = sorted({'torch', 'torchvision', 'timm'} & {m.split('.')[0] for m in sys.modules}); "
            "print('heavy:', heavy, rc)")
    result = subprocess.run([sys.executable, "-c", code, str(run), str(data)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == "path,label,confidence,top_k,top_label,ood_score"
    assert result.stdout.splitlines()[-1] == "heavy: [] 0"


def test_a_changed_export_is_refused_auto_warns_and_uses_torch(run_and_data, tmp_path, capsys):
    run = shutil.copytree(run_and_data[0], tmp_path / "run")
    graph = run / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with pytest.warns(ExportWarning, match="model.onnx: checksum does not match model.onnx.json"):
        classifier = load_classifier(run, engine="auto")
    assert classifier.engine == "torch" and not isinstance(classifier, ExportClassifier)
    with pytest.raises(OculiError, match=r"^--engine onnx: .*model.onnx: checksum does not match"):
        load_classifier(run, engine="onnx")
    assert main(["predict", str(run), str(next(run_and_data[1].rglob("*.png")))]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: ") and err[0].endswith("(export again); predicting with torch")
    assert err[1].startswith("engine: torch (cpu; ")


def test_an_edited_bundle_is_refused_before_its_export_is_used(run_and_data, tmp_path):
    run = shutil.copytree(run_and_data[0], tmp_path / "run")
    meta = json.loads((run / "model.json").read_text())
    meta["classes"] = list(reversed(meta["classes"]))
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(OculiError, match="model.json: its content does not match its bundle_sha256"):
        load_classifier(run, engine="auto")


def test_an_export_the_gate_refuses_at_the_end_of_training_writes_nothing(run_and_data, tmp_path, monkeypatch):
    run_dir = shutil.copytree(run_and_data[0], tmp_path / "run")
    for name in ("model.onnx", "model.onnx.json"):
        (run_dir / name).unlink()
    right = export.ProbabilityGraph.forward
    monkeypatch.setattr(export.ProbabilityGraph, "forward",
                        lambda self, images: (right(self, images)[0].roll(1, dims=1), right(self, images)[1]))
    warnings = []
    reporter = Reporter(quiet=True)
    monkeypatch.setattr(reporter, "warn", warnings.append)
    run = api.RunResult(run_dir, None, [], [], None, [])
    assert api._write_export(run, reporter) is None
    assert not (run_dir / "model.onnx").exists() and not (run_dir / "model.onnx.json").exists()
    assert json.loads((run_dir / REFUSED_FILE).read_text())["parity"]["passed"] is False
    assert len(warnings) == 1 and "model.onnx disagrees with the bundle" in warnings[0]
    assert warnings[0].endswith("predict runs torch")
    assert isinstance(load_classifier(run_dir, engine="auto"), Classifier)


def test_export_none_leaves_the_run_without_one(tiny_data, tiny_run):
    run = tiny_run(tiny_data(per_class=6), model="mlp", epochs=1, export="none")
    assert not (run.run_dir / "model.onnx").exists()
