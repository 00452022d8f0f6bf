"""`oculi predict RUN --watch DIR`: images predicted as they land, complete, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import csv
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import oculi
from oculi.deploy.stopping import sigterm_as_interrupt
from oculi.deploy.watch import MIN_TRIES, FolderWatch
from tests.conftest import write_image

pytest.importorskip("watchdog", reason="the video extra: pip install 'oculi[video]'")

REPO = Path(__file__).resolve().parents[2]
SETTLE = 0.25  # a file that does not decode is reported after GIVE_UP * SETTLE = 2.5 s unchanged
DEADLINE_S = 120  # the most any wait below lasts: the test fails rather than hangs


@pytest.fixture(scope="module")
def run_dir(tiny_data, tiny_run):
    """The session's tiny mlp run on red, green and blue images (tests/test_cli.py's too): read only."""
    return tiny_run(tiny_data(per_class=6), model="mlp", epochs=1).run_dir


class Watcher:
    """``oculi predict RUN --watch inbox --out answers.csv`` in a process of its own; its stderr read as it comes."""

    def __init__(self, run_dir: Path, folder: Path, answers: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's oculi
        self.process = subprocess.Popen(
            [sys.executable, "-m", "oculi", "predict", str(run_dir), "--watch", str(folder), "--out", str(answers),
             "--settle", str(SETTLE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.answers, self.lines, self.err = answers, queue.Queue(), []
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, start: str) -> str:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, f"the watcher ended: {self.err}"
                continue
            self.err.append(line)
            if line.startswith(start):
                return line
        pytest.fail(f"no line starting {start!r} in time; stderr so far: {self.err}")

    def rows(self) -> list[dict]:
        with open(self.answers, newline="") as f:
            return list(csv.DictReader(f))

    def wait_for_rows(self, n: int) -> list[dict]:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if self.answers.is_file() and len(rows := self.rows()) >= n:
                return rows
            assert self.process.poll() is None, "the watcher ended"
            time.sleep(0.1)
        pytest.fail(f"fewer than {n} rows in time: {self.rows() if self.answers.is_file() else 'no file'}")

    def stop(self, how: int = signal.SIGINT) -> int:
        self.process.send_signal(how)
        code = self.process.wait(timeout=DEADLINE_S)
        self.process.stdout.close()
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def write_slowly(path: Path, data: bytes, pieces: int = 5, pause: float = 2 * SETTLE) -> None:
    """``data`` written in ``pieces``, a pause longer than the settling time after each: the watcher sees the
    file unchanged, and cannot decode it, several times before it is complete."""
    step = -(-len(data) // pieces)
    with open(path, "wb") as f:
        for start in range(0, len(data), step):
            f.write(data[start:start + step])
            f.flush()
            time.sleep(pause)


@pytest.mark.slow
def test_watch_predicts_complete_new_images_once_each_and_stops_on_ctrl_c(run_dir, tmp_path):
    inbox, answers = tmp_path / "inbox", tmp_path / "answers.csv"
    rng = np.random.default_rng(0)
    write_image(inbox / "already_there.png", rng, colour=0)  # no --existing: left alone
    photo = write_image(tmp_path / "photo.png", rng, size=(200, 160), colour=2)  # a few pieces' worth of bytes
    watcher = Watcher(run_dir, inbox, answers)
    try:
        assert watcher.wait_for_line("watching ") == \
            f"watching {inbox} for new images, rows appended to {answers} (Ctrl-C to stop)"
        # Written under a hidden name, then renamed into place: how most programs save a file.
        write_image(inbox / ".new.png.tmp", rng, colour=1, fmt="PNG").rename(inbox / "new.png")
        write_image(inbox / ".hidden.png", rng, colour=1)
        (inbox / "notes.txt").write_text("not an image")
        (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing after the signature")
        write_slowly(inbox / "slow.png", photo.read_bytes())
        rows = watcher.wait_for_rows(2)
        shutil.copyfile(photo, inbox / "new.png")  # a changed image is predicted again
        rows = watcher.wait_for_rows(3)
        warning = watcher.wait_for_line("warning: ")
        assert watcher.stop(signal.SIGINT) == 0
    finally:
        watcher.kill()
    assert sorted(r["path"] for r in rows) == sorted(str(inbox / name) for name in ("new.png", "slow.png", "new.png"))
    assert warning.startswith(f"warning: could not read {inbox / 'broken.png'}: ")
    assert watcher.wait_for_line("stopped watching") == \
        f"stopped watching {inbox}: 3 images predicted, 1 unreadable"
    assert [line for line in watcher.err if line.startswith("warning")] == [warning]  # slow.png: none
    classifier = oculi.load(run_dir)
    expected = {p.source: p for p in classifier.predict_files([inbox / "slow.png", inbox / "new.png"])}
    for row in rows[1:]:  # slow.png and the second new.png: both the file as finally written
        assert float(row["confidence"]) == pytest.approx(expected[row["path"]].confidence, abs=1e-5)
        assert row["label"] == expected[row["path"]].label


def test_existing_predicts_the_images_already_there_first(run_dir, tmp_path):
    inbox = tmp_path / "inbox"
    rng = np.random.default_rng(1)
    names = [write_image(inbox / name, rng, colour=c) for c, name in enumerate(["a.png", "sub/b.png"])]
    write_image(inbox / ".cache" / "c.png", rng)  # inside a hidden folder: skipped
    got = []

    def take(prediction):
        got.append(prediction.source)
        if len(got) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does: here once both are in

    watch = FolderWatch(oculi.load(run_dir), inbox, take, pytest.fail, settle=0.05, existing=True)
    safety = threading.Timer(DEADLINE_S, os.kill, (os.getpid(), signal.SIGINT))  # never hang the suite
    summary = watch.run(on_start=safety.start)
    safety.cancel()
    assert got == [str(p) for p in names] and summary.predicted == 2 and summary.unreadable == 0


def test_a_file_that_never_decodes_is_retried_then_reported_once(run_dir, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "bad.jpg").write_bytes(b"\xff\xd8\xff not a whole jpeg")
    warnings, tries = [], []
    classifier = oculi.load(run_dir)
    predict_files = classifier.predict_files

    def counted(paths, **kwargs):
        tries.append(list(paths))
        return predict_files(paths, **kwargs)

    def stop_after_warning(line):
        warnings.append(line)
        raise KeyboardInterrupt

    classifier.predict_files = counted
    watch = FolderWatch(classifier, inbox, pytest.fail, stop_after_warning, settle=0.05, existing=True)
    safety = threading.Timer(DEADLINE_S, os.kill, (os.getpid(), signal.SIGINT))
    summary = watch.run(on_start=safety.start)
    safety.cancel()
    assert len(warnings) == 1 and warnings[0].startswith(f"could not read {inbox / 'bad.jpg'}: ")
    assert len(tries) >= MIN_TRIES and summary.unreadable == 1  # tried again: it might still be being written


def test_a_missing_folder_is_one_line(run_dir, tmp_path, capsys):
    from oculi.cli import main
    assert main(["predict", str(run_dir), "--watch", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --watch {tmp_path / 'nowhere'}: no such folder"


def test_sigterm_stops_like_ctrl_c():
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once; only a failing test waits
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was


def test_a_missing_watchdog_names_the_extra(run_dir, tmp_path, monkeypatch):
    from oculi.errors import OculiError
    monkeypatch.setitem(sys.modules, "watchdog.observers", None)  # what the import meets where it is not installed
    with pytest.raises(OculiError, match=r"^--watch needs watchdog: pip install 'oculi\[video\]'$"):
        FolderWatch(oculi.load(run_dir), tmp_path, print, print)
