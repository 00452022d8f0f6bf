"""``oculi predict RUN --watch DIR``: predict each image that lands in a folder, once it is complete.

watchdog reports the files created, changed or moved into DIR (and its subfolders). A file is read once its
size and modification time have stayed the same for ``settle`` seconds; one that then does not decode is
most likely still being written (a copy over the network, an upload in pieces, a writer that pauses), so it
is tried again each ``settle`` seconds, and reported as unreadable, with one warning, only once it has
stayed unchanged ``GIVE_UP`` times as long and been tried ``MIN_TRIES`` times (a slow machine's reads
must not use up the wait). A file that changes after it was predicted (or reported) is read
again. Skipped: hidden files and folders (dot files: how most programs name a file they are still writing)
and names without an image extension (photo.jpg.part, .crdownload). Images already in DIR when the watch
starts are left alone until they change, unless ``existing``: then they are predicted first.

Files are decoded by ``Classifier.predict_files``, in worker processes, as ``oculi predict`` decodes them.
"""

from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data.decode import IMAGE_EXTENSIONS, is_hidden
from ..errors import OculiError
from .predict import Classifier, Prediction
from .stopping import sigterm_as_interrupt

GIVE_UP = 10  # settle intervals a file that does not decode must stay unchanged before it is reported
MIN_TRIES = 3  # and reads that failed
DEFAULT_SETTLE = 0.5  # seconds a file stays unchanged before it is read


def _watchdog():
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        raise OculiError("--watch needs watchdog: pip install 'oculi[video]'") from None
    return Observer, FileSystemEventHandler


@dataclass
class _Waiting:
    """A file seen but not yet read: its (size, mtime) when last looked at, since when it has had them, when
    to look next, and how many reads of it (as it is) failed."""

    signature: tuple[int, int]
    unchanged_since: float
    next_look: float
    failed: int = 0


@dataclass
class WatchSummary:
    folder: Path
    predicted: int = 0
    unreadable: int = 0
    waiting: int = 0

    def line(self) -> str:
        waiting = f", {self.waiting} still being written" if self.waiting else ""
        return (f"stopped watching {self.folder}: {self.predicted} images predicted, "
                f"{self.unreadable} unreadable{waiting}")


def signature(path: Path) -> tuple[int, int] | None:
    """(size, modification time in ns), or None for a file that is gone."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class FolderWatch:
    """Predicts the images landing in ``folder`` until Ctrl-C or SIGTERM: ``on_prediction(p)`` for each,
    ``on_warning(line)`` for a file that is unreadable for good (see the module docstring)."""

    def __init__(self, classifier: Classifier, folder: Path, on_prediction: Callable[[Prediction], None],
                 on_warning: Callable[[str], None], top_k: int = 5, settle: float = DEFAULT_SETTLE, existing: bool = False,
                 draft: bool = True):
        _watchdog()  # missing: said before anything starts
        if not folder.is_dir():
            raise OculiError(f"--watch {folder}: no such folder")
        if settle <= 0:
            raise OculiError(f"--settle must be more than 0 seconds, got {settle:g}")
        self.classifier, self.folder, self.top_k, self.settle = classifier, folder, top_k, settle
        self.root = folder.absolute()  # watchdog may report absolute paths for a folder given relative
        self.on_prediction, self.on_warning = on_prediction, on_warning
        self.existing, self.draft = existing, draft
        self.events: queue.Queue[str] = queue.Queue()  # paths, from watchdog's thread
        self.waiting: dict[Path, _Waiting] = {}
        self.done: dict[Path, tuple[int, int]] = {}  # what each file was when predicted or reported
        self.summary = WatchSummary(folder)

    def run(self, on_start: Callable[[], None] = lambda: None) -> WatchSummary:
        """Watch until Ctrl-C or SIGTERM; ``on_start()`` once files that land are seen. The summary at the end."""
        observer = self._observer()
        try:
            with sigterm_as_interrupt():
                observer.start()  # before the folder is listed: a file landing in between is still seen
                self._list_existing()
                on_start()
                while True:
                    self._take_events(timeout=self.settle / 2)
                    self._read(self._ready())
        except KeyboardInterrupt:
            pass
        finally:
            observer.stop()
            observer.join()
        self.summary.waiting = len(self.waiting)
        return self.summary

    def _observer(self):
        Observer, FileSystemEventHandler = _watchdog()
        events = self.events

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    if path:
                        events.put(os.fsdecode(path))

        observer = Observer()
        observer.schedule(Handler(), str(self.folder), recursive=True)
        return observer

    def named(self, reported: str) -> Path | None:
        """A path watchdog reported, spelled from the folder as the user gave it (None: outside it)."""
        try:
            return self.folder / Path(os.path.abspath(reported)).relative_to(self.root)
        except ValueError:
            return None

    def wanted(self, path: Path) -> bool:
        """An image file to read: an image extension, and nothing hidden on the way from the folder."""
        parts = path.relative_to(self.folder).parts
        return path.suffix.lower() in IMAGE_EXTENSIONS and not any(is_hidden(part) for part in parts)

    def _list_existing(self) -> None:
        for path in sorted(self.folder.rglob("*")):
            if self.wanted(path) and path.is_file():
                if self.existing:
                    self._look(path, time.monotonic())
                else:
                    self.done[path] = signature(path)  # left alone until it changes

    def _take_events(self, timeout: float) -> None:
        """The paths watchdog reported, waiting up to ``timeout`` for the first; a folder moved in is listed."""
        try:
            paths = [self.events.get(timeout=timeout)]
        except queue.Empty:
            return
        while not self.events.empty():
            paths.append(self.events.get_nowait())
        now = time.monotonic()
        for path in filter(None, map(self.named, dict.fromkeys(paths))):
            for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if self.wanted(file):
                    self._look(file, now)

    def _look(self, path: Path, now: float) -> None:
        """Start (or restart) waiting for ``path`` to settle, unless it is what it was when last read."""
        found = signature(path)
        if found is None or not path.is_file():
            self.waiting.pop(path, None)
        elif self.done.get(path) != found:
            known = self.waiting.get(path)
            if known is None or known.signature != found:
                self.waiting[path] = _Waiting(found, now, now + self.settle)

    def _ready(self) -> list[Path]:
        """The waiting files unchanged for ``settle`` seconds, in the order they came."""
        now, ready = time.monotonic(), []
        for path, waiting in list(self.waiting.items()):
            if now < waiting.next_look:
                continue
            found = signature(path)
            if found is None:
                del self.waiting[path]
            elif found != waiting.signature:
                self.waiting[path] = _Waiting(found, now, now + self.settle)
            else:
                ready.append(path)
        return ready

    def _read(self, paths: list[Path]) -> None:
        if not paths:
            return
        failures: list = []
        for prediction in self.classifier.predict_files(paths, top_k=self.top_k, failures=failures,
                                                        draft=self.draft):
            path = Path(prediction.source)
            self.done[path] = self.waiting.pop(path).signature
            self.summary.predicted += 1
            self.on_prediction(prediction)
        for name, reason in failures:
            self._failed(Path(name), reason)

    def _failed(self, path: Path, reason: str) -> None:
        """A file that did not decode: tried again later, or, unchanged for long enough, reported once."""
        waiting, now = self.waiting[path], time.monotonic()
        if signature(path) is None:  # deleted while it was read: nothing to report
            del self.waiting[path]
            return
        waiting.failed += 1
        if waiting.failed < MIN_TRIES or now - waiting.unchanged_since < GIVE_UP * self.settle:
            waiting.next_look = now + self.settle
            return
        del self.waiting[path]
        self.done[path] = waiting.signature
        self.summary.unreadable += 1
        self.on_warning(f"could not read {path}: {reason}")
