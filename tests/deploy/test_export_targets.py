"""oculi export --format openvino | tflite | coreml: each through the shared gate (Core ML, whose runtime is
macOS-only, checked as far as Linux allows and never called verified), and --engine openvino."""

import dataclasses
import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from oculi.cli import main
from oculi.deploy import export
from oculi.deploy.export import FORMATS, REFUSED_FILE
from oculi.deploy.lite import ExportClassifier, load_classifier
from oculi.deploy.predict import Classifier
from oculi.evaluate import labelled_check_images
from tests.conftest import make_class_folder
from tests.deploy.test_export import _bundle

NEEDS = {"openvino": "openvino", "tflite": "litert_torch", "coreml": "coremltools"}


def needs(fmt):
    """A skip saying which extra brings the format's converter when it is absent (looked up, not imported: oculi
    imports it quietly, the test's import would print its import-time warnings)."""
    if importlib.util.find_spec(NEEDS[fmt]) is None:
        pytest.skip(f"--format {fmt} needs pip install 'oculi[{fmt}]'")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, tiny_run):
    """The session's fast-cnn on digits (the same settings as test_export.py's, so one training serves both),
    copied: the tests export into it."""
    run = tiny_run("digits", name="digits", model="fast-cnn", epochs=3, report=True)
    return shutil.copytree(run.run_dir, tmp_path_factory.mktemp("targets") / "run")


def _meta(run, fmt):
    return json.loads((run / f"{FORMATS[fmt].file}.json").read_text())


def _check_images(run):
    classifier = Classifier.load(run, device="cpu")
    return classifier, labelled_check_images(classifier, run)[0]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openvino", "tflite"])
def test_a_run_format_passes_the_gate_and_gives_the_bundles_outputs(digits_run, fmt, capsys):
    needs(fmt)
    assert main(["export", str(digits_run), "--format", fmt]) == 0
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    meta = _meta(digits_run, fmt)
    assert meta["verified"] is True and meta["parity"]["passed"] and meta["parity"]["images"] > 100
    assert meta["parity"]["energy_max_abs_diff"] < 1e-3
    classifier, images = _check_images(digits_run)
    session = FORMATS[fmt].runner(digits_run / meta["file"])
    probs, energy = session.outputs(images[:7])
    assert np.abs(probs - classifier.prepared_probs(images[:7])).max() < 1e-4 and energy.shape == (7,)
    if fmt == "tflite":  # the file itself takes NHWC, one image at a time
        assert meta["input"]["layout"] == "NHWC" and meta["input"]["shape"] == [1, 8, 8, 1]
        detail = session.interpreter.get_input_details()[0]
        assert list(detail["shape"]) == [1, 8, 8, 1] and detail["dtype"] == np.uint8
    else:
        assert meta["input"]["shape"] == ["N", 1, 8, 8] and list(meta["companions"]) == ["model.bin"]


@pytest.mark.slow
def test_tflite_int8_quantises_the_network_passes_the_reduced_precision_gate_and_keeps_float_probabilities(
        served_run, tmp_path):
    """simple-cnn on coloured squares, as ONNX's --int8 test (fast-cnn's GELUs quantise worse: on 3 epochs of
    digits 4% of the test images changed class in either format, and both gates refused it)."""
    needs("tflite")
    run = shutil.copytree(served_run[0], tmp_path / "run")
    for flags in ([], ["--int8"]):
        assert main(["export", str(run), "--format", "tflite", *flags]) == 0
    meta = json.loads((run / "model.int8.tflite.json").read_text())
    assert meta["file"] == "model.int8.tflite" and meta["precision"] == "int8" and meta["verified"] is True
    assert meta["parity"]["passed"] and meta["parity"]["changed"] <= 1
    # the convolutions' weights int8 (its dense layers stay float: they set the logits, and the OOD score)
    import ai_edge_litert.interpreter as litert
    tensors = litert.Interpreter(model_path=str(run / "model.int8.tflite")).get_tensor_details()
    assert sum(t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"]) > 1 for t in tensors) == 3
    assert (run / "model.int8.tflite").stat().st_size < (run / "model.tflite").stat().st_size
    classifier, images = _check_images(run)
    session = FORMATS["tflite"].runner(run / "model.int8.tflite")
    probs, energy = session.outputs(images)
    reference = classifier.prepared_probs(images)
    assert np.array_equal(probs.argmax(1), reference.argmax(1))
    assert 0 < np.abs(probs - reference).max() < 0.1  # not the float32 file, yet close to it
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-5)  # the softmax stays float
    assert session.interpreter.get_input_details()[0]["dtype"] == np.uint8


def test_tflite_int8_of_a_network_of_dense_layers_only_is_refused_in_one_line(tmp_path):
    needs("tflite")
    from oculi.deploy import targets
    from oculi.errors import OculiError
    run = _bundle(tmp_path / "run", "mlp", (8, 8))
    data = make_class_folder(tmp_path / "colours", per_class=1)
    assert main(["export", str(run), "--format", "tflite", "--data", str(data)]) == 0
    calibration = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(OculiError, match="no operation that --format tflite quantises"):
        targets.tflite_int8_bytes(run / "model.tflite", calibration)


@pytest.mark.slow
def test_engine_openvino_predicts_and_evaluates_without_torch(digits_run, capsys):
    needs("openvino")
    if not (digits_run / "model.xml.json").is_file():
        assert main(["export", str(digits_run), "--format", "openvino"]) == 0
    lite = load_classifier(digits_run, device="cpu", engine="openvino")
    assert isinstance(lite, ExportClassifier) and lite.engine == "openvino"
    classifier, images = _check_images(digits_run)
    assert np.abs(lite.prepared_outputs(images.numpy())[0] - classifier.prepared_probs(images)).max() < 1e-4
    capsys.readouterr()
    assert main(["evaluate", str(digits_run), "--engine", "openvino", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] > 0.5
    assert Classifier.load(digits_run, device="cpu", engine="openvino").engine == "openvino"
    (digits_run / "model.bin").write_bytes(b"changed")  # the weights beside model.xml are checked too
    assert main(["evaluate", str(digits_run), "--engine", "openvino"]) == 2
    assert "model.bin: checksum does not match model.xml.json (export again)" in capsys.readouterr().err


def test_coreml_is_converted_checked_as_far_as_linux_allows_and_never_called_verified(tmp_path, capsys):
    needs("coreml")
    if sys.platform == "darwin":
        pytest.skip("on macOS Core ML runs, and the export goes through the gate like the others")
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16), tta="flip")
    data = make_class_folder(tmp_path / "colours", per_class=1)
    for _ in range(2):  # a second export replaces the .mlpackage folder
        assert main(["export", str(run), "--format", "coreml", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("not verified: parity: not checked on this platform")
    meta = _meta(run, "coreml")
    assert meta["verified"] is False and meta["parity"]["checked"] is False
    assert meta["input"] == {**meta["input"], "dtype": "int32", "layout": "NCHW", "shape": ["N", 3, 16, 16]}
    assert meta["parity"]["inputs"] == [{"name": "images", "dtype": "INT32", "shape": [1, 3, 16, 16]}]
    assert [o["name"] for o in meta["parity"]["outputs"]] == ["probabilities", "energy"]
    assert (run / "model.mlpackage" / "Manifest.json").is_file() and not list(run.glob(".*.tmp"))


class Shifted(torch.nn.Module):
    """A graph whose probabilities are the right ones moved by one class."""

    def __init__(self, graph):
        super().__init__()
        self.inner, self.output_names = graph, graph.output_names

    def forward(self, images):
        probs, *rest = self.inner(images)
        return (probs.roll(1, dims=1), *rest)


class WithoutEnergy(Shifted):
    """A graph that lost its OOD output."""

    def __init__(self, graph):
        super().__init__(graph)
        self.output_names = graph.output_names[:1]

    def forward(self, images):
        return self.inner(images)[0]


@pytest.mark.parametrize("fmt, breakage", [("openvino", Shifted), ("openvino", WithoutEnergy),
                                           ("tflite", Shifted), ("coreml", WithoutEnergy)])
def test_a_broken_conversion_is_refused_and_nothing_is_written(tmp_path, monkeypatch, fmt, breakage, capsys):
    needs(fmt)
    form = FORMATS[fmt]
    # the test hook: the format's converter, given a broken graph
    monkeypatch.setitem(export.FORMATS, fmt, dataclasses.replace(
        form, write=lambda graph, example, path: form.write(breakage(graph).eval(), example, path)))
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    before = sorted(p.name for p in run.iterdir())
    data = make_class_folder(tmp_path / "colours", per_class=2)
    assert main(["export", str(run), "--format", fmt, "--data", str(data)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: export: {form.file} disagrees with the bundle") and "\n" not in error
    assert sorted(p.name for p in run.iterdir()) == sorted(before + [REFUSED_FILE])
    assert json.loads((run / REFUSED_FILE).read_text())["parity"]["passed"] is False


@pytest.mark.parametrize("fmt, module", [("openvino", "openvino"), ("tflite", "litert_torch"),
                                         ("coreml", "coremltools")])
def test_a_missing_extra_is_one_error_line_naming_it(tmp_path, monkeypatch, fmt, module, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    assert main(["export", str(run), "--format", fmt]) == 2
    assert capsys.readouterr().err == f"error: --format {fmt} needs the {module} package: pip install 'oculi[{fmt}]'\n"
    assert sorted(p.name for p in run.iterdir()) == ["model.json", "model.safetensors"]


def test_engine_openvino_without_an_export_is_one_error_line(tmp_path, capsys):
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    image = str(make_class_folder(tmp_path / "colours", per_class=1) / "red" / "img_00.png")
    assert main(["predict", str(run), image, "--engine", "openvino"]) == 2
    assert capsys.readouterr().err == (f"error: --engine openvino: no model.xml in {run} "
                                       "(`oculi export --format openvino` makes one)\n")
