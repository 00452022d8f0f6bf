"""Uploaded images -> the model's input, decoded where a decoder crash costs one upload, not the server.

Uploads are decoded from their bytes, never from a file named after the client's file name, by a pool of
forked worker processes that lives as long as the server: a fork per request would cost 30-130 ms on a
small machine (see ``oculi.data.contained``). A worker prepares an image as ``oculi predict`` does
(``prepare_file``: the pixel limit, decoding, resizing, the bundle's filter).

A worker that dies (a segmentation fault in a native decoder, an abort, the OOM killer) breaks the pool and
loses every upload in flight with it. Each of those is then decoded again alone, in a fresh child process
(``oculi.data.children``): the one that kills its decoder again is ``CRASHED`` ("decoder crashed"), the
others get their pixels, and a new pool takes over. Where there is no fork (macOS, Windows) uploads are
decoded in threads of this process. The pool is ``oculi.data.children.worker_pool``, as for a batch of files.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Callable

import numpy as np

from ..data.children import can_fork, in_worker, map_in_children, worker_pool
from ..data.contained import crashed_or, one_thread, prepare_file
from ..data.transforms import Preprocessing
from ..data.unreadable import Unreadable

# prepare(data, preprocessing=...) -> uint8 [C, H, W] array, or why the upload cannot be read
Prepare = Callable[..., "np.ndarray | Unreadable"]


def prepare_upload(data: bytes, preprocessing: Preprocessing) -> np.ndarray | Unreadable:
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

    async def prepare(self, data: bytes) -> np.ndarray | Unreadable:
        pool = self._pool
        if pool is None:
            return await asyncio.to_thread(self._prepare, data)
        try:
            return await asyncio.wrap_future(pool.submit(in_worker, data))
        except BrokenProcessPool:
            self._replace(pool)
            return await asyncio.to_thread(self._alone, data)

    def _new_pool(self) -> ProcessPoolExecutor:
        return worker_pool(self._prepare, self.workers, setup=one_thread)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A new pool for the broken one, once, though every upload that was in flight asks."""
        if self._pool is broken:
            broken.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            self.restarts += 1

    def _alone(self, data: bytes) -> np.ndarray | Unreadable:
        """Decode in a child process of its own: a crash there is surely this upload's."""
        return crashed_or(next(map_in_children(self._prepare, [data], setup=one_thread)))


def _ready() -> None:
    """A task that does nothing: running it means the workers are up."""
