"""Gathering the images of concurrent requests into model batches, and bounding the work a server takes on.

A model runs one batch of 32 images far faster than 32 batches of one, yet requests arrive one by one. The
``Batcher`` holds what is submitted until ``max_batch`` items wait or the oldest has waited ``max_wait``
seconds, then hands them to its one worker thread as a single call. Items that arrive while a batch runs
are past their deadline when the worker next looks, so they go at once, together: under load batches grow
by themselves, and an idle server keeps an image waiting at most ``max_wait``.

``Slots`` is the bound: work is taken on only while fewer than ``capacity`` items are in flight; beyond
that the caller hears so at once and can answer "busy, retry later", so a flood of requests never becomes
an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable


class Slots:
    """At most ``capacity`` items in flight: ``take(n)`` claims n at once or none (never waits),
    ``release(n)`` gives them back."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.capacity:
                return False
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass
class _Waiting:
    item: Any
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Runs ``run_batch(items) -> results`` (one result per item, in order) on one worker thread over
    batches gathered from every ``submit``; ``on_batch(size, seconds)`` hears of each batch run."""

    def __init__(self, run_batch: Callable[[list], list], max_batch: int, max_wait_s: float,
                 on_batch: Callable[[int, float], None] | None = None):
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.on_batch = on_batch
        self.calls = 0
        self._waiting: deque[_Waiting] = deque()
        self._changed = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="oculi-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the batch in progress; whatever still waits fails with RuntimeError."""
        with self._changed:
            self._stopped = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()
        for waiting in self._waiting:
            if waiting.future.set_running_or_notify_cancel():
                waiting.future.set_exception(RuntimeError("the server is stopping"))
        self._waiting.clear()

    def submit(self, items: list) -> list[Future]:
        """A future per item, resolved when its batch has run."""
        entries = [_Waiting(item) for item in items]
        with self._changed:
            if self._stopped:
                raise RuntimeError("the server is stopping")
            self._waiting.extend(entries)
            self._changed.notify()
        return [e.future for e in entries]

    async def run(self, items: list) -> list:
        """``submit`` for a coroutine: the results, in order."""
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in self.submit(items))))

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            # A request that gave up (its client went away) cancelled its futures: no model time for them.
            batch = [w for w in batch if w.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)

    def _next_batch(self) -> list[_Waiting] | None:
        """Wait for an item, then for more until the batch is full or the oldest one's time is up."""
        with self._changed:
            while not self._waiting and not self._stopped:
                self._changed.wait()
            deadline = self._waiting[0].arrived + self.max_wait_s if self._waiting else 0.0
            while not self._stopped and len(self._waiting) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            if self._stopped:
                return None
            return [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]

    def _run(self, batch: list[_Waiting]) -> None:
        start = time.perf_counter()
        try:
            results = self.run_batch([w.item for w in batch])
        except BaseException as err:  # every request of the batch hears of it; the worker goes on
            for w in batch:
                w.future.set_exception(err)
            return
        finally:
            self.calls += 1
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - start)
        for w, result in zip(batch, results):
            w.future.set_result(result)
