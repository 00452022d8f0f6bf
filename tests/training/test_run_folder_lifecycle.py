"""A run folder's life: claimed by one process at a time (tests/test_io.py tests the lock itself), complete
or plainly not, resumable from anywhere, and what a run that could hold no images out leaves in it."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import oculi
from oculi.cli import main
from oculi.config import TrainConfig
from oculi.errors import OculiError
from oculi.rundir import RunDir
from oculi.training import fitting
from oculi.training.folder import next_run_dir
from tests.conftest import make_class_folder
from tests.test_io import hold_lock_in_child

OCULI = [sys.executable, "-m", "oculi"]


# ---------------------------------------------------------------- claiming a folder


def test_next_run_dir_never_gives_two_callers_the_same_folder(tmp_path):
    picked, barrier = [], threading.Barrier(8)

    def pick():
        barrier.wait()
        picked.append(next_run_dir(tmp_path / "runs", "digits"))

    threads = [threading.Thread(target=pick) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in picked) == sorted(["digits"] + [f"digits-{n}" for n in range(2, 9)])
    assert all(p.is_dir() for p in picked)


def test_resume_of_a_folder_another_process_is_training_in_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    child, _ = hold_lock_in_child(RunDir(tmp_path / "run").lock)
    try:
        with pytest.raises(OculiError, match=f"in use by another oculi run \\(pid {child.pid} on "):
            oculi.train(resume=tmp_path / "run")
    finally:
        child.communicate("")


def test_a_new_run_into_a_folder_another_process_is_training_in_says_in_use(tmp_path):
    # Its checkpoint makes the folder look unfinished; "--resume it" would be the wrong advice.
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.checkpoint.write_bytes(b"")
    child, _ = hold_lock_in_child(run.lock)
    try:
        with pytest.raises(OculiError, match=f"in use by another oculi run \\(pid {child.pid} on "):
            oculi.train("digits", out=tmp_path / "run")
    finally:
        child.communicate("")
    with pytest.raises(OculiError, match="holds an unfinished run; --resume it"):
        oculi.train("digits", out=tmp_path / "run")


@pytest.mark.slow
def test_two_trainings_into_one_folder_at_once_one_refuses_the_other_finishes(tmp_path):
    command = OCULI + ["train", "digits", "--epochs", "1", "--image-size", "12", "--out", "same", "--no-report", "-q"]
    runs = [subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    (won, _), (lost, err) = sorted((r.wait(), r.stderr.read()) for r in runs)
    assert (won, lost) == (0, 2), err
    assert err.strip().splitlines()[-1].startswith("error: same is in use by another oculi run (pid ")
    assert "Traceback" not in err
    run = oculi.load(tmp_path / "same")  # the survivor: a complete, verified bundle
    assert len(run.classes) == 10
    assert json.loads((tmp_path / "same" / "model.json").read_text())["metrics"]["epochs_run"] == 1


# ---------------------------------------------------------------- user errors


def test_out_naming_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    assert main(["train", "digits", "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: --out {tmp_path / 'taken'} is a file, not a folder; choose a folder for the run"


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is not an oculi run config"),
    ('{"config": 3}', "is not an oculi run config"),
    ('{"config": {"data": "digits", "colour": "red"}}', "unknown setting 'colour'"),
    ('{"config": {"data": "digits", "epochs": "ten"}}', "--epochs must be"),
])
def test_resume_with_a_damaged_config_is_a_one_line_error(tmp_path, capsys, text, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(text)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume: {tmp_path / 'run' / 'config.json'}") and message in err
    assert len(err.strip().splitlines()) == 1


def test_resume_of_a_finished_run_says_so(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"config": TrainConfig().to_dict()}))
    (tmp_path / "run" / "model.json").write_text("{}")
    with pytest.raises(OculiError, match="already finished"):
        oculi.train(resume=tmp_path / "run")


# ---------------------------------------------------------------- the files a run writes


def test_model_json_is_the_last_file_a_run_writes(tmp_path, monkeypatch):
    published = []
    real_replace = os.replace

    def recording_replace(src, dst):
        real_replace(src, dst)
        published.append(Path(dst).name)

    monkeypatch.setattr(os, "replace", recording_replace)
    data = make_class_folder(tmp_path / "photos", per_class=6)
    oculi.train(str(data), epochs=1, out=str(tmp_path / "run"), progress=False, report=False)
    # model.json ends the run's own files; only the gated export (each file atomic, its .json last) follows
    after = published[published.index("model.json") + 1:]
    assert "model.json" in published and set(after) <= {"model.onnx", "model.onnx.json"}
    assert not after or after[-1] == "model.onnx.json"
    assert {"curves.png", "confusion_matrix.png", "test_metrics.json", "test_predictions.csv",
            "model.safetensors"} <= set(published)


# ---------------------------------------------------------------- resume


def _interrupt_after_first_checkpoint(monkeypatch):
    real = fitting.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fitting, "save_checkpoint", save_then_stop)


@pytest.mark.slow
def test_resume_from_another_working_directory_finds_relative_data(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    make_class_folder(tmp_path / "here" / "photos", per_class=6)
    monkeypatch.chdir(tmp_path / "here")
    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            oculi.train("photos", epochs=2, out=str(tmp_path / "run"), progress=False, report=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["data"] == str(tmp_path / "here" / "photos") and saved["data_as_given"] == "photos"
    half_written = tmp_path / "run" / ".checkpoint.safetensors.k1ll3d.tmp"  # what kill -9 mid-write leaves
    half_written.write_bytes(b"half")
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = oculi.train(resume=tmp_path / "run")
    assert not half_written.exists()
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.config.mode == "scratch" and saved["config"]["mode"] == "scratch"  # what fast-cnn did
    assert oculi.load(tmp_path / "run").classes == ["blue", "green", "red"]


@pytest.mark.slow
def test_resume_before_any_checkpoint_starts_again_and_says_so(tmp_path, monkeypatch, capsys):
    data = make_class_folder(tmp_path / "photos", per_class=6)
    full = oculi.train(str(data), epochs=1, out=str(tmp_path / "full"), progress=False, report=False)
    with monkeypatch.context() as patch:
        patch.setattr(fitting, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            oculi.train(str(data), epochs=1, out=str(tmp_path / "run"), progress=False, report=False)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()
    capsys.readouterr()
    resumed = oculi.train(resume=tmp_path / "run")
    assert "has no checkpoint (checkpoint.safetensors): training it again from the start" in capsys.readouterr().err
    # The same as never interrupted: fast-cnn's layers set from the data included.
    assert resumed.test_metrics == full.test_metrics
    weights = [(tmp_path / run / "model.safetensors").read_bytes() for run in ("run", "full")]
    assert weights[0] == weights[1]


# ---------------------------------------------------------------- tiny data and wording


@pytest.mark.parametrize("per_class", [1, 2])
def test_too_few_images_to_hold_any_out_still_trains_and_says_so(tmp_path, capsys, per_class):
    data = make_class_folder(tmp_path / "tiny", per_class=per_class, classes=("cats", "dogs"))
    run = oculi.train(str(data), epochs=2, out=str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert "no held-out images (no val or test split): the model is saved but not evaluated" in err
    assert "report.html skipped: there are no held-out images to report on" in err
    assert run.test_metrics is None and not (tmp_path / "run" / "test_metrics.json").exists()
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["metrics"]["accuracy"] is None and meta["metrics"]["best_epoch"] == 2
    clf = oculi.load(tmp_path / "run")
    assert [p.label in ("cats", "dogs") for p in clf.predict(sorted(data.rglob("*.png")))] == [True] * 2 * per_class


def test_a_train_folder_without_test_says_where_the_test_images_came_from(tmp_path, capsys):
    data = make_class_folder(tmp_path / "photos" / "train", per_class=10).parent
    run = oculi.train(str(data), epochs=1, out=str(tmp_path / "run"), report=False)
    err = capsys.readouterr().err
    assert "no test/ folder: 10% of train/ held out as test; --test-split 0 to keep all" in err
    assert run.test_metrics["split"] == "test"
