"""The jobs of ``oculi app``: real ``oculi train`` / ``check`` / ``export`` / ``card`` processes, one at a time
(``max_running``), the rest queued; their state in ROOT/.oculi-app/jobs.json, written atomically on every
change, so that a reloaded page or a restarted app sees them. Each writes where the CLI would (the run or
check folder under its project) and its output to a log beside jobs.json.

A job that was running when the app stopped is ``interrupted``; a training one can be resumed
(``oculi train --resume RUN``: its checkpoint is rewritten after every epoch, so a kill loses one at most).
Cancelling terminates the job's process group (SIGTERM, then SIGKILL after ``GRACE_S``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..deploy.service import ServeError
from ..io import atomic_write_json
from ..rundir import RunDir

STATE_FOLDER = ".oculi-app"
ACTIVE = ("queued", "running")
ENDED = ("done", "failed", "cancelled", "interrupted")
GRACE_S = 10.0  # how long a terminated job may take to stop before it is killed
LOG_TAIL = 20_000  # characters of a job's output the page is shown


class Jobs:
    """The job list of one root: ``submit`` queues (or refuses a twin: 409), ``cancel``, ``resume``;
    ``start()`` picks up what the last app left, ``shutdown()`` ends what runs (interrupted, resumable)."""

    def __init__(self, root: Path, max_running: int = 1):
        self.root = root.resolve()
        self.folder = self.root / STATE_FOLDER
        self.file = self.folder / "jobs.json"
        self.max_running = max_running
        self._lock = threading.RLock()
        self._processes: dict[int, subprocess.Popen] = {}
        self._stopping: dict[int, str] = {}  # job id -> the state it ends in (cancelled, interrupted)
        self._closing = False
        self.jobs: list[dict] = json.loads(self.file.read_text())["jobs"] if self.file.is_file() else []

    # ------------------------------------------------------------ its life

    def start(self) -> None:
        """Mark the jobs a stopped app left running as interrupted (ending any process of theirs left
        behind), then start what is queued."""
        with self._lock:
            for job in self.jobs:
                if job["state"] == "running":
                    _end_orphan(job)
                    self._ended(job, "interrupted", None, "the app stopped while it ran")
            self._save()
            self._advance()

    def shutdown(self) -> list[dict]:
        """Terminate every running job and mark it interrupted (returned: those that did not end of
        themselves meanwhile); queued ones stay queued for the next start."""
        with self._lock:
            self._closing = True  # nothing queued starts now
            running = [(job, self._processes[job["id"]]) for job in self.jobs if job["id"] in self._processes]
            for job, _ in running:
                self._stopping[job["id"]] = "interrupted"
                self._signal(job["id"], signal.SIGTERM)
        for job, process in running:
            _wait_or_kill(process)
            self._settle(job, process.returncode)  # at once: the watcher thread may not have run yet
        return [job for job, _ in running if job["state"] == "interrupted"]

    # ------------------------------------------------------------ asking

    def get(self, job_id: int) -> dict:
        job = next((j for j in self.jobs if j["id"] == job_id), None)
        if job is None:
            raise ServeError(404, "not_found", f"no job {job_id}")
        return job

    def refuse_while_reading(self, project: str, doing: str) -> None:
        """A 409 while a check or training of ``project`` is queued or running: it reads the data folder
        that ``doing`` would change under it."""
        busy = next((j for j in self.jobs if j["project"] == project and j["kind"] in ("check", "train")
                     and j["state"] in ACTIVE), None)
        if busy is not None:
            raise ServeError(409, "data_in_use", f"{doing} waits: job {busy['id']} ({busy['kind']} of {project}) "
                                                 f"is {busy['state']} and reads the data")

    def submit(self, kind: str, project: str, args: list[str], run: Path | None = None,
               target: str | None = None) -> dict:
        """Queue ``oculi ARGS`` (started at once when nothing else runs). ``target`` names what the job
        works on: a second job of the same kind on the same target, while the first is queued or running,
        is refused with 409."""
        key = f"{kind}:{project}:{target or ''}"
        with self._lock:
            twin = next((j for j in self.jobs if j["key"] == key and j["state"] in ACTIVE), None)
            if twin is not None:
                raise ServeError(409, "job_exists", f"{kind} of {project}{' ' + target if target else ''} is "
                                                    f"already {twin['state']} (job {twin['id']})")
            job = {"id": 1 + max((j["id"] for j in self.jobs), default=0), "kind": kind, "project": project,
                   "key": key, "args": args, "run": None if run is None else str(run), "state": "queued",
                   "created": time.time(), "started": None, "ended": None, "returncode": None, "message": None}
            self.jobs.append(job)
            self._save()
            self._advance()
        return job

    def cancel(self, job_id: int) -> dict:
        with self._lock:
            job = self.get(job_id)
            if job["state"] == "queued":
                self._ended(job, "cancelled", None, "cancelled before it started")
                self._save()
            elif job["state"] == "running":
                self._stopping[job_id] = "cancelled"
                self._signal(job_id, signal.SIGTERM)
                threading.Timer(GRACE_S, self._signal, (job_id, signal.SIGKILL)).start()
            else:
                raise ServeError(409, "job_ended", f"job {job_id} is {job['state']} already")
        return job

    def shown(self, job: dict) -> dict:
        """A job as the page sees it: with whether its run can be resumed."""
        return {**job, "resumable": self._resumable(job) is None}

    def _resumable(self, job: dict) -> str | None:
        """None when ``job`` is a stopped training whose run can go on; else why not."""
        if job["kind"] != "train" or not job["run"] or job["state"] not in ENDED or job["state"] == "done":
            return f"job {job['id']} is not a stopped training run"
        run = RunDir(Path(job["run"]))
        if run.model_json.is_file():
            return f"job {job['id']}'s run {run.path.name} finished"
        if not run.config.is_file():
            return f"job {job['id']}'s run {run.path.name} never began: start a new one"
        return None

    def resume(self, job_id: int) -> dict:
        """A new job continuing training job ``job_id``'s run (interrupted, cancelled or failed)."""
        job = self.get(job_id)
        why_not = self._resumable(job)
        if why_not:
            raise ServeError(409, "not_resumable", why_not)
        run = Path(job["run"])
        return self.submit("train", job["project"], ["train", "--resume", str(run)], run, run.name)

    def log_text(self, job_id: int) -> str:
        """The end of the job's output."""
        log = self._log(self.get(job_id))
        return log.read_text(errors="replace")[-LOG_TAIL:] if log.is_file() else ""

    # ------------------------------------------------------------ how

    def _advance(self) -> None:
        """Start queued jobs while fewer than ``max_running`` run."""
        with self._lock:
            while len(self._processes) < self.max_running and not self._closing:
                job = next((j for j in self.jobs if j["state"] == "queued"), None)
                if job is None:
                    return
                self._launch(job)

    def _launch(self, job: dict) -> None:
        log = self._log(job)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            try:
                # A session of its own: cancelling signals the job's whole process group (its decoding workers).
                process = subprocess.Popen([sys.executable, "-m", "oculi", *job["args"]], cwd=self.root,
                                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True, env=_child_environment())
            except OSError as err:
                self._ended(job, "failed", None, f"cannot start oculi ({err.strerror or err})")
                self._save()
                return
        self._processes[job["id"]] = process
        job.update(state="running", started=time.time(), pid=process.pid)
        self._save()
        threading.Thread(target=self._watch, args=(job, process), name=f"oculi-job-{job['id']}", daemon=True).start()

    def _watch(self, job: dict, process: subprocess.Popen) -> None:
        self._settle(job, process.wait())

    def _settle(self, job: dict, code: int) -> None:
        """The state of a job whose process ended with ``code`` (once; the next queued job then starts)."""
        with self._lock:
            if self._processes.pop(job["id"], None) is None:
                return
            stopped = self._stopping.pop(job["id"], None)
            if code == 0:  # it ended of itself, also when a stop was asked as it did
                self._ended(job, "done", code, None)
            elif stopped:
                self._ended(job, stopped, code, "cancelled" if stopped == "cancelled" else "the app stopped while it ran")
            else:
                self._ended(job, "failed", code, _error_line(self.log_text(job["id"])) or f"exit code {code}")
            self._save()
            self._advance()

    def _signal(self, job_id: int, sig: int) -> None:
        process = self._processes.get(job_id)
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass

    @staticmethod
    def _ended(job: dict, state: str, code: int | None, message: str | None) -> None:
        job.update(state=state, ended=time.time(), returncode=code, message=message)

    def _log(self, job: dict) -> Path:
        return self.folder / "logs" / f"job-{job['id']}.log"

    def _save(self) -> None:
        with self._lock:
            atomic_write_json(self.file, {"jobs": self.jobs})


def _child_environment() -> dict:
    """This process's environment, with oculi importable from wherever this process imported it."""
    package_parent = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": package_parent + (os.pathsep + path if path else ""), "COLUMNS": "120"}


def _error_line(log: str) -> str | None:
    """The CLI's one-line error in a job's output (its last ``error:`` line)."""
    lines = [line for line in log.splitlines() if line.startswith("error:")]
    return lines[-1][len("error:"):].strip() if lines else None


def _end_orphan(job: dict) -> None:
    """Terminate the process group of a job that outlived the app that started it, if it still runs oculi."""
    pid = job.get("pid")
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError):
        return
    if b"oculi" in command and job["args"][0].encode() in command:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_or_kill(process: subprocess.Popen) -> None:
    try:
        process.wait(GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
