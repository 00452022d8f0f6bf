import os
from pathlib import Path

import pytest

from oculi.data.cache import ArrayCache
from oculi.data.loading import decode_source
from oculi.data.sources import open_source
from oculi.data.split import read_manifest, stratified_split, write_manifest
from oculi.data.transforms import Preprocessing
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


@pytest.mark.parametrize("per_class, fractions, held_out", [(1, {}, 0), (4, {}, 0), (5, {"test_split": 0.2}, 3)])
def test_too_few_held_out_images_warn_in_one_line(tmp_path, per_class, fractions, held_out):
    source = open_source(str(make_class_folder(tmp_path / "d", per_class=per_class)), **fractions)
    warning = [w for w in source.warnings if w.startswith("val/test are empty or too small")]
    assert warning == [f"val/test are empty or too small: {held_out} images for 3 classes; val accuracy and "
                       f"test metrics need more images per class (each class keeps one for training)"]


@pytest.mark.parametrize("per_class, fractions", [(12, {}), (1, {"val_split": 0, "test_split": 0})])
def test_enough_held_out_images_or_none_asked_for_do_not_warn(tmp_path, per_class, fractions):
    source = open_source(str(make_class_folder(tmp_path / "d", per_class=per_class)), **fractions)
    assert not any("val/test" in w for w in source.warnings)


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


def test_broken_and_looping_links_are_skipped_with_reasons_and_good_links_kept(tmp_path):
    root = make_class_folder(tmp_path / "d", per_class=2)
    outside = make_class_folder(tmp_path / "outside", per_class=1, classes=("far",))
    links = {"red/far.png": outside / "far" / "img_00.png", "red/dangling.png": root / "red" / "gone.png",
             "red/loop_a.png": root / "red" / "loop_b.png", "red/loop_b.png": root / "red" / "loop_a.png",
             "green/up": root / "green", "green/root": root, "green/slash": Path("/"),
             "blue/linked": outside / "far", "blue/twice": outside / "far"}
    for link, target in links.items():
        (root / link).symlink_to(target)
    source = open_source(str(root))
    assert source.skipped == [("blue/twice", "symbolic link to a folder already scanned"),
                              ("green/root", "symbolic link loop"), ("green/slash", "symbolic link loop"),
                              ("green/up", "symbolic link loop"), ("red/dangling.png", "broken symbolic link"),
                              ("red/loop_a.png", "symbolic link loop"), ("red/loop_b.png", "symbolic link loop")]
    labels = {r.path: source.classes[r.label] for r in source.records}
    assert len(labels) == 6 + 2 and labels["red/far.png"] == "red" and labels["blue/linked/img_00.png"] == "blue"


def _latin1_named_copy(image: Path) -> str:
    """A copy of ``image`` named with a byte that is not UTF-8 (as a Latin-1 system writes "latin\xe9"),
    made through a bytes path; returned as the str the OS gives back for it (with a surrogate escape)."""
    name = os.fsencode(image.parent) + b"/latin\xe9.png"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT)
    except OSError:
        pytest.skip("this filesystem refuses file names that are not UTF-8")
    with os.fdopen(fd, "wb") as f:
        f.write(image.read_bytes())
    return os.fsdecode(name)


def test_a_file_name_that_is_not_utf8_is_listed_decoded_and_kept_in_the_manifest(tmp_path):
    root = make_class_folder(tmp_path / "d", per_class=3)
    odd = Path(_latin1_named_copy(root / "red" / "img_00.png")).relative_to(root).as_posix()
    source = open_source(str(root), val_split=0, test_split=0)
    assert odd in [r.path for r in source.records] and not source.skipped
    decoded = decode_source(source, Preprocessing((8, 8), 3), cache=ArrayCache("images"))  # the cache key hashes it
    assert decoded.mapped and odd in decoded.rows and not decoded.failed
    manifest = tmp_path / "split.csv"
    write_manifest(manifest, source.records, source.classes)
    assert (odd, "red", "train") in read_manifest(manifest)
    again = open_source(str(root), split_manifest=str(manifest))
    assert not any("no longer" in w for w in again.warnings) and odd in [r.path for r in again.records]


@pytest.mark.slow
def test_a_run_trains_on_a_non_utf8_name_and_lists_a_broken_link(tmp_path):
    import oculi
    root = make_class_folder(tmp_path / "d", per_class=6)
    odd = Path(_latin1_named_copy(root / "red" / "img_00.png")).relative_to(root).as_posix()
    (root / "green" / "gone.png").symlink_to(root / "green" / "nothing.png")
    run = oculi.train(str(root), out=str(tmp_path / "run"), epochs=1, report=False, progress=False)
    assert [label for path, label, _ in read_manifest(run.run_dir / "split.csv") if path == odd] == ["red"]
    assert run.skipped == [("green/gone.png", "broken symbolic link")]
    skipped_csv = (run.run_dir / "skipped_files.csv").read_text()
    assert "green/gone.png,broken symbolic link" in skipped_csv
