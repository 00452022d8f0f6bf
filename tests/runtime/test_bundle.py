"""Bundles that are edited or damaged: every byte of both files is checked, everything model.json says is
validated before use, nothing is ever unpickled, and OCULI_BUNDLE_KEY signs and verifies bundles."""

import json
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import oculi
from oculi.cli import main
from oculi.data.transforms import Preprocessing
from oculi.errors import BundleError, BundleWarning, OculiError
from oculi.models.pretrained import read_state_dict
from oculi.models.spec import ModelSpec
from oculi.runtime.bundle import KEY_ENV, save_bundle, seal, sha256_of

CLASSES = ["ant", "bee", "wasp"]


def _save(folder, classes=CLASSES, head="softmax"):
    """A real bundle without training: an untrained mlp for 8x8 gray images, saved as training saves it."""
    spec = ModelSpec("mlp", len(classes), 1, (8, 8), head)
    save_bundle(folder, spec.build(), spec, classes, Preprocessing((8, 8), 1), {"data": "test"})
    return folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("bundle") / "run")


@pytest.fixture
def run(pristine, tmp_path, monkeypatch):
    """A fresh copy of the bundle to damage, loaded with no signing key unless a test sets one."""
    monkeypatch.delenv(KEY_ENV, raising=False)
    return shutil.copytree(pristine, tmp_path / "run")


def _meta(run) -> dict:
    return json.loads((run / "model.json").read_text())


def _edit(run, change, reseal=True):
    """Change model.json as ``change(meta)`` does; ``reseal`` recomputes every checksum to match, as a
    careful forger (or a buggy tool) would, so that what is tested is the validation behind them."""
    meta = _meta(run)
    change(meta)
    meta["weights_sha256"] = sha256_of(run / "model.safetensors")
    (run / "model.json").write_text(json.dumps(seal(meta) if reseal else meta, indent=2))


def _replace_weights(run, data: bytes):
    (run / "model.safetensors").write_bytes(data)
    _edit(run, lambda meta: None)


def test_a_saved_bundle_loads_with_its_classes_and_weights(run, pristine):
    meta = _meta(run)
    assert meta["format_version"] == 2 and len(meta["bundle_sha256"]) == 64
    assert "bundle_hmac_sha256" not in meta  # no key, no signature
    clf = oculi.load(run)
    assert clf.classes == CLASSES
    saved = load_file(str(pristine / "model.safetensors"))
    assert all(torch.equal(v, saved[k]) for k, v in clf.model.state_dict().items())


def test_reformatting_model_json_keeps_it_valid(run):
    (run / "model.json").write_text(json.dumps(_meta(run)))  # same content, no indentation
    assert oculi.load(run).classes == CLASSES


def test_a_model_json_that_is_not_json_is_a_clear_error(run):
    (run / "model.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"model\.json: not valid JSON"):
        oculi.load(run)


@pytest.mark.parametrize("change", [
    lambda m: m.update(classes=["bee", "ant", "wasp"]),  # silently swapped labels before bundle_sha256
    lambda m: m.update(classes=["ant", "bee"]),
    lambda m: m["preprocessing"].update(mean=[0.9]),
    lambda m: m.update(data="other"),  # even fields nothing reads are covered
])
def test_any_edit_of_model_json_is_refused(run, change):
    _edit(run, change, reseal=False)
    with pytest.raises(BundleError, match=r"model\.json: its content does not match its bundle_sha256"):
        oculi.load(run)


def test_changed_weights_are_refused(run):
    weights = run / "model.safetensors"
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 1
    save_file(state, str(weights))
    with pytest.raises(BundleError, match="checksum does not match model.json"):
        oculi.load(run)


# Each edit is resealed: the checksums match, and what catches it is the validation of the content.
@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(format_version="abc"), 'format_version is "abc", expected a whole number from 1 to 2'),
    (lambda m: m.update(format_version=3), "made by a newer oculi"),
    (lambda m: m.pop("classes"), "classes is missing"),
    (lambda m: m.update(classes="ant,bee,wasp"), 'classes is "ant,bee,wasp", expected a list of non-empty names'),
    (lambda m: m.update(classes=["ant", "", "wasp"]), "expected a list of non-empty names"),
    (lambda m: m.update(classes=["ant", "ant", "wasp"]), 'classes names "ant" twice'),
    (lambda m: m.update(classes=["ant"]), 'classes is \\["ant"\\], expected at least 2 names'),
    (lambda m: m.update(classes=["ant", "bee"]), "classes has 2 names but model.num_classes is 3"),
    (lambda m: m.update(classes=["a", "b", "c", "d"]), "classes has 4 names but model.num_classes is 3"),
    (lambda m: m.pop("model"), "model is missing"),
    (lambda m: m.update(model="mlp"), 'model is "mlp", expected an object'),
    (lambda m: m["model"].update(num_classes="3"), 'model.num_classes is "3", expected a whole number'),
    (lambda m: m["model"].update(head="softmax2"), 'model.head is "softmax2", expected one of'),
    (lambda m: m["model"].update(name="no-such-net"), "model cannot be built .*unknown model 'no-such-net'"),
    (lambda m: m["model"].update(in_chans=3), "model.in_chans is 3 but preprocessing.channels is 1"),
    (lambda m: m["model"].update(image_size=[16, 16]), "model.image_size is \\[16, 16\\] but preprocessing"),
    (lambda m: m.pop("preprocessing"), "preprocessing is missing"),
    (lambda m: m.update(preprocessing={"x": 1}), "preprocessing.x is not a setting this version of oculi knows"),
    (lambda m: m["preprocessing"].pop("mean"), "preprocessing.mean is missing"),
    (lambda m: m["preprocessing"].update(image_size=[100_000, 100_000]),
     r"preprocessing.image_size is \[100000, 100000\], expected \[height, width\], each from 2 to 4096"),
    (lambda m: m["preprocessing"].update(channels=2), "preprocessing.channels is 2, expected one of 1, 3"),
    (lambda m: m["preprocessing"].update(std=[0]),
     r"preprocessing.std is \[0\], expected a list of 1 finite numbers above 0"),
    (lambda m: m["preprocessing"].update(resize=True), "preprocessing.resize is true"),
    (lambda m: m["preprocessing"].update(tta="twice"), 'preprocessing.tta is "twice"'),
])
def test_what_model_json_says_is_validated_before_use(run, change, message):
    _edit(run, change)
    with pytest.raises(BundleError, match=message) as caught:
        oculi.load(run)
    text = str(caught.value)
    assert text.startswith(str(run / "model.json")) and "\n" not in text


def test_more_classes_with_weights_for_fewer_are_refused_by_the_weights_shapes(run):
    def four_classes(meta):
        meta["classes"] = ["a", "b", "c", "d"]
        meta["model"]["num_classes"] = 4
    _edit(run, four_classes)
    with pytest.raises(BundleError, match="model.safetensors: does not match the architecture in model.json"):
        oculi.load(run)


def test_a_sigmoid_head_has_one_output_for_two_classes(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    run = _save(tmp_path / "run", ["cat", "dog"], head="sigmoid")
    assert oculi.load(run).predict_proba(np.zeros((8, 8), np.uint8)).shape == (1, 2)

    def three_classes(meta):
        meta["classes"] = ["cat", "dog", "eel"]
        meta["model"]["num_classes"] = 3
    _edit(run, three_classes)
    with pytest.raises(BundleError, match='model.head is "sigmoid", which takes exactly 2 classes, not 3'):
        oculi.load(run)


@pytest.mark.parametrize("weights", [
    lambda data: data[: len(data) // 2],  # truncated
    lambda data: b"",
    lambda data: pickle.dumps({"net.1.weight": [0.0] * 10}),  # a plain pickle, not safetensors
])
def test_weights_that_are_not_safetensors_are_a_clear_error(run, weights):
    _replace_weights(run, weights((run / "model.safetensors").read_bytes()))
    with pytest.raises(BundleError, match="model.safetensors: not a readable safetensors file"):
        oculi.load(run)


class _Payload:
    """Unpickling this runs code: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.makedirs, (self.marker,)


def test_a_pickle_with_a_payload_is_never_unpickled(run, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Payload(marker))
    _replace_weights(run, payload)
    with pytest.raises(BundleError, match="not a readable safetensors file"):
        oculi.load(run)
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: this is what loading must never do
    assert marker.is_dir()


def test_a_weights_file_for_a_backbone_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    evil = tmp_path / "backbone.pt"
    evil.write_bytes(pickle.dumps(_Payload(marker), protocol=2))  # torch.load's own protocol: no aside
    with pytest.raises(OculiError, match="--weights .*backbone.pt: not a safetensors file or state dict"):
        read_state_dict(str(evil))
    assert not marker.exists()


# ---------------------------------------------------------------- signing with OCULI_BUNDLE_KEY

@pytest.fixture
def signed(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "right key")
    return _save(tmp_path / "signed")


def test_a_signed_bundle_loads_with_its_key_and_without_one(signed, monkeypatch):
    assert len(_meta(signed)["bundle_hmac_sha256"]) == 64
    assert oculi.load(signed).classes == CLASSES
    monkeypatch.delenv(KEY_ENV)
    assert oculi.load(signed).classes == CLASSES  # the digest is still checked


def test_a_key_refuses_bundles_signed_with_another_key_or_not_at_all(signed, run, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong key")
    with pytest.raises(BundleError, match="no valid signature for the key in OCULI_BUNDLE_KEY"):
        oculi.load(signed)
    with pytest.raises(BundleError, match="no valid signature"):
        oculi.load(run)  # saved without a key


def test_a_forger_who_recomputes_the_digest_is_stopped_by_the_key(signed, monkeypatch):
    monkeypatch.delenv(KEY_ENV)  # the forger has no key: the digest matches, the signature cannot
    _edit(signed, lambda meta: meta.update(classes=["wasp", "bee", "ant"]))
    assert oculi.load(signed).classes == ["wasp", "bee", "ant"]  # what a digest alone cannot stop
    monkeypatch.setenv(KEY_ENV, "right key")
    with pytest.raises(BundleError, match="no valid signature"):
        oculi.load(signed)


# ---------------------------------------------------------------- bundles of format 1

def _as_format_1(meta):
    """A bundle as oculi wrote them before bundle_sha256 (and before --tta and --filter)."""
    meta["format_version"] = 1
    meta.pop("bundle_sha256")
    for name in ("tta", "filter"):
        meta["preprocessing"].pop(name)
    meta["preprocessing"]["flip_tta"] = True


def test_format_1_bundles_load_with_a_warning(run):
    _edit(run, _as_format_1, reseal=False)
    with pytest.warns(BundleWarning, match="bundle format 1 checks its weights but not model.json"):
        clf = oculi.load(run)
    assert clf.classes == CLASSES and clf.preprocessing.tta == "flip"


def test_format_1_bundles_are_refused_when_a_key_is_set(run, monkeypatch):
    _edit(run, _as_format_1, reseal=False)
    monkeypatch.setenv(KEY_ENV, "right key")
    with pytest.raises(BundleError, match="no valid signature"):
        oculi.load(run)


def test_a_current_bundle_loads_without_warnings(run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oculi.load(run)


# ---------------------------------------------------------------- the command line

@pytest.fixture
def image(tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


def test_predict_on_a_tampered_bundle_exits_2_with_one_line(run, image, capsys):
    _edit(run, lambda meta: meta.update(classes=["wasp", "bee", "ant"]), reseal=False)
    code = main(["predict", str(run), str(image)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "bundle_sha256" in err
    assert len(err.strip().splitlines()) == 1


def test_predict_on_a_format_1_bundle_warns_in_one_line(run, image, capsys):
    _edit(run, _as_format_1, reseal=False)
    code = main(["predict", str(run), str(image), "--json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["label"] in CLASSES
    said = [line for line in captured.err.splitlines() if not line.startswith("engine: ")]
    assert said[0].startswith("warning: ") and len(said) == 1
