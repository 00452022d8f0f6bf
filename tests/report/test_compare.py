"""oculi compare: the table, the overlaid curves and compare.html, from real run folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from oculi.cli import main
from oculi.errors import OculiError
from oculi.report.compare import (HEADERS, differing_settings, images_per_second, load_runs, plot_run_curves,
                                  run_names, table_rows, write_comparison, _phase_segments)
from oculi.rundir import RunDir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data, tiny_run) -> list[Path]:
    """Two small runs that differ in epochs and in the split they were scored on (test; val: no test split).
    The first is given an ECE, as runs that measure calibration have; the second none, as older runs: both
    are this module's copies of the session's runs, edited."""
    root = tmp_path_factory.mktemp("compare")
    data = tiny_data(per_class=8)
    first = shutil.copytree(tiny_run(data, model="mlp", epochs=2).run_dir, root / "two")
    second = shutil.copytree(tiny_run(data, model="mlp", epochs=3, test_split=0.0).run_dir, root / "three")
    _edit_metrics(first, lambda m: {**m, "calibration": {"before": {"ece": 0.3}, "after": {"ece": 0.0123}}})
    _edit_metrics(second, lambda m: {k: v for k, v in m.items() if k != "calibration"})
    return [first, second]


def _edit_metrics(run_dir: Path, change) -> None:
    path = RunDir(run_dir).test_metrics
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def test_each_row_shows_the_runs_own_files(runs):
    rows = table_rows(load_runs(runs))
    table = [dict(zip(HEADERS, row)) for row in rows]
    for run_dir, row in zip(runs, table):
        metrics = json.loads(RunDir(run_dir).test_metrics.read_text())
        history = RunDir(run_dir).read_metrics_log()
        assert row["run"] == run_dir.name and row["model"] == "mlp (scratch)" and row["data"] == "colours"
        assert row["split"] == metrics["split"]
        assert row["accuracy"] == f"{metrics['accuracy']:.2%}"
        assert row["macro-F1"] == f"{metrics['macro_avg']['f1']:.4f}"
        assert row["log loss"] == f"{metrics['log_loss']:.4f}"
        seconds = history[-1]["time"] - history[0]["time"] + history[0]["seconds"]
        assert row["training time"] == f"{seconds:.1f} s"
        assert row["images/s"] == f"{np.median([r['images_per_s'] for r in history]):,.0f}"
    assert [r["split"] for r in table] == ["test", "val"]
    assert [r["ECE"] for r in table] == ["0.0123", "—"]  # an older run without ECE: a dash, not an error


def test_the_settings_that_differ_are_listed_and_no_others(runs):
    settings = {row[0]: row[1:] for row in differing_settings(load_runs(runs))}
    assert settings == {"epochs": ["2", "3"], "test_split": ["0.1", "0"]}


def test_the_curves_draw_each_runs_val_metrics_against_epoch_and_time(runs):
    compared = load_runs(runs)
    by_epoch = plot_run_curves(compared, "val_acc", "epoch").axes[0]
    for line, run in zip(by_epoch.lines, compared):
        assert line.get_label() == run.name
        assert list(line.get_xdata()) == list(range(1, len(run.history) + 1))
        assert list(line.get_ydata()) == pytest.approx([r["val_acc"] for r in run.history])
    by_time = plot_run_curves(compared, "val_loss", "time").axes[0]
    for line, run in zip(by_time.lines, compared):
        start = run.history[0]["time"] - run.history[0]["seconds"]
        assert list(line.get_xdata()) == pytest.approx([r["time"] - start for r in run.history])
        assert list(line.get_ydata()) == pytest.approx([r["val_loss"] for r in run.history])


def test_a_features_head_then_fine_tuning_is_one_joined_line_in_two_styles():
    rows = [{"phase": "features"}] * 3 + [{"phase": "finetune"}] * 2
    assert [list(s) for s in _phase_segments(rows)] == [[0, 1, 2], [2, 3, 4]]
    assert [list(s) for s in _phase_segments(rows[:2])] == [[0, 1]]


def test_images_per_second_leaves_out_the_head_on_feature_vectors():
    rows = [{"phase": "features", "images_per_s": 90000.0}, {"phase": "finetune", "images_per_s": 10.0},
            {"phase": "finetune", "images_per_s": 30.0}, {"phase": "finetune", "images_per_s": 12.0}]
    assert images_per_second(rows) == 12.0
    assert images_per_second(rows[:1]) is None


def test_runs_of_one_name_are_told_apart_by_their_parent():
    names = run_names([Path("runs/a/run"), Path("runs/b/run"), Path("runs/other")])
    assert names == ["a/run", "b/run", "other"]


def test_the_cli_prints_the_table_and_writes_the_page_atomically(runs, tmp_path, capsys):
    assert main(["compare", *map(str, runs), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert all(h in printed for h in ("macro-F1", "log loss", "images/s")) and runs[1].name in printed
    page = tmp_path / "compare.html"
    assert f"wrote {page}" in printed
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("compare")] == ["compare.html"]
    html = page.read_text()
    assert all(f'<section id="{s}">' in html for s in ("runs", "curves", "settings"))
    assert html.count('src="data:image/png;base64,') == 5 and "oculi compare RUN RUN" in html


def test_a_folder_that_is_not_a_run_is_one_line_naming_it(runs, tmp_path, capsys):
    stray = tmp_path / "holiday_photos"
    stray.mkdir()
    assert main(["compare", str(runs[0]), str(stray)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {stray}: not a finished oculi run (no model.json)\n"
    assert not (tmp_path / "compare.html").exists()
    with pytest.raises(OculiError, match="give the run folders"):
        write_comparison([])
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    assert main(["compare", str(runs[0]), "--out", str(a_file / "compare.html")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {a_file / 'compare.html'}: cannot write it")


# ---------------------------------------------------------------- in a browser

def test_compare_html_renders_within_a_laptop_and_a_phone_screen(runs, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e .[dev])")
    from tests.report import test_browser as report_browser
    if report_browser.CHROMIUM is None:
        pytest.skip("needs Chromium: apt-get install chromium")
    page_file, _ = write_comparison(runs, tmp_path / "compare.html")
    keep = Path(os.environ["OCULI_SCREENSHOTS"]) if os.environ.get("OCULI_SCREENSHOTS") else None
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=report_browser.CHROMIUM, args=report_browser.CHROMIUM_FLAGS)
        for screen, width in report_browser.WIDTHS.items():
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            assert page.evaluate(report_browser.BROKEN_IMAGES_JS) == []
            assert page.evaluate(report_browser.OVERFLOW_JS) == []
            assert page.evaluate("[...document.querySelectorAll('section')].map(s => s.id)") == [
                "runs", "curves", "score-time", "settings"]
            # A column per run, a row per figure of the terminal's table.
            assert page.evaluate("[...document.querySelectorAll('#runs thead th')].map(t => t.textContent)") == [
                "", *(r.name for r in runs)]
            assert page.evaluate("[...document.querySelectorAll('#runs tbody th, #runs tbody tr td:first-child')]"
                                 ".map(t => t.textContent)") == HEADERS[1:]
            shot = page.screenshot(path=str(tmp_path / f"compare-{screen}.png"), full_page=True)
            assert len(shot) > 1000
            if keep:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(tmp_path / f"compare-{screen}.png", keep)
            page.close()
        browser.close()
