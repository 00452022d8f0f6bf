"""Uploaded images -> the model's input, decoded where a decoder crash costs one upload, not the server.

Uploads are decoded from their bytes, never from a file named after the client's file name, by a pool of
forked worker processes that lives as long as the server: a fork per request would cost 30-130 ms on a
small machine (see ``oculi.data.contained``). A worker prepares an image as ``oculi predict`` does
(``prepare_file``: the pixel limit, decoding, resizing, the bundle's filter).

A worker that dies (a segmentation fault in a native decoder, an abort, the OOM killer) breaks the pool and
loses every upload in flight with it. Each of those is then decoded again alone, in a fresh child process
(``oculi.data.children``): the one that kills its decoder again is "decoder crashed", the others get their
pixels, and a new pool takes over. Where there is no fork (macOS, Windows) uploads are decoded in threads
of this process.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Callable

import numpy as np

from ..data.children import ChildDied, can_fork, fork_context, map_in_children, quiet_crashes
from ..data.contained import DECODER_CRASHED, one_thread, prepare_file
from ..data.transforms import Preprocessing

# prepare(data, preprocessing=...) -> uint8 [C, H, W] array, or the reason the upload cannot be read
Prepare = Callable[..., "np.ndarray | str"]


def prepare_upload(data: bytes, preprocessing: Preprocessing) -> np.ndarray | str:
    """An upload as a run's files were decoded for training (``prepare_file``, a large JPEG drafted)."""
    return prepare_file(data, preprocessing, draft=True)


class UploadDecoder:
    """``await decoder.prepare(data)``: an upload's bytes as the model's input, or why they cannot be."""

    def __init__(self, preprocessing: Preprocessing, workers: int, prepare: Prepare = prepare_upload):
        self.workers = workers
        self._prepare = partial(prepare, preprocessing=preprocessing)
        self._pool: ProcessPoolExecutor | None = None
        self.restarts = 0  # pools replaced after one of their workers died

    def start(self) -> None:
        """Fork the workers now, at warm-up, rather than during the first request."""
        if can_fork():
            self._pool = self._new_pool()
            self._pool.submit(_ready).result()

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    async def prepare(self, data: bytes) -> np.ndarray | str:
        pool = self._pool
        if pool is None:
            return await asyncio.to_thread(self._prepare, data)
        try:
            return await asyncio.wrap_future(pool.submit(_prepare_in_worker, data))
        except BrokenProcessPool:
            self._replace(pool)
            return await asyncio.to_thread(self._alone, data)

    def _new_pool(self) -> ProcessPoolExecutor:
        # Forked workers inherit the initializer's arguments: nothing here needs to be picklable.
        return ProcessPoolExecutor(self.workers, mp_context=fork_context(), initializer=_start_worker,
                                   initargs=(self._prepare,))

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A new pool for the broken one, once, though every upload that was in flight asks."""
        if self._pool is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            self.restarts += 1

    def _alone(self, data: bytes) -> np.ndarray | str:
        """Decode in a child process of its own: a crash there is surely this upload's."""
        outcome = next(map_in_children(self._prepare, [data], setup=one_thread))
        return DECODER_CRASHED if isinstance(outcome, ChildDied) else outcome


_worker_prepare: Callable[[bytes], "np.ndarray | str"] | None = None


def _start_worker(prepare) -> None:
    global _worker_prepare
    _worker_prepare = prepare
    quiet_crashes()
    one_thread()


def _prepare_in_worker(data: bytes) -> np.ndarray | str:
    return _worker_prepare(data)


def _ready() -> None:
    """A task that does nothing: running it means the workers are up."""
