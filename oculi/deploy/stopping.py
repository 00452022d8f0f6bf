"""Jobs that run until they are told to stop (a camera, a stream, a watched folder): SIGTERM as Ctrl-C."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within it, SIGTERM (what ``kill``, systemd and ``docker stop`` send) raises KeyboardInterrupt as Ctrl-C
    does, so that one ``except KeyboardInterrupt`` ends the job cleanly either way. The handler before it is
    put back after. Signal handlers belong to the main thread: elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
