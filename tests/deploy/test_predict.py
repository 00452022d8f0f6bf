from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oculi
from oculi.errors import OculiError
from oculi.deploy.predict import Classifier, expand_paths


@pytest.fixture(scope="module")
def trained(tiny_data, tiny_run):
    """The session's tiny mlp run (tests/test_cli.py's too), loaded."""
    data = tiny_data(per_class=6)
    return data, oculi.load(tiny_run(data, model="mlp", epochs=1).run_dir)


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


def _photo(path, size=(400, 300), orientation=None):
    """A smooth RGB JPEG (gradients and a disc): what draft decoding is for."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    disc = ((x - w / 3) ** 2 + (y - h / 2) ** 2 < (h / 4) ** 2) * 120
    pixels = np.stack([x * 255 // w, y * 255 // h, np.clip(60 + disc, 0, 255)], -1).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(path, quality=90, exif=exif.tobytes())
    return path


def test_draft_decoding_scales_a_large_jpeg_only_as_far_as_the_size_allows(tmp_path):
    from oculi.data.decode import decode_image
    path = _photo(tmp_path / "photo.jpg")  # 400 x 300
    assert decode_image(path, 3).shape == (3, 300, 400)
    assert decode_image(path, 3, at_least=(100, 100)).shape == (3, 150, 200)  # 1/2: 1/4 would be 75 high
    assert decode_image(path, 3, at_least=(30, 40)).shape == (3, 38, 50)  # 1/8
    assert decode_image(path, 3, at_least=(160, 160)).shape == (3, 300, 400)  # 1/2 would be too small
    assert decode_image(path, 1, at_least=(100, 100)).shape == (1, 150, 200)
    # Stored sideways (EXIF 6): the wanted upright size is checked against the upright image.
    turned = _photo(tmp_path / "turned.jpg", orientation=6)
    assert decode_image(turned, 3).shape == (3, 400, 300)
    assert decode_image(turned, 3, at_least=(190, 140)).shape == (3, 200, 150)
    assert decode_image(turned, 3, at_least=(190, 160)).shape == (3, 400, 300)  # 150 < 160
    png = tmp_path / "photo.png"
    Image.open(path).save(png)
    assert decode_image(png, 3, at_least=(100, 100)).shape == (3, 300, 400)  # JPEGs only


def test_draft_decoding_gives_nearly_the_same_model_input(tmp_path):
    from oculi.data.contained import prepare_file
    from oculi.data.transforms import Preprocessing
    path = _photo(tmp_path / "photo.jpg", size=(800, 600))
    for resize in ("squash", "crop", "pad"):
        pre = Preprocessing((64, 64), 3, resize=resize)
        exact, drafted = prepare_file(path, pre).astype(int), prepare_file(path, pre, draft=True).astype(int)
        assert exact.shape == drafted.shape == (3, 64, 64)
        assert not np.array_equal(exact, drafted)  # another decoding path ...
        assert np.abs(exact - drafted).mean() < 1.5 and np.abs(exact - drafted).max() < 40  # ... to nearly the same


def test_the_python_api_and_serve_decode_a_large_jpeg_as_training_does(served_run, tmp_path):
    from oculi.data.contained import prepare_file
    from tests.deploy.conftest import make_service, serving
    classifier = Classifier.load(served_run[0], device="cpu")
    path = _photo(tmp_path / "photo.jpg", size=(800, 600))
    pre = classifier.preprocessing
    drafted, full = prepare_file(path, pre, draft=True), prepare_file(path, pre)
    assert not np.array_equal(drafted, full)  # the photo is large enough to be drafted
    assert np.array_equal(classifier.prepare(path).numpy(), drafted)
    expected = classifier.prepared_probs(torch.from_numpy(drafted)[None])[0]
    with serving(make_service(served_run[0], workers=1)) as client:
        response = client.post("/v1/predict?top_k=3", files=[("files", ("photo.jpg", path.read_bytes(), "image/jpeg"))])
    answer = response.json()["predictions"][0]
    probabilities = {t["label"]: t["probability"] for t in answer["top_k"]}
    assert [probabilities[c] for c in classifier.classes] == pytest.approx(expected.tolist(), abs=1e-6)


def test_predict_with_and_without_draft_gives_the_same_answer(served_run, tmp_path, capsys):
    import json
    from oculi.cli import main
    path = _photo(tmp_path / "photo.jpg", size=(800, 600))
    rows = []
    for flag in ("--draft", "--no-draft"):
        assert main(["predict", str(served_run[0]), str(path), "--json", flag]) == 0
        rows.append(json.loads(capsys.readouterr().out))
    assert rows[0]["label"] == rows[1]["label"]
    assert abs(rows[0]["confidence"] - rows[1]["confidence"]) < 0.05
