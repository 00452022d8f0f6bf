"""`oculi check` and the check at the start of `oculi train`, on folders the tests make: exact copies,
resized and re-encoded copies, copies across splits and classes, labels flipped on purpose."""

import csv
import json
import shutil

import numpy as np
import oculi
from PIL import Image

from oculi.check.run import run_check
from oculi.cli import main
from oculi.console import Reporter
from tests.conftest import make_class_folder


def shrunk_copy(src, dest, quality=85):
    """``src`` at 3/4 of its size, re-encoded as a JPEG."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as image:
        image.convert("RGB").resize((image.width * 3 // 4, image.height * 3 // 4)).save(dest, "JPEG", quality=quality)


def pictures(root, per_class=8, classes=("red", "green", "blue"), seed=0):
    """root/{train,val}/<class>/: smooth 64 px pictures (enough structure for a perceptual hash), one
    colour dominating each class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            small = rng.integers(0, 120, size=(8, 8, 3))
            small[..., c] += 130
            picture = Image.fromarray(small.astype(np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
            split = "val" if i < 3 else "train"
            (root / split / name).mkdir(parents=True, exist_ok=True)
            picture.save(root / split / name / f"{name}_{i}.png")
    return root


def planted(tmp_path):
    """Three copies planted: a leak (a training image, exactly, in val), the same image under two
    labels (a shrunk re-encoded copy), a near copy within a class."""
    data = pictures(tmp_path / "pics")
    shutil.copy(data / "train/red/red_5.png", data / "val/red/leak.png")
    shrunk_copy(data / "train/green/green_6.png", data / "train/red/conflict.jpg")
    shrunk_copy(data / "train/blue/blue_7.png", data / "train/blue/blue_7_small.jpg")
    return data


def test_check_finds_each_planted_copy_and_writes_its_files(tmp_path, capsys):
    data = planted(tmp_path)
    out = tmp_path / "out"
    assert main(["check", str(data), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    with open(out / "duplicates.csv") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    # Of two training images, the first by path names the group (green/ before red/).
    assert set(rows) == {"val/red/leak.png", "train/red/conflict.jpg", "train/blue/blue_7_small.jpg"}
    assert rows["val/red/leak.png"] == {"path": "val/red/leak.png", "duplicate_of": "train/red/red_5.png",
                                        "kind": "exact", "across_splits": "True", "across_classes": "False"}
    assert rows["train/red/conflict.jpg"]["duplicate_of"] == "train/green/green_6.png"
    assert (rows["train/red/conflict.jpg"]["kind"], rows["train/red/conflict.jpg"]["across_classes"]) == ("near", "True")
    assert rows["train/blue/blue_7_small.jpg"]["kind"] == "near"
    assert printed["duplicate_counts"] == {"exact": 1, "near": 2, "across_classes": 1, "leaks": 1}
    assert {w["kind"] for w in printed["warnings"]} >= {"leaks", "conflicts", "duplicates"}
    page = (out / "check.html").read_text()
    assert page.count("data:image/") >= 6 and "val/red/leak.png" in page
    assert json.loads((out / "check.json").read_text())["duplicate_counts"] == printed["duplicate_counts"]


def test_labels_flipped_on_purpose_come_first(tmp_path):
    data = make_class_folder(tmp_path / "colours", per_class=20, size=(20, 20))
    flipped = {"red/img_03.png": "green", "green/img_07.png": "blue", "blue/img_11.png": "red"}
    for path, to in flipped.items():
        shutil.move(data / path, data / to / f"flipped_{path.replace('/', '_')}")
    # No backbone: the labels are judged on pixels, which tell these colour classes apart.
    result, out = run_check(str(data), labels=True, out=tmp_path / "out", reporter=Reporter(quiet=True))
    with open(out / "label_issues.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"].split("/")[1].startswith("flipped_") for r in rows[:3]] == [True] * 3
    suggested = {r["path"].split("/")[1]: r["suggested"] for r in rows[:3]}
    assert suggested == {"flipped_red_img_03.png": "red", "flipped_green_img_07.png": "green",
                         "flipped_blue_img_11.png": "blue"}
    assert float(rows[0]["score"]) >= float(rows[-1]["score"])
    assert "pixels" in result.label_method
    run_check(str(data), out=out, reporter=Reporter(quiet=True))  # without --labels: no stale list is left
    assert not (out / "label_issues.csv").exists() and (out / "duplicates.csv").is_file()


def test_a_bad_folder_is_one_error_line(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("error: no such folder")


def test_train_checks_its_data_and_drops_leaks_when_asked(tmp_path):
    data = planted(tmp_path)
    kept = oculi.train(str(data), model="mlp", epochs=1, out=str(tmp_path / "kept"), progress=False,
                       report=False, cache=False, test_split=0)
    dropped = oculi.train(str(data), model="mlp", epochs=1, out=str(tmp_path / "dropped"), progress=False,
                          report=False, cache=False, test_split=0, drop_leaks=True)
    check = json.loads((kept.run_dir / "check.json").read_text())
    assert check["duplicate_counts"]["leaks"] == 1 and not check["leaks_dropped"]
    assert kept.test_metrics["split"] == "val" and kept.test_metrics["leaks_present"] is True
    assert dropped.test_metrics["leaks_present"] is False
    assert dropped.test_metrics["n"] == kept.test_metrics["n"] - 1
    with open(dropped.run_dir / "split.csv") as f:
        assert "val/red/leak.png" not in f.read()


def test_leaks_among_real_photos(hymenoptera, tmp_path):
    """Real photos (../shared): an exact and a half-size re-encoded copy of training photos planted in val/
    are the leaks found, and no distinct photo is paired with another."""
    data = tmp_path / "photos"
    for split, first, n in (("train", 0, 12), ("val", 12, 3), ("test", 15, 2)):  # a test/ folder: train stays whole
        for name in ("ants", "bees"):
            (data / split / name).mkdir(parents=True)
            for photo in sorted((hymenoptera / "train" / name).glob("*.jpg"))[first:first + n]:
                shutil.copy(photo, data / split / name / photo.name)
    ant, bee = sorted((data / "train/ants").glob("*.jpg"))[0], sorted((data / "train/bees").glob("*.jpg"))[0]
    shutil.copy(ant, data / "val/ants/copy.jpg")
    with Image.open(bee) as image:
        image.resize((image.width // 2, image.height // 2)).save(data / "val/bees/small_copy.jpg", quality=60)
    result, _ = run_check(str(data), out=tmp_path / "out", reporter=Reporter(quiet=True))
    assert {(d.path, d.duplicate_of, d.kind) for d in result.duplicates} == {
        ("val/ants/copy.jpg", f"train/ants/{ant.name}", "exact"),
        ("val/bees/small_copy.jpg", f"train/bees/{bee.name}", "near")}
    assert result.leaks() == {"val/ants/copy.jpg", "val/bees/small_copy.jpg"}


def test_tiny_look_alikes_are_not_called_copies(tmp_path):
    """sklearn's 8x8 digits hold no copies, yet distinct scans of one digit hash within the near-copy
    distance once blown up to the pHash's 32x32: images that small are checked for exact copies only."""
    result, _ = run_check("digits", out=tmp_path / "out", reporter=Reporter(quiet=True))
    assert result.profile["images"] == 1797
    assert result.duplicates == []


def test_a_training_run_checks_with_the_facts_its_decoding_read_cold_and_from_the_cache(tmp_path, monkeypatch):
    """The check's file hashes and header facts come from decoding (each file read once), on a cold cache
    and from a cache entry; they equal what reading each file again gives (check.json the same)."""
    from oculi.check import run as check_run
    from oculi.data import contained
    from oculi.data.unreadable import Unreadable
    data = planted(tmp_path)
    with monkeypatch.context() as patch:  # decoding as before: pixels only, so the check reads each file
        prepare = contained.prepare_file
        patch.setattr(contained, "prepare_file_with_facts",
                      lambda path, preprocessing, draft: (lambda r: r if isinstance(r, Unreadable) else (r, None))(
                          prepare(path, preprocessing, draft)))
        oculi.train(str(data), model="mlp", epochs=1, out=str(tmp_path / "reread"), progress=False,
                    report=False, cache=False, test_split=0, drop_leaks=True)
    (tmp_path / "reread" / "check.json").rename(tmp_path / "reread.json")

    def no_second_read(*args, **kwargs):
        raise AssertionError("a file was read again for the check")

    monkeypatch.setattr(check_run, "source_facts", no_second_read)
    monkeypatch.setenv("OCULI_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("cold", "cached"):
        run = oculi.train(str(data), model="mlp", epochs=1, out=str(tmp_path / name), progress=False,
                          report=False, test_split=0, drop_leaks=True)
        check, before = (json.loads(p.read_text()) for p in (run.run_dir / "check.json", tmp_path / "reread.json"))
        assert check.pop("seconds") >= 0 and before.pop("seconds") >= 0
        assert check == before and check["duplicate_counts"]["leaks"] == 1


def test_a_test_folder_that_copies_train_and_val_gets_its_leak_free_figures_beside_the_whole(tmp_path, capsys):
    # The insects tutorial's test/ folder is byte copies of train/ files; a test copy of a val image leaks too
    # (val chose the model). The result line, test_metrics.json and report.html give the figures without them.
    data = pictures(tmp_path / "pics")
    fresh = pictures(tmp_path / "fresh", per_class=5, seed=1)  # other pictures of the same kinds
    copies = {"train/red/red_5.png", "train/green/green_6.png", "val/blue/blue_0.png"}
    for path in copies:
        (data / "test" / path.split("/")[1]).mkdir(parents=True, exist_ok=True)
        shutil.copy(data / path, data / "test" / path.split("/")[1] / f"copy_{path.split('/')[-1]}")
    for picture in (fresh / "train").glob("*/*.png"):
        shutil.copy(picture, data / "test" / picture.parent.name / f"new_{picture.name}")
    run = oculi.train(str(data), model="mlp", epochs=2, out=str(tmp_path / "run"), cache=False)
    said = capsys.readouterr().err
    metrics = json.loads((run.run_dir / "test_metrics.json").read_text())
    clean = metrics["leak_free"]
    assert metrics["split"] == "test" and metrics["leaks_present"] is True
    assert (clean["images"], clean["leaked"]) == (6, 3)
    with open(run.run_dir / "test_predictions.csv") as f:
        rows = [r for r in csv.DictReader(f) if "/new_" in r["path"]]
    assert clean["accuracy"] == sum(r["true"] == r["predicted"] for r in rows) / len(rows)
    assert f"but 3 of them copy a training or val image (check.json): on the 6 that copy none " \
           f"{clean['accuracy']:.2%}" in " ".join(said.split())
    assert "on the 6 that copy none" in (run.run_dir / "report.html").read_text()
