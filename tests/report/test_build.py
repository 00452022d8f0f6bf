"""report.html: built at the end of every run from the run folder, self-contained, rebuildable."""

import base64
import io
import re
import shutil

import pytest
from PIL import Image

import oculi
from oculi.cli import main
from oculi.errors import OculiError
from oculi.models import count_parameters, create_model
from oculi.report.build import REPORT_NAME, layer_rows, read_run, split_phases, write_report
from tests.conftest import make_class_folder

SECTIONS = ("data", "augmentation", "model", "training", "metrics", "predictions", "explain")


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A small run whose data holds one corrupt image."""
    root = make_class_folder(tmp_path_factory.mktemp("data") / "colours", per_class=16)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return oculi.train(str(root), out=str(tmp_path_factory.mktemp("runs") / "colours"), epochs=2, progress=False)


def embedded_images(page: str) -> list[Image.Image]:
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in sources), "every image is embedded"
    return [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in sources]


def test_every_run_writes_a_self_contained_report(colour_run):
    page = (colour_run.run_dir / REPORT_NAME).read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    images = embedded_images(page)
    assert len(images) >= 9  # counts, samples, augmentation, curves, confusion, grid, bars, mistakes/none, explain
    for image in images:
        image.verify()  # a truncated or garbled PNG raises here
    # Nothing is fetched: no scripts, no style sheets, no remote addresses.
    assert "<script" not in page and "<link" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert f"{colour_run.test_metrics['accuracy']:.2%}" in page


def test_report_names_skipped_files_and_the_classes(colour_run):
    page = (colour_run.run_dir / REPORT_NAME).read_text()
    assert "broken.png" in page and "1 file could not be used" in page
    for name in ("red", "green", "blue"):
        assert name in page


def test_report_rebuilds_the_same_page_later(colour_run, capsys, tmp_path):
    run_dir = shutil.copytree(colour_run.run_dir, tmp_path / "copy")
    first = (run_dir / REPORT_NAME).read_text()
    (run_dir / REPORT_NAME).unlink()
    assert main(["report", str(run_dir)]) == 0
    assert str(run_dir / REPORT_NAME) in capsys.readouterr().out
    rebuilt = (run_dir / REPORT_NAME).read_text()
    # The same run gives the same page, but for its title (the folder's name).
    assert rebuilt.replace("copy", "colours") == first


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


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished oculi run" in capsys.readouterr().err
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(OculiError, match="no config.json"):
        read_run(tmp_path)


def test_layer_rows_add_up_to_the_model():
    model, _ = create_model("vgg-mini", 10, 3, (32, 32), "softmax", False)
    rows = layer_rows(model, (1, 3, 32, 32), {})
    assert sum(int(r[3].replace(",", "")) for r in rows) == count_parameters(model)
    assert rows[-1][2] == "10"  # the last layer's output: one score per class
    assert ["features.0.1", "Conv2d", "32 x 32 x 32", "896", ""] in rows  # Keras: Conv2D(32, 3) on RGB, 896


def test_layer_rows_of_a_timm_backbone_count_its_own_norm_weights():
    model, _ = create_model("resnet18", 2, 3, (64, 64), "softmax", False)
    frozen = {n: p.numel() for n, p in model.named_parameters() if n.startswith("backbone.")}
    rows = layer_rows(model, (1, 3, 64, 64), frozen)
    params = sum(int(r[3].replace(",", "")) for r in rows)
    fixed = sum(int(r[4].replace(",", "")) for r in rows if r[4])
    assert params == sum(p.numel() for p in model.parameters())
    assert fixed == sum(frozen.values()) and fixed < params  # the head is trained
    assert len(rows) <= 40


def test_split_phases_separates_the_features_head():
    rows = [{"epoch": 1, "phase": "features", "val_acc": 0.8}, {"epoch": 2, "phase": "features", "val_acc": 0.9},
            {"epoch": 1, "phase": "finetune", "val_acc": 0.85}]
    history, baseline = split_phases(rows)
    assert history == rows[2:] and baseline == rows[1]
    assert split_phases(rows[:2]) == (rows[:2], None)


def test_no_report_when_asked(tmp_path):
    root = make_class_folder(tmp_path / "c", per_class=6)
    run = oculi.train(str(root), out=str(tmp_path / "run"), epochs=1, progress=False, report=False)
    assert not (run.run_dir / REPORT_NAME).exists()
    assert (run.run_dir / "model.json").is_file()
