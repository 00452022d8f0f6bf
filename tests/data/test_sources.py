from pathlib import Path

import pytest

from oculi.data.sources import open_source
from oculi.data.split import stratified_split, write_manifest
from oculi.errors import OculiError
from tests.conftest import make_class_folder


def test_class_folder_split_is_stratified_and_deterministic(colour_folder):
    a = open_source(str(colour_folder), val_split=0.25, test_split=0.25, seed=3)
    b = open_source(str(colour_folder), val_split=0.25, test_split=0.25, seed=3)
    assert [(r.path, r.split) for r in a.records] == [(r.path, r.split) for r in b.records]
    counts = a.class_counts()
    assert all(counts["val"][c] == 3 and counts["test"][c] == 3 and counts["train"][c] == 6 for c in a.classes)
    other = open_source(str(colour_folder), val_split=0.25, test_split=0.25, seed=4)
    assert [r.split for r in other.records] != [r.split for r in a.records]


def test_split_keeps_a_training_image_per_class():
    splits = stratified_split([0, 1, 1, 1, 1], {"val": 0.5, "test": 0.5}, seed=0)
    assert splits[0] == "train" and "train" in splits[1:]


def test_presplit_folders_are_used_as_given(tmp_path):
    make_class_folder(tmp_path / "d" / "train", per_class=8)
    make_class_folder(tmp_path / "d" / "valid", per_class=2)
    source = open_source(str(tmp_path / "d"), test_split=0.25)
    counts = source.class_counts()
    assert counts["val"] == {"red": 2, "green": 2, "blue": 2}
    assert counts["test"] == {"red": 2, "green": 2, "blue": 2}  # carved out of train: no test folder


def test_class_missing_from_val_warns_and_extra_class_errors(tmp_path):
    make_class_folder(tmp_path / "d" / "train", per_class=4)
    make_class_folder(tmp_path / "d" / "val", per_class=2, classes=("red", "green"))
    source = open_source(str(tmp_path / "d"))
    assert any("blue" in w for w in source.warnings)
    make_class_folder(tmp_path / "d" / "test", per_class=2, classes=("red", "purple"))
    with pytest.raises(OculiError, match="purple"):
        open_source(str(tmp_path / "d"))


def test_hidden_files_ignored_and_non_images_reported(colour_folder):
    (colour_folder / "red" / ".DS_Store").write_bytes(b"\0\1")
    (colour_folder / "red" / "._img_00.png").write_bytes(b"\0")
    (colour_folder / "red" / "notes.txt").write_text("hello")
    source = open_source(str(colour_folder))
    assert source.skipped == [("red/notes.txt", "not an image file (.txt)")]
    assert not any(".DS_Store" in r.path or "._" in r.path for r in source.records)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no such folder"),
    (lambda p: p.mkdir(), "no class folders"),
    (lambda p: (p / "only").mkdir(parents=True) or (p / "only" / "a.png").write_bytes(b"x"), "only one class"),
    (lambda p: make_class_folder(p, per_class=2) and (p / "empty").mkdir(), "'empty' has no training images"),
])
def test_unusable_folders_raise_one_line(tmp_path, setup, message):
    folder = tmp_path / "data"
    setup(folder)
    with pytest.raises(OculiError, match=message) as err:
        open_source(str(folder))
    assert "\n" not in str(err.value)


def test_imbalance_warning(tmp_path):
    make_class_folder(tmp_path / "d", per_class=30, classes=("many",))
    make_class_folder(tmp_path / "d", per_class=5, classes=("few",), seed=1)
    source = open_source(str(tmp_path / "d"), val_split=0, test_split=0)
    assert any("imbalanced" in w and "--class-weights auto" in w for w in source.warnings)


def test_manifest_reuses_the_split(colour_folder, tmp_path):
    first = open_source(str(colour_folder), seed=1)
    manifest = tmp_path / "split.csv"
    write_manifest(manifest, first.records, first.classes)
    again = open_source(str(colour_folder), seed=99, split_manifest=str(manifest))
    assert [(r.path, r.label, r.split) for r in again.records] == [(r.path, r.label, r.split) for r in first.records]


def test_bad_manifest_names_the_flag(colour_folder, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\n")
    with pytest.raises(OculiError, match="--split-manifest"):
        open_source(str(colour_folder), split_manifest=str(bad))
