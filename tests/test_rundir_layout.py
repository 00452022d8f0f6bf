"""RunDir is the one place that names the files of a run folder (issue 12)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import oculi
from oculi.errors import OculiError
from oculi.rundir import LABEL_SET_FILES, RunDir

ROOT = Path(oculi.__file__).resolve().parent
FILES = sorted(name for name, value in vars(RunDir).items() if isinstance(value, property))


def names() -> set[str]:
    """The file name behind every RunDir property."""
    return {getattr(RunDir(Path()), file).name for file in FILES}


@pytest.mark.slow
def test_a_run_writes_exactly_the_files_rundir_names(tiny_run):
    run = tiny_run("digits", name="digits", model="fast-cnn", epochs=3, report=True)  # test_build.py's run too
    files = RunDir(run.run_dir)
    written = {p.name for p in run.run_dir.iterdir()}
    assert written <= names(), f"files no RunDir property names: {sorted(written - names())}"
    # A features-only run keeps no checkpoint: there is no fine-tuning to resume; a one-label run draws no
    # label-set figures (tests/training/test_multilabel_run.py checks those).
    expected = [f for f in FILES if not (f == "checkpoint" and run.config.mode == "features")
                and f not in LABEL_SET_FILES]
    missing = [f for f in expected if not getattr(files, f).is_file()]
    assert not missing, f"a finished run lacks: {missing}"


def _string_literals(path: Path):
    """(line, text) of every plain string literal in ``path``, f-string parts included."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_no_run_file_name_is_spelled_outside_rundir():
    """A literal exactly equal to a run file's name is a path join (or a lookup) that bypasses RunDir; the
    names in docstrings, help texts and messages are prose and stay."""
    places = [f"{path.relative_to(ROOT.parent)}:{line}: {text!r}"
              for path in sorted(ROOT.rglob("*.py")) if path.name != "rundir.py"
              for line, text in _string_literals(path) if text in names()]
    assert not places, "use RunDir instead of spelling these file names:\n" + "\n".join(places)


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is not an oculi run config"),
    ('{"config": 3}', "is not an oculi run config"),
])
def test_a_damaged_config_is_a_one_line_error_naming_the_file(tmp_path, text, message):
    files = RunDir(tmp_path)
    files.config.write_text(text)
    with pytest.raises(OculiError, match=message) as caught:
        files.read_config()
    assert str(caught.value).startswith(str(files.config)) and "\n" not in str(caught.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(OculiError, match="the run has no metrics.jsonl"):
        RunDir(tmp_path).read_metrics_log()


def test_the_metrics_log_reads_back_as_written(tmp_path):
    rows = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": None}]
    RunDir(tmp_path).write_metrics_log(rows)
    assert RunDir(tmp_path).read_metrics_log() == rows
