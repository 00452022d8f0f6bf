"""oculi tune (issue 28): trials are run folders, tune.json names the best, failures are listed, a search resumes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("optuna")

from oculi.rundir import RunDir  # noqa: E402
from oculi.tune import tune  # noqa: E402

FAST = {"head_epochs": 5, "device": "cpu"}


def fake_train(fail_on: set[int], rows=None):
    """A train_fn that records each config and fails on the trials numbered in ``fail_on``; the others write
    ``rows`` (default: one kept epoch, a better score each trial) as their metrics.jsonl (no training)."""
    seen = []

    def train(cfg, reporter):
        seen.append(cfg)
        if len(seen) - 1 in fail_on:
            raise RuntimeError("boom\nsecond line")
        history = rows or [{"epoch": 1, "val_acc": 0.5 + 0.01 * len(seen), "kept": True}]
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        RunDir(Path(cfg.out)).write_metrics_log(history)
        return SimpleNamespace(history=history)
    train.seen = seen
    return train


def test_a_failing_trial_is_listed_and_the_search_goes_on(tmp_path):
    train = fake_train({1})
    result = tune("digits", 60, tmp_path / "t", n_trials=4, finalists=0, train_fn=train)
    states = [t["state"] for t in result.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert result.trials[1]["error"] == "RuntimeError: boom"
    assert [c.mode for c in train.seen] == ["features"] * 4
    first = train.seen[0]  # the default's head is tried first
    assert (first.image_size, first.feature_views, first.classifier, first.head_lr) == (None, None, "linear", 1e-3)
    assert {c.out for c in train.seen} == {str(tmp_path / "t" / "trials" / f"{i:03d}") for i in range(4)}
    assert len(json.loads((tmp_path / "t" / "tune.json").read_text())["trials"]) == 4


def test_a_trial_is_scored_by_the_epoch_its_run_kept_not_its_best(tmp_path):
    rows = [{"epoch": 1, "val_acc": 0.9, "val_macro_f1": 0.8, "kept": False},  # best, not kept (no margin)
            {"epoch": 2, "val_acc": 0.7, "val_macro_f1": 0.6, "kept": True}]
    result = tune("digits", 60, tmp_path / "t", n_trials=1, finalists=0, train_fn=fake_train(set(), rows))
    assert result.trials[0]["value"] == 0.7
    summary = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert summary["metric"] == "val accuracy of the kept epoch"


def test_a_search_scores_by_the_metric_its_runs_keep_epochs_by(tmp_path):
    rows = [{"epoch": 1, "val_acc": 0.9, "val_macro_f1": 0.6, "kept": True}]
    train = fake_train(set(), rows)
    result = tune("digits", 60, tmp_path / "t", n_trials=1, finalists=0, train_fn=train, select_by="macro-f1")
    assert result.trials[0]["value"] == 0.6 and train.seen[0].select_by == "macro-f1"
    assert json.loads((tmp_path / "t" / "tune.json").read_text())["metric"] == "val macro-F1 of the kept epoch"


def test_every_trial_is_given_the_time_left_and_none_starts_after_it(tmp_path, monkeypatch):
    import oculi.tune
    now = [0.0]
    monkeypatch.setattr(oculi.tune, "clock", lambda: now[0])  # a trial takes 15 s of the search's clock
    given = []
    train = fake_train(set())

    def timed(cfg, reporter):
        given.append((cfg.mode, cfg.time_budget))
        now[0] += 15.0
        return train(cfg, reporter)
    tune("digits", 100, tmp_path / "t", finalists=1, train_fn=timed)
    # The head search has 60 s: trials start at 0, 15, 30 and 45 s; the finalist gets 0.8 of the 40 s left.
    assert given == [("features", 60.0), ("features", 45.0), ("features", 30.0), ("features", 15.0), ("auto", 32.0)]
    assert now[0] <= 100.0  # here the trials kept to their budgets; a real one overruns by its fixed costs only


def test_a_search_resumes_from_its_folder(tmp_path):
    tune("digits", 60, tmp_path / "t", n_trials=2, finalists=0, train_fn=fake_train(set()))
    again = fake_train(set())
    result = tune("digits", 60, tmp_path / "t", n_trials=2, finalists=0, train_fn=again)
    assert [t["number"] for t in result.trials] == ["000", "001", "002", "003"]
    assert [c.out[-3:] for c in again.seen] == ["002", "003"]  # the earlier trials were not run again


def test_a_setup_that_fails_every_trial_stops_the_search(tmp_path):
    result = tune("digits", 60, tmp_path / "t", n_trials=20, finalists=0, train_fn=fake_train(set(range(20))))
    assert len(result.trials) == 3 and result.best_run is None


def test_trials_are_run_folders_in_one_compare_page(tmp_path, tiny_data):
    data = tiny_data(per_class=12, classes=("red", "blue"), size=(32, 32))
    result = tune(str(data), 300, tmp_path / "t", n_trials=2, finalists=1, image_sizes=(32,), **FAST)
    summary = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert [t["stage"] for t in summary["trials"]] == ["features", "features", "finetune"]
    assert summary["best"]["run"] == str(result.best_run)
    assert (result.best_run / "model.json").is_file()
    page = (tmp_path / "t" / "compare.html").read_text()
    assert "Score against time" in page and "finetune-" in page


def test_the_pruner_hears_the_search_metric_of_every_epoch():
    from oculi.tune import PruningReporter
    reported = []
    trial = SimpleNamespace(report=lambda value, step: reported.append((value, step)), should_prune=lambda: False)
    PruningReporter(trial, "macro-f1").epoch({"val_acc": 0.9, "val_macro_f1": 0.4})
    assert reported == [(0.4, 1)]


def test_the_pruner_stops_a_trial_through_the_reporter():
    import optuna

    from oculi.tune import PruningReporter
    reported = []
    trial = SimpleNamespace(report=lambda value, step: reported.append((value, step)), should_prune=lambda: len(reported) > 1)
    reporter = PruningReporter(trial)
    reporter.epoch({"val_acc": 0.5})
    reporter.epoch({"val_acc": None})  # an epoch without val images reports nothing
    with pytest.raises(optuna.TrialPruned):
        reporter.epoch({"val_acc": 0.6})
    assert reported == [(0.5, 1), (0.6, 2)]


@pytest.mark.parametrize("args, message", [
    (["/no/such/folder", "--budget", "10s"], "error: no such folder: /no/such/folder (built-in datasets: "),
    (["digits", "--budget", "abc"], "error: --budget must be seconds or a duration like 90s, 2m or 1.5h, got 'abc'"),
    (["digits", "--budget", "0s"], "error: --budget must be more than 0 seconds, got 0"),
])
def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(args, message, tmp_path, monkeypatch, capsys):
    from tests.test_cli import run_cli
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "tune", *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(message), err
    assert list(tmp_path.iterdir()) == []  # no tune folder made


def test_the_data_warnings_are_said_by_the_first_trial_only_and_kept_in_every_folder(tmp_path, capsys):
    import shutil

    from tests.conftest import make_class_folder
    data = make_class_folder(tmp_path / "colours", per_class=12, classes=("red", "blue"), size=(32, 32))
    shutil.copy(data / "red" / "img_00.png", data / "red" / "img_copy.png")  # a copy: a val/test leak, likely
    tune(str(data), 300, tmp_path / "t", n_trials=2, finalists=0, image_sizes=(32,), **FAST)
    err = capsys.readouterr().err
    assert err.count("trial  ") == 2  # both trials ran and said they started
    for trial in ("000", "001"):
        run = RunDir(tmp_path / "t" / "trials" / trial)
        warnings = run.read_json(run.check)["warnings"]
        assert {w["kind"] for w in warnings} >= {"leaks", "few_test"}  # recorded by each trial's folder
        for warning in warnings:
            assert err.count(warning["message"]) == 1, warning  # said once, by the first trial
