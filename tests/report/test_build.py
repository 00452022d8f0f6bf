"""report.html: built at the end of every run from the run folder, self-contained, rebuildable."""

import base64
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oculi
from oculi import api
from oculi.cli import main
from oculi.errors import OculiError
from oculi.report.build import read_run, split_phases, write_report
from oculi.report.html import TILE_PIXELS, image_tile
from oculi.rundir import RunDir
from tests.conftest import make_class_folder

SECTIONS = ("data", "check", "augmentation", "model", "training", "metrics", "predictions", "explain")


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory, tiny_run):
    """A small run whose data holds one corrupt image. Read only: the tests that change it take a copy."""
    root = make_class_folder(tmp_path_factory.mktemp("data") / "colours", per_class=16)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tiny_run(root, name="colours", epochs=2, report=True)


def embedded_images(page: str) -> list[Image.Image]:
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert all(re.match(r"data:image/(png|webp);base64,", s) for s in sources), "every image is embedded"
    return [_decode(s) for s in sources]


def _decode(source: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))


@pytest.mark.slow
def test_every_run_writes_a_self_contained_report(colour_run):
    page = RunDir(colour_run.run_dir).report.read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    images = embedded_images(page)
    assert len(images) >= 9  # counts, samples, augmentation, curves, confusion, grid, bars, mistakes/none, explain
    for image in images:
        image.verify()  # a truncated or garbled PNG raises here
    # Nothing is fetched: no scripts, no style sheets, no remote addresses.
    assert "<script" not in page and "<link" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert f"{colour_run.test_metrics['accuracy']:.2%}" in page


@pytest.mark.slow
def test_report_names_skipped_files_and_the_classes(colour_run):
    page = RunDir(colour_run.run_dir).report.read_text()
    assert "broken.png" in page and "1 file could not be used" in page
    for name in ("red", "green", "blue"):
        assert name in page


@pytest.mark.slow
def test_report_rebuilds_the_same_page_later(colour_run, capsys, tmp_path):
    # A name with a "-", which base64 never holds: replacing it cannot touch an embedded image.
    run_dir = shutil.copytree(colour_run.run_dir, tmp_path / "colours-copy")
    first = RunDir(run_dir).report.read_text()
    RunDir(run_dir).report.unlink()
    assert main(["report", str(run_dir)]) == 0
    assert str(RunDir(run_dir).report) in capsys.readouterr().out
    rebuilt = RunDir(run_dir).report.read_text()
    # The same run gives the same page, but for its title (the folder's name).
    assert rebuilt.replace("colours-copy", "colours") == first


@pytest.mark.slow
def test_report_without_the_data_keeps_what_needs_no_images(colour_run, tmp_path):
    run_dir = shutil.copytree(colour_run.run_dir, tmp_path / "moved")
    data = tmp_path / "gone"
    shutil.copytree(colour_run.config.data, data)
    (run_dir / "config.json").write_text((run_dir / "config.json").read_text().replace(colour_run.config.data, str(data)))
    shutil.rmtree(data)
    page = write_report(run_dir).read_text()
    assert "could not be read again" in page and "no such folder" in page
    assert '<section id="metrics">' in page and '<section id="training">' in page
    for image in embedded_images(page):
        image.verify()


def _section(page: str, name: str) -> str:
    return re.search(rf'<section id="{name}">(.*?)</section>', page, re.S).group(1)


@pytest.mark.slow
def test_a_failed_write_keeps_the_previous_report(colour_run, tmp_path, monkeypatch):
    run_dir = shutil.copytree(colour_run.run_dir, tmp_path / "copy")
    before, files = RunDir(run_dir).report.read_bytes(), sorted(p.name for p in run_dir.iterdir())
    written = []

    def disk_full(self, text, *args, **kwargs):  # half the page reaches the disk, then the disk is full
        written.append(self)
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_report(run_dir)
    assert len(written) == 1 and written[0] != RunDir(run_dir).report
    assert RunDir(run_dir).report.read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir()) == files  # nothing half-written left behind


@pytest.fixture(scope="module")
def digits_run(tiny_run):
    """fast-cnn on digits, reported: the session's run that tests/test_rundir_layout.py and
    tests/deploy/test_export.py read too (three epochs: export's gate needs probabilities that are no longer
    uniform)."""
    return tiny_run("digits", name="digits", model="fast-cnn", epochs=3, report=True)


@pytest.mark.slow
def test_sample_rows_follow_the_class_order(digits_run):
    # The digits split lists images in the data's own order, classes mixed; the rows must not follow it.
    classes = read_run(digits_run.run_dir).meta["classes"]
    seen = list(dict.fromkeys(c for _, c, s in read_run(digits_run.run_dir).split if s == "train"))
    assert seen != classes
    page = RunDir(digits_run.run_dir).report.read_text()
    assert re.findall(r'<div class="class-row"><h3>([^<]*)</h3>', page) == classes


@pytest.mark.slow
def test_grad_cam_of_digits_is_taken_at_a_7x7_map_and_says_so(digits_run):
    # fast-cnn's last blocks shrink an 8x8 digit to 3x3 and 1x1: a heat map from those shows nothing.
    explain = _section(RunDir(digits_run.run_dir).report.read_text(), "explain")
    assert "Taken at whiten, whose map is 7x7" in explain


def _write_photo(path: Path, rng: np.random.Generator, side: int, colour: int) -> None:
    """A photo-like image: smooth patches of colour (a random 6x6 grid enlarged smoothly) with a little
    grain, one colour channel lifted so that the classes are learnable. Noise alone would be no photo:
    it compresses like nothing real does."""
    coarse = rng.integers(0, 200, (6, 6, 3))
    coarse[..., colour] += 55
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC))
    grain = rng.integers(-12, 13, smooth.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def photo_page(tmp_path_factory, tiny_run) -> str:
    root = tmp_path_factory.mktemp("data") / "photos"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        for i in range(8):
            _write_photo(root / name / f"img_{i}.png", rng, 160, c)
    run = tiny_run(root, name="photos", model="simple-cnn", image_size=160, epochs=1, report=True)
    return RunDir(run.run_dir).report.read_text()


@pytest.mark.slow
def test_a_photo_report_embeds_photos_as_webp_and_stays_light(photo_page):
    tiles = re.findall(r'<figure class="tile[^"]*"><img src="([^"]+)"', photo_page)
    assert len(tiles) >= 20 and all(t.startswith("data:image/webp;") for t in tiles)

    def kinds(section):
        return re.findall(r'<figure><img src="data:image/(\w+);', _section(photo_page, section))

    # Plots stay lossless PNG, crisp; figures of photos and feature maps are WebP.
    assert kinds("data") == ["png"] and kinds("training") == ["png", "png"] and kinds("metrics") == ["png"]
    assert kinds("augmentation") == ["webp"] and kinds("explain") == ["webp", "webp"]
    assert set(kinds("predictions")) == {"webp"}
    for image in embedded_images(photo_page):
        image.load()  # decodes whole
    assert len(photo_page.encode()) < 2_000_000  # 7.4 MB when every image was a PNG


def test_photo_tiles_are_at_most_twice_their_shown_size_and_small_images_stay_png():
    tile = image_tile(torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8))
    src = re.search(r'src="([^"]+)"', tile).group(1)
    assert src.startswith("data:image/webp;") and _decode(src).size == (TILE_PIXELS, 168)
    # A digit is enlarged pixel by pixel on the page: lossless, at its own size.
    tile = image_tile(torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8))
    src = re.search(r'src="([^"]+)"', tile).group(1)
    assert src.startswith("data:image/png;") and _decode(src).size == (8, 8) and " small" in tile


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished oculi run" in capsys.readouterr().err
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(OculiError, match="no config.json"):
        read_run(tmp_path)


def test_split_phases_separates_the_features_head():
    rows = [{"epoch": 1, "phase": "features", "val_acc": 0.8}, {"epoch": 2, "phase": "features", "val_acc": 0.9},
            {"epoch": 1, "phase": "finetune", "val_acc": 0.85}]
    history, baseline = split_phases(rows)
    assert history == rows[2:] and baseline == rows[1]
    assert split_phases(rows[:2]) == (rows[:2], None)


def test_a_report_that_fails_is_a_warning_not_a_lost_run(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no room")

    monkeypatch.setattr(api, "write_report", broken)
    data = make_class_folder(tmp_path / "colours", per_class=6)
    run = oculi.train(str(data), model="mlp", epochs=1, out=str(tmp_path / "run"), cache=False)
    assert "report.html could not be written (RuntimeError: no room)" in capsys.readouterr().err
    assert oculi.load(run.run_dir).classes == run.classes and not RunDir(run.run_dir).report.exists()


def test_no_report_when_asked(tmp_path):
    root = make_class_folder(tmp_path / "c", per_class=6)
    run = oculi.train(str(root), out=str(tmp_path / "run"), epochs=1, progress=False, report=False)
    assert not RunDir(run.run_dir).report.exists()
    assert (run.run_dir / "model.json").is_file()


def test_the_report_counts_the_stages_below_the_cut_as_frozen():
    from oculi.models import create_model
    from oculi.report.build import _frozen_parameters
    from oculi.route import part_words
    model, _ = create_model("test_resnet", 3, 3, (48, 48))
    frozen = _frozen_parameters(model, "top", stages=1)
    assert frozen and all(not n.startswith(("backbone.layer4", "head")) for n in frozen)
    assert any(n.startswith("backbone.layer3") for n in frozen) and "backbone.conv1.0.weight" in frozen
    assert _frozen_parameters(model, "whole") == {}  # the whole network trained
    assert part_words("top", 2).startswith("the last 2 stages of the backbone and the head")


def test_the_augmentation_section_says_when_the_model_trained_on_cached_inputs():
    from types import SimpleNamespace

    from oculi.config import TrainConfig
    from oculi.data.transforms import Augmentation
    from oculi.report.build import _where_augmented

    def said(training, augmentation=Augmentation(), **config):
        return _where_augmented(SimpleNamespace(config=TrainConfig(data="x", **config), meta={"training": training},
                                                augmentation=augmentation))
    assert said("scratch") == "applied on the fly to every training batch"
    assert said("finetune") == "applied on the fly to every training batch"  # the whole network, on images
    assert said("finetune", unfreeze_stages=2, feature_views=1).startswith("but the top stages trained on cached "
                                                                          "activations, each map mirrored and cropped")
    assert said("finetune", Augmentation(flip=False), unfreeze_stages=2).endswith("each map cropped at random")
    assert said("finetune", None, unfreeze_stages=2).endswith("the maps neither mirrored nor cropped")
    assert said("finetune", unfreeze_stages=2, feature_views=2).startswith(
        "but the top stages trained on cached activations, drawn each epoch from the plain image and the 1 augmented "
        "view of each training image, ")
    assert said("features", feature_views=1).endswith("with 1 view it was not used")
    assert said("features", feature_views=3).endswith("it made the 2 augmented views of each training image")
