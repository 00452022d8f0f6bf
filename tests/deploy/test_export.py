"""oculi export: one file that takes uint8 images and returns the bundle's probabilities, parity-gated."""

import json

import numpy as np
import pytest
import torch

import oculi
from oculi.cli import main
from oculi.data.transforms import Preprocessing
from oculi.deploy.bundle import save_bundle
from oculi.deploy.export import FAULT_ENV, FORMATS, OnnxRunner, TorchScriptRunner
from oculi.deploy.predict import Classifier
from oculi.evaluate import check_images
from oculi.models.spec import ModelSpec
from tests.conftest import make_class_folder

RUNNERS = {"onnx": lambda path: OnnxRunner(path.read_bytes()), "torchscript": TorchScriptRunner}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """fast-cnn trained on the built-in digits (its test split is read back for the gate). Three epochs: after
    one its probabilities are still nearly uniform, too easy to match."""
    # cache=False: a module fixture runs before the per-test private cache exists.
    run = oculi.train("digits", model="fast-cnn", epochs=3, out=str(tmp_path_factory.mktemp("export") / "run"),
                      progress=False, report=False, cache=False)
    return run.run_dir


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
def test_export_of_a_trained_run_passes_the_gate_and_gives_the_bundles_probabilities(digits_run, fmt, capsys):
    assert main(["export", str(digits_run), "--format", fmt]) == 0
    assert "top-1 agreement 100.00%" in capsys.readouterr().out
    runner, meta = _exported(digits_run, fmt)
    classifier = Classifier.load(digits_run, device="cpu")
    assert meta["bundle_sha256"] == classifier.meta["bundle_sha256"] and meta["classes"] == classifier.classes
    assert meta["parity"]["top1_agreement"] == 1.0 and meta["parity"]["images"] > 100
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["shape"] == ["N", 1, 8, 8]
    images, _ = check_images(classifier, digits_run)
    for batch in (images[:1], images[1:8]):  # any batch size
        assert batch.dtype == torch.uint8
        probs = runner(batch).numpy()
        assert probs.shape == (len(batch), 10)
        assert np.abs(probs - classifier.prepared_probs(batch)).max() < 1e-4
    assert not list(digits_run.glob(".*.tmp"))


def test_a_broken_export_fails_the_gate_and_writes_nothing(digits_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(FAULT_ENV, "1")
    folder = tmp_path / "out"
    assert main(["export", str(digits_run), "--out", str(folder)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: export: onnx disagrees with the bundle") and "\n" not in error
    assert not folder.exists()  # made for the export, and removed again
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    before = sorted(p.name for p in run.iterdir())
    data = make_class_folder(tmp_path / "colours", per_class=2)
    assert main(["export", str(run), "--format", "torchscript", "--data", str(data)]) == 1
    assert sorted(p.name for p in run.iterdir()) == before  # no model file, no .json, no temporary file


def test_test_time_views_and_normalisation_are_in_the_graph(tmp_path):
    """flip-shift averages six views: the exported graph does too, from uint8 images of a --data folder."""
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16), tta="flip-shift")
    data = make_class_folder(tmp_path / "colours", per_class=3)
    assert main(["export", str(run), "--data", str(data)]) == 0
    runner, meta = _exported(run, "onnx")
    assert meta["parity"]["images"] == 9 and meta["parity"]["source"] == f"--data {data}"
    classifier = Classifier.load(run, device="cpu")
    images, _ = check_images(classifier, run, [str(data)])
    assert np.abs(runner(images).numpy() - classifier.prepared_probs(images)).max() < 1e-4


def test_a_timm_backbone_exports(tmp_path):
    run = _bundle(tmp_path / "run", "efficientnet_lite0", (32, 32), tta="flip")
    data = make_class_folder(tmp_path / "colours", per_class=2)
    assert main(["export", str(run), "--data", str(data), "--format", "onnx"]) == 0
    assert (run / "model.onnx").is_file()


@pytest.mark.parametrize("args, message", [
    (["export", "NOPE"], "error: no such run folder or model: NOPE"),
    (["export", "RUN", "--format", "tflite"], "error: --format: unknown format 'tflite' (use onnx or torchscript)"),
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

    def unsupported(model, example):
        raise RuntimeError("Exporting the operator 'frobnicate' is not supported\nlong graph dump")

    monkeypatch.setitem(export.FORMATS, "onnx", export.Format("onnx", "model.onnx", unsupported, None))
    run = _bundle(tmp_path / "run", "fast-cnn", (16, 16))
    data = make_class_folder(tmp_path / "colours", per_class=1)
    assert main(["export", str(run), "--data", str(data)]) == 2
    assert capsys.readouterr().err == ("error: export: this model cannot be exported as onnx (Exporting the "
                                       "operator 'frobnicate' is not supported)\n")
    assert not (run / "model.onnx").exists()
