"""Evaluating a run again on its own held-out split."""

import csv
from pathlib import Path

import oculi
from oculi.evaluate import evaluate_run


def _held_out_rows(run_dir, split="test") -> list[dict]:
    with open(run_dir / "split.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["split"] == split]


def test_a_builtin_run_is_evaluated_again_on_its_own_test_split(tmp_path):
    """digits has no files: the test images come from the set, by the run's split.csv."""
    run = oculi.train("digits", model="mlp", epochs=1, out=str(tmp_path / "run"), progress=False, report=False,
                      cache=False)
    metrics, written = evaluate_run(oculi.load(run.run_dir), run.run_dir, top_k=3)
    assert metrics["split"] == "test" and metrics["data"] == "digits"
    assert metrics["n"] == len(_held_out_rows(run.run_dir)) == run.test_metrics["n"] > 0
    assert metrics["confusion_matrix"] == run.test_metrics["confusion_matrix"]
    assert written == run.run_dir / "evaluate-test" and (written / "metrics.json").is_file()


def test_a_run_without_test_images_is_evaluated_on_its_val_split_as_training_scored_it(colour_folder, tmp_path):
    run = oculi.train(str(colour_folder), model="mlp", epochs=1, test_split=0.0, out=str(tmp_path / "run"),
                      progress=False, report=False, cache=False)
    metrics, _ = evaluate_run(oculi.load(run.run_dir), run.run_dir)
    assert run.test_metrics["split"] == metrics["split"] == "val"
    assert metrics["n"] == len(_held_out_rows(run.run_dir, "val")) == run.test_metrics["n"]


def test_evaluate_on_the_val_folder_reproduces_the_kept_models_recorded_val_figures(tmp_path):
    # issue 24: model.json named no val figure of the kept model; metrics.jsonl's last row could be a
    # thrown-away epoch.
    import json
    from oculi.evaluate import evaluate_folder
    from tests.conftest import make_class_folder
    for split, seed, n in (("train", 0, 16), ("val", 1, 8), ("test", 2, 6)):
        make_class_folder(tmp_path / "data" / split, per_class=n, seed=seed, size=(16, 16))
    run = oculi.train(str(tmp_path / "data"), model="mlp", epochs=4, out=str(tmp_path / "run"), progress=False,
                      report=False, cache=False)
    kept = json.loads((run.run_dir / "model.json").read_text())["kept"]
    assert kept == run.test_metrics["kept"] and kept["part"] == "scratch" and kept["val_images"] == 24
    metrics, _ = evaluate_folder(oculi.load(run.run_dir), tmp_path / "data" / "val", out=tmp_path / "ev")
    assert metrics["n"] == 24 and metrics["accuracy"] == kept["val_accuracy"]
    assert abs(metrics["log_loss"] - kept["val_loss"]) < 1e-4
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    [marked] = [r for r in rows if r["kept"]]
    assert marked["epoch"] == kept["epoch"] and kept["words"] == f"from scratch, epoch {kept['epoch']}"


def test_evaluate_finds_the_runs_data_by_trainings_rule(tmp_path, monkeypatch):
    """One rule (data.sources.data_folder) for training and evaluate: a folder named like a built-in set is
    the user's folder; a built-in name that is no path is the set; a file is neither."""
    import pytest
    from oculi.data.sources import open_source
    from oculi.data.split import Record
    from oculi.errors import OculiError
    from oculi.evaluate import _images_of
    from tests.conftest import make_class_folder
    monkeypatch.chdir(tmp_path)
    records = [Record("red/img_00.png", 0, "test")]
    builtin = _images_of({"data": "digits"}, records, ["red", "green", "blue"], tmp_path)
    assert builtin.arrays is not None and builtin.root is None and not builtin.flips_keep_class
    make_class_folder(tmp_path / "digits", per_class=2)
    assert open_source("digits", val_split=0, test_split=0).root == Path("digits")
    folder = _images_of({"data": "digits"}, records, ["red", "green", "blue"], tmp_path)
    assert folder.root == Path("digits") and folder.arrays is None and folder.read(records[0]).shape[0] == 3
    (tmp_path / "mnist").write_text("not a folder")
    for rule in (lambda: open_source("mnist"), lambda: _images_of({"data": "mnist"}, records, ["red"], tmp_path)):
        with pytest.raises(OculiError, match="mnist is a file"):
            rule()
