"""What a run shows while it works: rich progress bars and one summary line per epoch."""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)


class Reporter:
    """Prints to stderr (stdout stays clean for --json). ``quiet`` keeps only warnings and errors. ``said``: the
    data warnings said already by runs on the same data (``oculi tune``'s trials share one set), not said again."""

    def __init__(self, quiet: bool = False, said: set[str] | None = None):
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet, self.said = quiet, said

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message)

    def epoch(self, row: dict) -> None:
        """Called after each training epoch with its metrics row (``oculi tune`` reports it to Optuna's pruner)."""

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {message}")

    def data_warning(self, message: str, key: str | None = None) -> None:
        """A warning about the data (the folder, the check, skipped files), said once per ``said`` set; ``key``:
        what identifies it when ``message`` also names the run folder."""
        if self.said is not None:
            if (key or message) in self.said:
                return
            self.said.add(key or message)
        self.warn(message)

    @contextmanager
    def bar(self, description: str, total: int, fields: str = ""):
        """A progress bar; yields ``advance(n, **fields)``. Fields are shown after the bar (loss, acc, img/s)."""
        if self.quiet or not total:
            yield lambda n=1, **kw: None
            return
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
        # transient: the bar disappears when done, leaving the one-line epoch summary.
        # Nothing is drawn when stderr is not a terminal (CI logs, pipes): only the summaries remain.
        with Progress(*columns, console=self.console, transient=True,
                      disable=not self.console.is_terminal) as progress:
            task = progress.add_task(description, total=total, info=fields)

            def advance(n: int = 1, **kw) -> None:
                info = "  ".join(f"{k} {v}" for k, v in kw.items())
                progress.update(task, advance=n, **({"info": info} if kw else {}))

            yield advance


    @contextmanager
    def download(self, description: str):
        """A byte-count progress bar for downloads; yields ``update(done_bytes, total_bytes_or_None)``."""
        columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
        with Progress(*columns, console=self.console, transient=True,
                      disable=self.quiet or not self.console.is_terminal) as progress:
            task = progress.add_task(description, total=None)
            yield lambda done, total: progress.update(task, completed=done, total=total)


class Throughput:
    """Images per second over a window."""

    def __init__(self):
        self.start, self.count = time.perf_counter(), 0

    def add(self, n: int) -> float:
        self.count += n
        return self.count / max(1e-9, time.perf_counter() - self.start)
