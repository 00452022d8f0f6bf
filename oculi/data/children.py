"""Work done in forked child processes, so that a crash or a hang in native code costs one item, not the run.

``map_in_children(fn, items)`` gives ``fn(item)`` for every item, in order, computed in child processes
forked from this one (so ``fn`` and the items are inherited, never pickled; only results travel back).
A child works through a run of consecutive items and sends each result as soon as it has it, so when a
child dies (a segmentation fault in a decoder, an abort, the kernel's OOM killer) or spends more than
``timeout`` seconds on one item, the parent knows which item it was on. That item gives a ``ChildDied``
and a fresh child carries on after it. An item is blamed only when it killed a child that had done
nothing before it: otherwise it is tried again, first in a fresh child, in case an earlier item left
memory corrupt and the crash merely surfaced on this one.

A fork is not free: 30-130 ms here for a process that has imported torch (it copies page tables of
about 500 MB), so children take runs of items rather than one each. Linux only (fork).

``worker_pool(fn, workers)`` is the other way to use forked processes: a pool that lives for many calls
(a batch of files, a server's uploads), each worker holding ``fn``; ``pool.submit(in_worker, item)`` or
``pool.submit(each_in_worker, items)`` run it there. A worker that dies breaks the whole pool
(``BrokenProcessPool``): its callers recover what was in flight through ``map_in_children``.

``stream_in_child(produce)`` is the third way, for work that is one stream rather than many items (the
frames of a video): one child runs the generator ``produce()`` and sends what it yields as it comes; a
death ends the stream with a ``ChildDied``, after the items that came before it.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import pickle
import resource
import signal
import sys
import time
import traceback
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, Sequence

# Linux only: macOS offers fork, but its system libraries are not safe to use in a forked child.
_FORK = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None


@dataclass(frozen=True)
class ChildDied:
    """What an item gave instead of a result: its child ``crashed`` or ``timed out``; ``detail`` says how."""

    reason: str  # "crashed" or "timed out"
    detail: str  # "SIGSEGV", "exit code 3", "over 10 s"


def can_fork() -> bool:
    return _FORK is not None


def fork_context():
    """multiprocessing's fork context (None where the platform cannot fork)."""
    return _FORK


def map_in_children(fn: Callable[[Any], Any], items: Sequence, workers: int = 1, run_length: int = 64,
                    timeout: float | None = None, setup: Callable[[], None] | None = None) -> Iterator[Any]:
    """``fn(item)`` or a ``ChildDied`` for each item, in order, from at most ``workers`` children at once,
    each given up to ``run_length`` consecutive items; ``setup()`` runs first in every child. An exception
    ``fn`` raises is raised here (a bug, not a crash). Results wait here until the earlier ones are in."""
    runs = deque((start, min(start + run_length, len(items))) for start in range(0, len(items), run_length))
    children: dict[Connection, _Child] = {}
    results: dict[int, Any] = {}
    try:
        for index in range(len(items)):
            while index not in results:
                while runs and len(children) < workers:
                    child = _Child.start(fn, items, *runs.popleft(), setup, timeout)
                    children[child.conn] = child
                _collect(children, results, runs, timeout)
            yield results.pop(index)
    finally:
        for child in children.values():
            child.stop()


@dataclass
class _Child:
    process: Any
    conn: Connection
    first: int  # the first item this child tries
    next: int  # the item it is on
    end: int
    deadline: float

    @classmethod
    def start(cls, fn, items, start: int, end: int, setup, timeout: float | None) -> "_Child":
        receiver, sender = _FORK.Pipe(duplex=False)
        process = _FORK.Process(target=_child_main, args=(fn, items, start, end, setup, sender), daemon=True)
        process.start()
        sender.close()  # only the child holds the writing end now: its death reads as end-of-file here
        child = cls(process, receiver, start, start, end, float("inf"))
        child.restart_clock(timeout)
        return child

    def restart_clock(self, timeout: float | None) -> None:
        """The time allowed for the item it is on, counted from now."""
        self.deadline = float("inf") if timeout is None else time.monotonic() + timeout

    def stop(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def how_it_died(self) -> str:
        return how_it_died(self.process)


def how_it_died(process) -> str:
    """"SIGSEGV", "exit code 3": how a child process ended (waits for it)."""
    process.join()
    code = process.exitcode
    return signal.Signals(-code).name if code is not None and code < 0 else f"exit code {code}"


def _collect(children: dict[Connection, _Child], results: dict, runs: deque, timeout: float | None) -> None:
    """Wait for the next results (or deaths, or an item running past ``timeout``) and file them."""
    wait_s = None if timeout is None else max(0.0, min(c.deadline for c in children.values()) - time.monotonic())
    for conn in wait(list(children), wait_s):
        child = children.pop(conn)
        try:
            ok, value = conn.recv()
        except (EOFError, OSError):  # the child is gone without a word: it died on its item
            _lost(child, ChildDied("crashed", child.how_it_died()), results, runs)
            continue
        if not ok:
            child.stop()
            raise value
        results[child.next] = value
        child.next += 1
        child.restart_clock(timeout)
        if child.next < child.end:
            children[conn] = child
        else:
            child.stop()
    for child in [c for c in children.values() if time.monotonic() > c.deadline]:
        del children[child.conn]
        child.stop()
        _lost(child, ChildDied("timed out", f"over {timeout:g} s"), results, runs)


def _lost(child: _Child, death: ChildDied, results: dict, runs: deque) -> None:
    """A child died on item ``child.next``: blame it if it was the first the child tried, else retry it first."""
    child.conn.close()
    resume = child.next
    if child.next == child.first:
        results[child.next] = death
        resume += 1
    if resume < child.end:
        runs.appendleft((resume, child.end))  # first in line: the results after it wait for it


def worker_pool(fn: Callable[[Any], Any], workers: int, setup: Callable[[], None] | None = None
                ) -> ProcessPoolExecutor:
    """A pool of ``workers`` forked processes, each holding ``fn`` (inherited at the fork, never pickled: only
    the items and results travel) and quiet when it crashes; ``setup()`` runs first in each. Linux only."""
    return ProcessPoolExecutor(workers, mp_context=_FORK, initializer=_start_worker, initargs=(fn, setup))


_worker_fn: Callable[[Any], Any] | None = None  # worker_pool's fn, in one of its workers


def _start_worker(fn: Callable[[Any], Any], setup: Callable[[], None] | None) -> None:
    global _worker_fn
    _worker_fn = fn
    quiet_crashes()
    if setup is not None:
        setup()


def in_worker(item):
    """``fn(item)`` in a worker of ``worker_pool(fn, ...)``: what to submit to the pool."""
    return _worker_fn(item)


def each_in_worker(items: list) -> list:
    """``[fn(item) for item in items]`` in a worker of ``worker_pool(fn, ...)``: one task for many items."""
    return [_worker_fn(item) for item in items]


def quiet_crashes() -> None:
    """For a process whose crash is expected and reported by its parent: no core file (one per corrupt
    image would only litter the disk), no faulthandler dump (PYTHONFAULTHANDLER, pytest) on stderr."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    faulthandler.disable()


def _child_main(fn, items, start: int, end: int, setup, conn: Connection) -> None:
    quiet_crashes()
    if setup is not None:
        setup()
    for i in range(start, end):
        try:
            message = (True, fn(items[i]))
        except Exception as e:
            message = (False, _sendable(e))
        conn.send(message)
    conn.close()


def _sendable(error: Exception) -> Exception:
    """``error`` as it is when it survives pickling, else a RuntimeError with its traceback (call in ``except``)."""
    return error if _round_trips(error) else RuntimeError(f"in a child process:\n{traceback.format_exc()}")


def _round_trips(value) -> bool:
    try:
        pickle.loads(pickle.dumps(value))
        return True
    except Exception:
        return False


def stream_in_child(produce: Callable[[], Iterable], timeout: float | None = None) -> Iterator[Any]:
    """What the generator ``produce()`` yields, computed in a forked child and sent here item by item as it
    comes; then, if the child died before the end (or spent more than ``timeout`` seconds on one item), one
    ``ChildDied``. An exception ``produce`` raises is raised here. The pipe holds little, so the child waits
    while the caller is busy: memory holds a few items, never the stream. The child ignores Ctrl-C (which a
    terminal sends to the whole process group): the caller decides when to stop, and closing this iterator
    (or leaving a loop over it) kills the child. Where there is no fork, ``produce()`` runs in this process."""
    if not can_fork():
        yield from produce()
        return
    receiver, sender = _FORK.Pipe(duplex=False)
    process = _FORK.Process(target=_stream_main, args=(produce, sender), daemon=True)
    process.start()
    sender.close()  # only the child holds the writing end now: its death reads as end-of-file here
    try:
        while True:
            if timeout is not None and not receiver.poll(timeout):
                yield ChildDied("timed out", f"over {timeout:g} s")
                return
            try:
                kind, value = receiver.recv()
            except (EOFError, OSError):
                yield ChildDied("crashed", how_it_died(process))
                return
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        process.kill()
        process.join()
        receiver.close()


def _stream_main(produce, conn: Connection) -> None:
    quiet_crashes()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler the caller set for itself before the fork
    try:
        for item in produce():
            conn.send(("item", item))
        conn.send(("end", None))
    except BrokenPipeError:  # the caller stopped listening: nothing left to do
        return
    except Exception as e:
        conn.send(("error", _sendable(e)))
    conn.close()
