"""``--log``: a run's settings, every epoch and its final scores, also sent to the trackers people already
use: TensorBoard (event files in the run folder, for ``tensorboard --logdir runs``) and MLflow (a local
store, ./mlruns by default, or a server's URI).

Each tracker is a ``Tracker``: ``log_params`` once at the start, ``log_metrics`` for each epoch's row of
metrics.jsonl (step = its place among all the run's epochs, the features head's first), ``close`` at the
end. ``RunLog`` drives the ones a run asked for. Their packages are optional (``pip install
'oculi[trackers]'``): ``check_trackers`` names the missing one before a run starts. The files are the
trackers' own formats, written by their own libraries (appended as the run goes, not atomically).
"""

from __future__ import annotations

import importlib.util
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..config import TrainConfig
from ..console import Reporter
from ..errors import OculiError
from ..metrics import headline_figures

# --log name -> (the module it imports, the package that installs it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}
SKIPPED_FIELDS = ("epoch", "phase", "time")  # a row's keys that are not measurements
MLFLOW_BATCH = 100  # MLflow takes at most 100 params (and 1000 metrics) per log_batch call


def tracker_names(log: str) -> list[str]:
    """"tensorboard+mlflow" -> ["tensorboard", "mlflow"]; "none" -> []."""
    return [] if log == "none" else log.split("+")


def check_trackers(log: str, mlflow_setting: str | None = None) -> None:
    """A one-line OculiError naming the pip install to run, when a tracker's package is missing, or the
    MLflow server that does not answer: said now, not after minutes of work (or of MLflow's retries)."""
    for name in tracker_names(log):
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise OculiError(f"--log {name} needs the {package} package: pip install {package} "
                             f"(or pip install 'oculi[trackers]')")
    if "mlflow" in tracker_names(log):
        _check_reachable(mlflow_uri(mlflow_setting))


def _check_reachable(uri: str, timeout: float = 5.0) -> None:
    """An http(s) tracking URI must answer (any HTTP status will do: a server behind a login answers 401)."""
    import urllib.error
    import urllib.request
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise OculiError(f"--mlflow-uri {uri}: the tracking server does not answer ({reason})") from None


def epoch_metrics(row: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl row (losses, accuracies, lr, seconds, images/s), None values left out."""
    return {k: float(v) for k, v in row.items()
            if k not in SKIPPED_FIELDS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def result_metrics(metrics: dict | None) -> dict[str, float]:
    """The final scores, named by their split: test_accuracy, test_macro_f1, test_log_loss, test_ece."""
    if not metrics:
        return {}
    return {f"{metrics['split']}_{k}": float(v) for k, v in headline_figures(metrics).items() if v is not None}


class Tracker:
    """Where a run's settings and metrics also go; ``where`` says it to the user."""

    where = ""

    def log_params(self, params: dict) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int, wall_time: float) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        """``status``: FINISHED, FAILED (the run raised) or KILLED (interrupted)."""
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files in the run folder: each metric a scalar plot, the settings a text table."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.where = f"TensorBoard: event files in {run_dir} (tensorboard --logdir {run_dir.parent})"

    def log_params(self, params: dict) -> None:
        rows = "".join(f"| {k} | {v} |\n" for k, v in params.items())
        self.writer.add_text("settings", "| setting | value |\n| --- | --- |\n" + rows)

    def log_metrics(self, metrics: dict[str, float], step: int, wall_time: float) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step, walltime=wall_time)

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run (named after the run folder) in the experiment named after the data, through
    ``MlflowClient``: no global active run, so a user's own ``mlflow.start_run`` is left alone."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str]):
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        self.where = f"MLflow: {uri}, experiment '{experiment}', run '{run_name}'"

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + MLFLOW_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int, wall_time: float) -> None:
        from mlflow.entities import Metric
        stamp = int(wall_time * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


def mlflow_uri(setting: str | None) -> str:
    """--mlflow-uri, else $MLFLOW_TRACKING_URI, else ./mlruns (MLflow's own default folder) as a file URI.

    MLflow 3 keeps its file store only in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE
    is set; it is the store that needs no database package, so for a local folder oculi sets that."""
    uri = setting or os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def open_tracker(name: str, cfg: TrainConfig, run_dir: Path, data_name: str) -> Tracker:
    if name == "tensorboard":
        return TensorBoardTracker(run_dir)
    return MlflowTracker(mlflow_uri(cfg.mlflow_uri), data_name, run_dir.name,
                         {"oculi.run_dir": str(run_dir), "oculi.data": cfg.data})


class RunLog:
    """The run's trackers (none: every call does nothing). ``log_epochs`` takes the whole history so far,
    as metrics.jsonl is written, and sends the rows it has not sent yet.

    Logging is a copy of what the run folder holds, so a tracker that fails (a server gone away, a full
    disk) is dropped with a warning and the run goes on."""

    def __init__(self, reporter: Reporter):
        self.trackers: dict[str, Tracker] = {}
        self.reporter = reporter
        self.sent = 0

    def open(self, name: str, make: Callable[[], Tracker]) -> None:
        def add() -> None:
            self.trackers[name] = make()
            self.reporter.info(f"[bold]log[/bold]    {self.trackers[name].where}")
        self._guarded(name, add)

    def log_params(self, params: dict) -> None:
        self._each(lambda tracker: tracker.log_params(params))

    def log_epochs(self, rows: list[dict]) -> None:
        for step, row in enumerate(rows[self.sent:], self.sent + 1):
            self._each(lambda tracker: tracker.log_metrics(epoch_metrics(row), step, row.get("time") or time.time()))
        self.sent = max(self.sent, len(rows))

    def log_results(self, metrics: dict | None) -> None:
        """The final scores, at the step of the last epoch."""
        self._each(lambda tracker: tracker.log_metrics(result_metrics(metrics), max(self.sent, 1), time.time()))

    def close(self, status: str) -> None:
        self._each(lambda tracker: tracker.close(status))

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self.trackers.items()):
            self._guarded(name, lambda: call(tracker))

    def _guarded(self, name: str, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as err:  # whatever the tracker's library raises: the run matters more
            self.trackers.pop(name, None)
            self.reporter.warn(f"--log {name} failed, the run goes on without it: {type(err).__name__}: {err}")


@contextmanager
def run_log(cfg: TrainConfig, run_dir: Path, data_name: str, reporter: Reporter) -> Iterator[RunLog]:
    """The trackers ``cfg.log`` names, with the settings logged; closed at the end, as MLflow says: FINISHED,
    KILLED (interrupted: ``--resume`` continues it, in a new MLflow run with every epoch) or FAILED."""
    log = RunLog(reporter)
    status = "FAILED"
    try:
        for name in tracker_names(cfg.log):
            log.open(name, lambda: open_tracker(name, cfg, run_dir, data_name))
        log.log_params(cfg.to_dict())
        yield log
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        log.close(status)
