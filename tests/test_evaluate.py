"""Evaluating a run again on its own held-out split."""

import csv

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
