"""Decoding many image files where a crash of a native decoder costs that one file, not the run.

On Linux, files are decoded and prepared in forked worker processes, a chunk of 64 at a time (a process
pool that lives for the whole batch of files: the fork, 30-130 ms for a process that has imported torch,
is paid once per worker). Processes, not threads, for speed too: image headers are parsed in Python
under the GIL (60,000 CIFAR JPEGs on 2 cores: 11.3 s in one thread, 14.4 s in two threads, 7.0 s in two
processes). A worker that dies (a segmentation fault in a decoder, an abort) breaks the pool and takes
every chunk in flight with it. Those chunks are then decoded again in fresh child processes that report
file by file (``oculi.data.children``), so the file that kills its process is found, skipped as
``CRASHED`` (the reason "decoder crashed"), and decoding goes on in a new pool.

Even one chunk (a folder of up to 64 images, ``oculi predict`` on one file) goes to a worker process,
for the same guarantee. That costs the fork once per call: measured on this project's 2-core VM, where
a fork is slow, 82 ms for 1 photo (2 ms in this process), 126 ms for 10 (19 ms), 282 ms for 64 (135 ms),
wall time, median of 21, one thread either way: small beside a CLI command's own start (seconds). Where
there is no fork (macOS, Windows) files are decoded in this process. So are single images given to
``Classifier.predict`` or ``oculi explain``: the decoders crashed on none of the 100,000 mutated files
of ``benchmarks/fuzz_decode.py``, so the process is a second line of defence, not the first.

A file that cannot be read gives an ``Unreadable`` (``oculi.data.unreadable``: its kind and the reason
users see) in place of its pixels.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import ImageDecodeError
from .children import ChildDied, can_fork, each_in_worker, map_in_children, worker_pool
from .pixels import FileFacts, prepare_array
from .preprocessing import Preprocessing
from .unreadable import CRASHED, Unreadable

DECODE_CHUNK = 64  # files per task: a task costs more than decoding one small JPEG


def prepare_file(path: str | Path, preprocessing: Preprocessing, draft: bool = False) -> np.ndarray | Unreadable:
    """One image file as the model takes it (uint8 [C, H, W], by ``preprocessing``), or why it cannot be read.
    ``draft``: a large JPEG may be decoded at a reduced scale first (``decode_image``'s ``at_least``).
    Runs in this process: see ``prepare_files`` for many files, contained."""
    prepared = _prepared(path, preprocessing, draft, facts=False)
    return prepared if isinstance(prepared, Unreadable) else prepared[0]


def prepare_file_with_facts(path: str | Path, preprocessing: Preprocessing, draft: bool = False
                            ) -> tuple[np.ndarray, FileFacts | None] | Unreadable:
    """``prepare_file``, and the file's facts (``decode_image_and_facts``), or why it cannot be read."""
    return _prepared(path, preprocessing, draft, facts=True)


def _prepared(path: str | Path, preprocessing: Preprocessing, draft: bool, facts: bool
              ) -> tuple[np.ndarray, FileFacts | None] | Unreadable:
    from .decode import decode_image_and_facts  # torch: not for a torch-free caller (prepare_files' torch_free)
    at_least = preprocessing.image_size if draft else None
    try:
        pixels, found = decode_image_and_facts(path, preprocessing.channels, at_least, facts)
        return preprocessing.prepare(pixels).contiguous().numpy(), found
    except ImageDecodeError as err:
        return Unreadable.of(err)


def prepare_file_without_torch(path: str | Path, preprocessing: Preprocessing, draft: bool = False
                               ) -> np.ndarray | Unreadable:
    """``prepare_file`` with PIL and numpy alone (``pixels.prepare_array``; no image filter)."""
    try:
        return prepare_array(path, preprocessing.image_size, preprocessing.channels, preprocessing.resize, draft)
    except ImageDecodeError as err:
        return Unreadable.of(err)


def crashed_or(outcome):
    """A ``map_in_children`` outcome as a prepared image's: ``CRASHED`` for a child that died on it."""
    return CRASHED if isinstance(outcome, ChildDied) else outcome


def prepare_files(paths: Iterable[str | Path], preprocessing: Preprocessing, workers: int | None = None,
                  draft: bool = False, torch_free: bool = False) -> Iterator[np.ndarray | Unreadable]:
    """``prepare_file`` of each path, in order, decoded in worker processes (see the module docstring):
    a file that crashes its decoder gives ``CRASHED``. Reads a few chunks ahead of what is consumed.
    ``torch_free``: by ``prepare_file_without_torch``, in processes that never import torch."""
    for chunk in prepared_chunks(paths, preprocessing, workers, draft, torch_free=torch_free):
        yield from chunk


def prepared_chunks(paths: Iterable[str | Path], preprocessing: Preprocessing, workers: int | None = None,
                    draft: bool = False, facts: bool = False, torch_free: bool = False) -> Iterator[list]:
    """``prepare_files``, a list per chunk of ``DECODE_CHUNK`` paths; ``workers`` defaults to every core.
    ``facts``: each readable file gives (pixels, facts), as ``prepare_file_with_facts``."""
    paths = list(paths)
    chunks = deque(paths[i:i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK))
    function = prepare_file_without_torch if torch_free else prepare_file_with_facts if facts else prepare_file
    prepare = partial(function, preprocessing=preprocessing, draft=draft)
    if not can_fork():
        return ([prepare(path) for path in chunk] for chunk in chunks)
    return _pooled(chunks, prepare, min(workers or os.cpu_count() or 1, max(1, len(chunks))))


def _pooled(chunks: deque, prepare, workers: int) -> Iterator[list]:
    while chunks:
        yield from _until_a_worker_dies(chunks, prepare, workers)


def _until_a_worker_dies(chunks: deque, prepare, workers: int) -> Iterator[list]:
    """Chunks taken from ``chunks`` through one pool until none is left or a worker dies; then the chunks
    in flight are recovered and the caller starts a new pool for the rest."""
    pool = worker_pool(prepare, workers, setup=one_thread)
    in_flight: deque[tuple[list, Future]] = deque()
    try:
        while chunks or in_flight:
            # A bounded read-ahead: memory holds a few chunks of images, never the whole folder.
            while chunks and len(in_flight) < 2 * workers:
                chunk = chunks.popleft()
                in_flight.append((chunk, _submit(pool, chunk)))
            if _broke(in_flight[0][1]):
                pool.shutdown()  # its threads end before the recovery forks: no lock of theirs is copied held
                yield from _recovered(list(in_flight), prepare, workers)
                return
            yield in_flight.popleft()[1].result()
    finally:
        pool.shutdown(cancel_futures=True)


def _submit(pool: ProcessPoolExecutor, chunk: list) -> Future:
    try:
        return pool.submit(each_in_worker, chunk)
    except BrokenProcessPool as e:  # broke since the last submit: this chunk is lost with the others
        lost: Future = Future()
        lost.set_exception(e)
        return lost


def _broke(future: Future) -> bool:
    """Whether the chunk was lost with its pool (waits for it). Any other exception is a bug: raised later."""
    return isinstance(future.exception(), BrokenProcessPool)


def _recovered(flights: list[tuple[list, Future]], prepare, workers: int) -> Iterator[list]:
    """The chunks in flight when the pool broke, in order: those that had finished as they were, the others
    decoded again, file by file as far as crashes go, in child processes."""
    lost_files = [path for chunk, future in flights if _broke(future) for path in chunk]
    again = map_in_children(prepare, lost_files, workers,
                            run_length=DECODE_CHUNK, setup=one_thread)
    for chunk, future in flights:
        if not _broke(future):
            yield future.result()
        else:
            yield [crashed_or(outcome) for _, outcome in zip(chunk, again)]  # chunk first: zip takes no more


def one_thread() -> None:
    """One thread per process: the processes already fill the cores. Only torch needs telling, and only where
    it is loaded: a torch-free prediction's workers must not import it (seconds each)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
