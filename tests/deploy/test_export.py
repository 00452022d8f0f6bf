"""oculi export: one file that takes uint8 images and returns the bundle's probabilities, parity-gated."""

import json
import shutil

import numpy as np
import pytest
import torch

from oculi.cli import main
from oculi.data.transforms import Preprocessing
from oculi.deploy import export
from oculi.deploy.export import FORMATS, REFUSED_FILE, TorchScriptRunner, gate_figures
from oculi.deploy.predict import Classifier
from oculi.evaluate import labelled_check_images
from oculi.models.spec import ModelSpec
from oculi.runtime.bundle import save_bundle
from oculi.runtime.onnx import OnnxRunner
from tests.conftest import make_class_folder

RUNNERS = {"onnx": lambda path: OnnxRunner(path.read_bytes()), "torchscript": TorchScriptRunner}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, tiny_run):
    """fast-cnn trained on the built-in digits (its test split is read back for the gate). Three epochs: after
    one its probabilities are still nearly uniform, too easy to match. The session's run that
    tests/report/test_build.py reads; this module's own copy of it, since the tests export into it."""
    run = tiny_run("digits", name="digits", model="fast-cnn", epochs=3, report=True)
    return shutil.copytree(run.run_dir, tmp_path_factory.mktemp("export") / "run")


def _bundle(folder, name, size, tta="none"):
    """An untrained bundle of ``name`` (3 classes, RGB) saved as training saves one."""
    torch.manual_seed(0)
    spec = ModelSpec(name, 3, 3, size, "softmax")
    save_bundle(folder, spec.build(), spec, ["ant", "bee", "wasp"],
                Preprocessing(image_size=size, channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), tta=tta))
    return folder


def _exported(folder, fmt):
    file = folder / FORMATS[fmt].file
    return RUNNERS[fmt](file), json.loads((folder / f"{file.name}.json").read_text())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.slow
def test_export_of_a_trained_run_passes_the_gate_and_gives_the_bundles_probabilities(digits_run, fmt, capsys):
    assert main(["export", str(digits_run), "--format", fmt]) == 0
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    runner, meta = _exported(digits_run, fmt)
    classifier = Classifier.load(digits_run, device="cpu")
    assert meta["bundle_sha256"] == classifier.meta["bundle_sha256"] and meta["classes"] == classifier.classes
    assert meta["parity"]["top1_agreement"] == 1.0 and meta["parity"]["images"] > 100
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == ["N", 1, 8, 8]
    images, _, _ = labelled_check_images(classifier, digits_run)
    for batch in (images[:1], images[1:8]):  # any batch size
        assert batch.dtype == torch.uint8
        probs = runner(batch).numpy()
        assert probs.shape == (len(batch), 10)
        assert np.abs(probs - classifier.prepared_probs(batch)).max() < 1e-4
        # the second output: the OOD score predict gives (the energy of the logits), not a copy of anything
        _, energy = runner.outputs(batch)
        expected = classifier.prepared_outputs(batch)[1]
        assert energy.shape == (len(batch),) and np.abs(energy.numpy() - expected).max() < 1e-3
    assert meta["parity"]["energy_max_abs_diff"] < 1e-3 and meta["ood_output"]["name"] == "energy"
    assert not list(digits_run.glob(".*.tmp"))


def _broken_forward(monkeypatch) -> None:
    """Exports whose probabilities are the right ones shifted by one class: what the gate must refuse."""
    right = export.ProbabilityGraph.forward

    def shifted(self, images):
        probs, energy = right(self, images)
        return probs.roll(1, dims=1), energy
    monkeypatch.setattr(export.ProbabilityGraph, "forward", shifted)


@pytest.mark.slow
def test_a_broken_export_fails_the_gate_and_writes_only_its_figures(digits_run, tmp_path, monkeypatch, capsys):
    _broken_forward(monkeypatch)
    folder = tmp_path / "out"
    assert main(["export", str(digits_run), "--out", str(folder)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: export: model.onnx disagrees with the bundle") and "\n" not in error
    assert error.endswith(f"(figures in {digits_run / REFUSED_FILE})")
    assert not folder.exists()  # made for the export, and removed again
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    before = sorted(p.name for p in run.iterdir())
    data = make_class_folder(tmp_path / "colours", per_class=2)
    assert main(["export", str(run), "--format", "torchscript", "--data", str(data)]) == 1
    # no model file, no .json, no temporary file: only the refusal's figures
    assert sorted(p.name for p in run.iterdir()) == sorted(before + [REFUSED_FILE])
    refused = json.loads((run / REFUSED_FILE).read_text())
    assert refused["file"] == "model.torchscript" and refused["parity"]["images"] == 6
    assert refused["parity"]["top1_agreement"] < 1 and refused["parity"]["passed"] is False
    monkeypatch.undo()
    assert main(["export", str(run), "--format", "torchscript", "--data", str(data)]) == 0
    assert not (run / REFUSED_FILE).exists()  # the export it spoke of exists now


def test_test_time_views_and_normalisation_are_in_the_graph(tmp_path):
    """flip-shift averages six views: the exported graph does too, from uint8 images of a --data folder."""
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16), tta="flip-shift")
    data = make_class_folder(tmp_path / "colours", per_class=3)
    assert main(["export", str(run), "--data", str(data)]) == 0
    runner, meta = _exported(run, "onnx")
    assert meta["parity"]["images"] == 9 and meta["parity"]["source"] == f"--data {data}"
    classifier = Classifier.load(run, device="cpu")
    images, _, _ = labelled_check_images(classifier, run, [str(data)])
    assert np.abs(runner(images).numpy() - classifier.prepared_probs(images)).max() < 1e-4


@pytest.mark.slow
def test_a_timm_backbone_exports(tmp_path):
    run = _bundle(tmp_path / "run", "efficientnet_lite0", (32, 32), tta="flip")
    data = make_class_folder(tmp_path / "colours", per_class=2)
    assert main(["export", str(run), "--data", str(data), "--format", "onnx"]) == 0
    assert (run / "model.onnx").is_file()


@pytest.mark.parametrize("args, message", [
    (["export", "NOPE"], "error: no such run folder or model: NOPE"),
    (["export", "RUN", "--format", "tensorrt"], "error: --format: unknown format 'tensorrt' (use onnx, torchscript, openvino, tflite or coreml)"),
    (["export", "RUN"], "error: RUN: no config.json, so no test split to evaluate on; give --data FOLDER"),
])
def test_user_mistakes_are_one_error_line(tmp_path, args, message, capsys):
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    args = [str(run) if a == "RUN" else str(tmp_path / a) if a == "NOPE" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == message.replace("RUN", str(run)).replace("NOPE", str(tmp_path / "NOPE")) + "\n"
    assert not (run / "model.onnx").exists()


def test_predict_engines_use_the_export_only_when_it_comes_from_the_bundle(tmp_path, capsys):
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16), tta="flip")
    data = make_class_folder(tmp_path / "colours", per_class=2)
    image = str(data / "red" / "img_00.png")
    assert main(["predict", str(run), image, "--engine", "onnx"]) == 2
    assert capsys.readouterr().err == f"error: --engine onnx: no model.onnx in {run} (`oculi export` makes one)\n"
    assert main(["export", str(run), "--data", str(data)]) == 0
    torch_, auto = (Classifier.load(run, device="cpu", engine=e) for e in ("torch", "auto"))
    assert (torch_.engine, auto.engine) == ("torch", "onnx")
    assert np.abs(auto.predict_proba([image]) - torch_.predict_proba([image])).max() < 1e-4
    ood = [c.predict([image])[0].ood_score for c in (torch_, auto)]
    assert ood[1] is not None and ood[1] == pytest.approx(ood[0], abs=1e-3)
    capsys.readouterr()
    assert main(["predict", str(run), image, "--engine", "onnx", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == image
    # Another bundle in the same folder: its export no longer applies.
    _bundle(run, "fast-cnn", (16, 16), tta="none")
    assert Classifier.load(run, device="cpu", engine="auto").engine == "torch"
    assert main(["predict", str(run), image, "--engine", "onnx"]) == 2
    assert "model.onnx was exported from another bundle (export again)" in capsys.readouterr().err


def test_a_model_the_format_cannot_hold_is_one_error_line(tmp_path, monkeypatch, capsys):
    import oculi.deploy.export as export

    def unsupported(model, example, path):
        raise RuntimeError("Exporting the operator 'frobnicate' is not supported\nlong graph dump")

    monkeypatch.setitem(export.FORMATS, "onnx", export.Format("onnx", "model.onnx", unsupported, None))
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    data = make_class_folder(tmp_path / "colours", per_class=1)
    assert main(["export", str(run), "--data", str(data)]) == 2
    assert capsys.readouterr().err == ("error: export: this model cannot be exported as onnx (Exporting the "
                                       "operator 'frobnicate' is not supported)\n")
    assert not (run / "model.onnx").exists()


def test_int8_and_half_exports_pass_their_gate_and_serve_as_engines(served_run, tmp_path, capsys):
    """A CNN with ReLUs (simple-cnn, on coloured squares): int8 calibrated on its training images and fp16
    keep its classes. (fast-cnn's GELUs quantise worse: on digits 4.5 % of the test images changed class,
    and the gate refused it.)"""
    run = shutil.copytree(served_run[0], tmp_path / "run")
    for name in ("model.onnx", "model.onnx.json"):  # the float32 graph training wrote: here, auto must find none
        (run / name).unlink()
    classifier = Classifier.load(run, device="cpu")
    images, _, _ = labelled_check_images(classifier, run)
    reference = classifier.prepared_probs(images)
    for flag, precision, engine in (("--int8", "int8", "onnx-int8"), ("--half", "fp16", "onnx-fp16")):
        assert main(["export", str(run), flag]) == 0
        out = capsys.readouterr().out
        meta = json.loads((run / f"model.{precision}.onnx.json").read_text())
        figures = meta["parity"]
        assert meta["precision"] == precision and figures["passed"] is True
        assert f"({100 * figures['accuracy_change']:+.2f} points)" in out
        assert figures["accuracy_change"] >= -0.005 and figures["changed"] <= 1
        quantised = Classifier.load(run, device="cpu", engine=engine)
        assert quantised.engine == engine
        probs = quantised.prepared_probs(images)
        assert np.array_equal(probs.argmax(1), reference.argmax(1))
        assert 0 < np.abs(probs - reference).max() < 0.1  # not the float32 graph, yet close to it
        assert np.allclose(probs.sum(1), 1, atol=1e-5)  # the softmax stays float: no steps of 1/255
    assert Classifier.load(run, device="cpu", engine="auto").engine == "torch"  # auto takes float32 only
    assert main(["evaluate", str(run), "--engine", "onnx-int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(figures_of(run, "int8")["accuracy_export"])
    assert main(["evaluate", str(run), "--engine", "onnx"]) == 2
    assert capsys.readouterr().err == f"error: --engine onnx: no model.onnx in {run} (`oculi export` makes one)\n"


def figures_of(run, precision):
    return json.loads((run / f"model.{precision}.onnx.json").read_text())["parity"]


@pytest.mark.parametrize("labels, candidate_labels, passed", [
    ([0] * 24, [0] * 23 + [1], False),  # one image wrong that was right: accuracy -4.2 points
    ([1] + [0] * 23, [0] * 24, True),  # one image changed, for the better
    ([0] * 24, [1, 1] + [0] * 22, False),  # two of 24 changed: more than one (2 % of 24 rounds down to 0)
    (None, [1] + [0] * 23, True),  # no labels: one change of 24 allowed
    (None, [1] * 2 + [0] * 98, True),  # 2 of 100
    (None, [1] * 3 + [0] * 97, False),  # 3 of 100
])
def test_the_reduced_precision_gate(labels, candidate_labels, passed):
    n = len(candidate_labels)
    reference = np.eye(2, dtype=np.float32)[[0] * n]
    candidate = np.eye(2, dtype=np.float32)[candidate_labels]
    labels = None if labels is None else np.array(labels)
    figures = gate_figures(reference, candidate, labels, "test", "int8")
    assert figures["passed"] is passed
    assert ("accuracy_change" in figures) is (labels is not None)


def test_the_float32_gate_checks_the_ood_scores_too():
    probs = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    energy = np.array([-12.0, -8.5, -3.0, -20.0], dtype=np.float32)

    def passed(candidate_energy):
        return gate_figures(probs, probs, None, "test", "fp32", (energy, candidate_energy))["passed"]
    assert passed(energy + 1e-4)  # rounding
    assert not passed(energy + np.array([0, 0, 0.5, 0], dtype=np.float32))  # one score off
    assert not passed(None)  # a graph without the score
    assert gate_figures(probs, probs, None, "test", "fp32")["passed"]  # nothing to compare: probabilities only


@pytest.mark.parametrize("args, message", [
    (["--int8", "--half"], "error: --int8 and --half: choose one"),
    (["--int8", "--format", "torchscript"], "error: --int8: only for --format onnx or tflite"),
    (["--int8", "--format", "openvino"], "error: --int8: only for --format onnx or tflite"),
    (["--half", "--format", "torchscript"], "error: --half: only for --format onnx"),
    (["--half", "--format", "tflite"], "error: --half: only for --format onnx"),
])
def test_precision_flags_mistakes_are_one_error_line(tmp_path, args, message, capsys):
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    assert main(["export", str(run), *args]) == 2
    assert capsys.readouterr().err == message + "\n"


def test_int8_needs_the_runs_training_images(tmp_path, capsys):
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    data = make_class_folder(tmp_path / "colours", per_class=1)
    assert main(["export", str(run), "--int8", "--data", str(data)]) == 2
    assert capsys.readouterr().err == f"error: {run}: no split.csv, so no training images to calibrate on\n"


def test_a_filtered_bundle_is_refused_in_one_line(tmp_path, capsys):
    """The filter runs on uint8 pixels after resizing (edges: Canny's hysteresis, not a convolution): the
    graph, which starts after resizing, would need it from its consumers; refused, nothing written."""
    torch.manual_seed(0)
    spec = ModelSpec("fast-cnn", 3, 3, (16, 16), "softmax")
    run = tmp_path / "run"
    save_bundle(run, spec.build(), spec, ["ant", "bee", "wasp"],
                Preprocessing(image_size=(16, 16), channels=3, filter="sharpen"))
    data = make_class_folder(tmp_path / "colours", per_class=1)
    assert main(["export", str(run), "--data", str(data)]) == 2
    assert capsys.readouterr().err == ("error: export: the bundle filters its images (sharpen) after resizing, "
                                       "which the exported graph cannot do for its consumers\n")
    assert not (run / "model.onnx").exists()
