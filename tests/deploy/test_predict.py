from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oculi
from oculi.errors import OculiError
from oculi.deploy.predict import expand_paths
from tests.conftest import make_class_folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = make_class_folder(root / "colours", per_class=6)
    run = oculi.train(str(data), model="mlp", epochs=1, out=str(root / "run"), progress=False)
    return data, oculi.load(run.run_dir)


def test_every_input_type_gives_the_same_probabilities(trained):
    data, clf = trained
    path = data / "red" / "img_00.png"
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    probs = clf.predict_proba([path, str(path), pil, array, tensor])
    assert np.allclose(probs, probs[0], atol=1e-6)


def test_gray_input_is_expanded_for_an_rgb_model(trained):
    _, clf = trained
    assert clf.predict_proba(np.zeros((10, 12), dtype=np.uint8)).shape == (1, 3)


def test_bad_inputs_are_clear_errors(trained):
    _, clf = trained
    with pytest.raises(OculiError, match="uint8"):
        clf.predict(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(OculiError, match="file paths, PIL images"):
        clf.predict(42)


def test_predict_files_reports_unreadable_files_and_goes_on(trained, tmp_path):
    data, clf = trained
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    failures = []
    files = [data / "red" / "img_00.png", bad, data / "blue" / "img_01.png"]
    predictions = list(clf.predict_files(files, batch_size=1, failures=failures))
    assert [p.source for p in predictions] == [str(files[0]), str(files[2])]
    assert len(failures) == 1 and failures[0][0] == str(bad)


def test_expand_paths_takes_files_folders_and_absolute_globs(colour_folder):
    found, missing = expand_paths([str(colour_folder / "red"), str(colour_folder / "blue" / "img_0*.png"),
                                   str(colour_folder / "green" / "img_00.png"), "nowhere/*.jpg", "nothing.png"])
    assert len(found) == 12 + 10 + 1
    assert missing == ["nowhere/*.jpg", "nothing.png"]


def test_expand_paths_lists_a_file_named_twice_once_as_first_spelled(colour_folder, monkeypatch):
    monkeypatch.chdir(colour_folder)
    found, missing = expand_paths(["./red/img_01.png", "red/img_0[01].png", str(colour_folder / "red"),
                                   "red/img_01.png"])
    assert found[:2] == [Path("red/img_01.png"), Path("red/img_00.png")]
    assert len(found) == 12 and len({p.resolve() for p in found}) == 12 and missing == []
