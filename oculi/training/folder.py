"""A run's folder: choosing it (``runs/<data>``, ``-2``, ...), claiming it for the run's whole life, and the
checks that keep two runs out of one folder; finding the unfinished run of a restarted torchrun job; reading
back the plan a run saved (``--resume``)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..config import TrainConfig
from ..errors import OculiError
from ..io import exclusive_lock
from ..data.table import is_table, table_name
from ..plan import Plan
from ..rundir import RunDir
from ..runtime.world import restart_count
from .distributed import run_id


def restarted_run(cfg: TrainConfig) -> str | None:
    """After torchrun restarted this job's workers, the unfinished run it had started: --out, or the
    runs/<data>* folder whose config.json names this job's rendezvous id; None on a first start."""
    if restart_count() == 0:
        return None
    folders = [Path(cfg.out)] if cfg.out else sorted(Path("runs").glob(f"{data_name(cfg.data)}*"))
    for folder in folders:
        run = RunDir(folder)
        if not run.config.is_file() or run.model_json.is_file():
            continue
        if cfg.out or (run_id() is not None and run.read_config().get("torchrun_job") == run_id()):
            return str(folder)
    return None


def saved_plan(run: RunDir) -> Plan:
    """The plan a run saved, or a one-line OculiError naming the file."""
    path = run.config
    try:
        saved = run.read_config()
    except OculiError as err:
        raise OculiError(f"--resume: {err}") from None
    try:
        TrainConfig.from_dict(saved["config"]).validate()  # a bad setting named before a missing part
        return Plan.from_dict(saved)
    except OculiError as err:
        raise OculiError(f"--resume: {path}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise OculiError(f"--resume: {path} is not a whole run plan ({type(err).__name__}: {err})") from None


def next_run_dir(parent: Path, name: str) -> Path:
    """runs/<name>, then runs/<name>-2, -3, ...: the first one this call creates. mkdir either creates a
    folder or fails, in one step, so two runs started together never get the same one."""
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = parent / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def check_new_run_dir(run_dir: Path, held: bool = False) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise OculiError(f"--out {run_dir} is a file, not a folder; choose a folder for the run")
    run = RunDir(run_dir)
    if run.model_json.exists():
        raise OculiError(f"--out {run_dir} already holds a finished run; choose another folder")
    if run.checkpoint.exists():
        if not held:  # a checkpoint may be a live run's: then "in use" is what the user needs to hear
            with exclusive_lock(run.lock, _busy_message(run_dir)):
                pass
        raise OculiError(f"--out {run_dir} holds an unfinished run; --resume it or choose another folder")


def make_run_dir(run_dir: Path) -> Path:
    check_new_run_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OculiError(f"--out {run_dir}: cannot create the folder ({err.strerror or err})") from None
    return run_dir


@contextmanager
def claimed(run_dir: Path, fresh: bool) -> Iterator[Path]:
    """``run_dir``, held by this process until the block ends: a second run or resume of the same folder
    fails at once instead of overwriting this one's files."""
    with exclusive_lock(RunDir(run_dir).lock, _busy_message(run_dir)):
        if fresh:  # checked again under the lock: a run may have finished here since the first check
            check_new_run_dir(run_dir, held=True)
        yield run_dir


def _busy_message(run_dir: Path) -> Callable[[str], OculiError]:
    def busy(holder: str) -> OculiError:
        return OculiError(f"{run_dir} is in use by another oculi run ({holder}); wait for it to finish "
                          f"or use another folder")
    return busy


def data_name(data: str) -> str:
    """The name of a run's data, which its folder under runs/ takes: a folder's, a table's, a built-in set's."""
    path = Path(data).expanduser()
    if not path.exists():
        return data
    return table_name(path) if is_table(path) else path.resolve().name
