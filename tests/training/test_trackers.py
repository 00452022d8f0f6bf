"""--log tensorboard / mlflow: what a run sends its trackers, read back by the trackers' own libraries."""

from __future__ import annotations

import sys
import threading
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from oculi.cli import main
from oculi.config import TrainConfig
from oculi.console import Reporter
from oculi.errors import OculiError
from oculi.rundir import RunDir
from oculi.training import trackers
from oculi.training.trackers import RunLog, Tracker, check_trackers, epoch_metrics, mlflow_uri, result_metrics, run_log


class Recorder(Tracker):
    def __init__(self):
        self.calls = []

    def log_params(self, params):
        self.params = params

    def close(self, status):
        self.status = status

    def log_metrics(self, metrics, step, wall_time):
        self.calls.append((step, metrics, wall_time))


def recording_log(*trackers: Tracker, reporter=None) -> RunLog:
    log = RunLog(reporter or Reporter(quiet=True))
    for i, tracker in enumerate(trackers):
        log.open(f"tracker{i}", lambda: tracker)
    return log


def test_each_epoch_is_sent_once_at_its_place_in_the_run():
    recorder = Recorder()
    log = recording_log(recorder)
    rows = [{"epoch": 1, "phase": "features", "val_acc": 0.5, "time": 10.0},
            {"epoch": 2, "phase": "features", "val_acc": 0.7, "time": 11.0},
            {"epoch": 1, "phase": "finetune", "val_acc": 0.9, "val_loss": None, "time": 20.0}]
    log.log_epochs(rows[:2])  # the features head's history at once, then each fine-tuned epoch
    log.log_epochs(rows)
    log.log_epochs(rows)  # nothing new: nothing sent
    assert [(step, m["val_acc"], t) for step, m, t in recorder.calls] == [(1, 0.5, 10.0), (2, 0.7, 11.0),
                                                                         (3, 0.9, 20.0)]
    assert "val_loss" not in recorder.calls[2][1]  # no val images: no value, rather than a made-up one


class Broken(Tracker):
    def log_metrics(self, metrics, step, wall_time):
        raise ConnectionError("tracking server unreachable")

    def close(self, status):
        raise AssertionError("a dropped tracker is not called again")


def test_a_tracker_that_fails_is_dropped_with_a_warning_and_the_others_go_on(capsys):
    recorder = Recorder()
    log = recording_log(Broken(), recorder, reporter=Reporter())
    log.log_epochs([{"val_acc": 0.5}, {"val_acc": 0.6}])
    log.close("FINISHED")
    assert [step for step, _, _ in recorder.calls] == [1, 2] and recorder.status == "FINISHED"
    err = capsys.readouterr().err
    assert err.count("--log tracker0 failed, the run goes on without it: ConnectionError: tracking server "
                     "unreachable") == 1


def test_a_tracker_that_cannot_open_is_left_out():
    def unreachable():
        raise ConnectionError("no server")
    log = RunLog(Reporter(quiet=True))
    log.open("mlflow", unreachable)
    assert log.trackers == {}


@pytest.mark.parametrize("raised, status", [(None, "FINISHED"), (KeyboardInterrupt, "KILLED"),
                                            (RuntimeError, "FAILED")])
def test_the_trackers_get_the_settings_and_how_the_run_ended(raised, status, monkeypatch, tmp_path):
    recorder = Recorder()
    monkeypatch.setattr(trackers, "open_tracker", lambda *args: recorder)
    cfg = TrainConfig(log="tensorboard", epochs=7)
    with pytest.raises(raised) if raised else nullcontext():
        with run_log(cfg, tmp_path, "digits", Reporter(quiet=True)):
            if raised:
                raise raised
    assert recorder.params == cfg.to_dict() and recorder.status == status


def test_a_row_sends_its_measurements_not_its_labels():
    row = {"epoch": 3, "phase": "train", "train_loss": 0.5, "train_acc": 0.8, "lr": 1e-3, "images_per_s": 900.5,
           "seconds": 1.2, "time": 1.7e9, "val_loss": None, "gpu_peak_mib": 512}
    assert epoch_metrics(row) == {"train_loss": 0.5, "train_acc": 0.8, "lr": 1e-3, "images_per_s": 900.5,
                                  "seconds": 1.2, "gpu_peak_mib": 512.0}


def test_final_scores_are_named_by_their_split_and_ece_only_when_measured():
    metrics = {"split": "val", "accuracy": 0.9, "log_loss": 0.3, "macro_avg": {"f1": 0.85}}
    assert result_metrics(metrics) == {"val_accuracy": 0.9, "val_macro_f1": 0.85, "val_log_loss": 0.3}
    metrics["calibration"] = {"before": {"ece": 0.2}, "after": {"ece": 0.04}}
    assert result_metrics(metrics)["val_ece"] == 0.04
    assert result_metrics(None) == {}


def test_a_missing_tracker_package_is_one_line_naming_the_pip_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # find_spec then answers "not installed"
    with pytest.raises(OculiError, match=r"--log mlflow needs the mlflow-skinny package: pip install mlflow-skinny"):
        check_trackers("tensorboard+mlflow")
    assert main(["train", "digits", "--log", "mlflow", "--epochs", "1", "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --log mlflow needs") and err.count("\n") == 1
    assert not RunDir(Path("run")).config.exists()  # refused before any work


def test_an_mlflow_server_that_does_not_answer_is_named_before_the_run(monkeypatch):
    pytest.importorskip("mlflow", reason="needs mlflow-skinny (pip install -e .[dev])")
    with pytest.raises(OculiError, match=r"^--mlflow-uri http://127.0.0.1:9: the tracking server does not answer"):
        check_trackers("mlflow", "http://127.0.0.1:9")  # the discard port: nothing listens there
    check_trackers("none", "http://127.0.0.1:9")  # not asked to log to MLflow: not checked


def test_a_server_that_answers_passes_whatever_its_status():
    pytest.importorskip("mlflow", reason="needs mlflow-skinny (pip install -e .[dev])")
    server = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # answers every request 501
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        check_trackers("mlflow", f"http://127.0.0.1:{server.server_port}")
        thread.join(10)
        assert not thread.is_alive()  # the server was asked
    finally:
        server.server_close()


def test_mlflow_defaults_to_the_environment_then_a_local_mlruns_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri(None) == (tmp_path / "mlruns").as_uri()  # tests run in tmp_path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert mlflow_uri(None) == "http://tracking.example:5000"
    assert mlflow_uri("sqlite:///runs.db") == "sqlite:///runs.db"


# ---------------------------------------------------------------- a real run, read back

@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, tiny_data, tiny_run):
    """A two-epoch run logging to TensorBoard and to a local MLflow store at once (the data and settings of
    tests/report/test_compare.py's first run, and the trackers)."""
    pytest.importorskip("tensorboard", reason="needs tensorboard (pip install -e .[dev])")
    pytest.importorskip("mlflow", reason="needs mlflow-skinny (pip install -e .[dev])")
    store = (tmp_path_factory.mktemp("tracked") / "mlruns").as_uri()
    run = tiny_run(tiny_data(per_class=8), model="mlp", epochs=2, log="tensorboard+mlflow", mlflow_uri=store)
    return run, store


def test_tensorboard_event_files_hold_every_epoch_and_the_settings(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run, _ = logged_run
    events = EventAccumulator(str(run.run_dir), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    val_acc = events.Scalars("val_acc")
    assert [e.step for e in val_acc] == [1, 2]
    assert [e.value for e in val_acc] == pytest.approx([r["val_acc"] for r in run.history])
    assert [e.wall_time for e in val_acc] == pytest.approx([r["time"] for r in run.history])
    assert events.Scalars("test_accuracy")[0].value == pytest.approx(run.test_metrics["accuracy"])
    settings = events.Tensors("settings/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| model | mlp |" in settings and "| epochs | 2 |" in settings


def test_mlflow_store_holds_the_run_its_settings_and_every_epoch(logged_run):
    from mlflow.tracking import MlflowClient
    run, store = logged_run
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("colours")  # one experiment per data set
    [found] = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.tags["oculi.run_dir"] == str(run.run_dir)
    assert found.data.params["model"] == "mlp" and found.data.params["log"] == "tensorboard+mlflow"
    history = client.get_metric_history(found.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([r["val_loss"] for r in run.history])
    assert found.data.metrics["test_log_loss"] == pytest.approx(run.test_metrics["log_loss"])
