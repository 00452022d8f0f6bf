"""Decode and prepare every image once, into uint8 tensors held in memory.

Decoding is the slow part of a small-image run, so it happens once per image and preprocessing:
the decoded pixels of a folder are kept on disk (``images/`` in the cache, see ``oculi.data.cache``)
and later runs map them back in instead of decoding again. Every epoch then slices batches out of one
tensor (and augments them on the device) instead of re-reading files. A bad file is recorded and
skipped: a long run never dies on one image.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import ImageDecodeError
from .cache import ArrayCache, cache_key, file_identity
from .sources import DataSource
from .split import Record
from .transforms import Preprocessing

# Bump when decoding or resizing changes the pixels a file gives: older cache entries stop matching.
DECODING_VERSION = 1
DECODE_CHUNK = 64  # files per task: a task costs more than decoding one small JPEG


@dataclass
class TensorSet:
    """Prepared images of one split: uint8 [N, C, H, W], labels int64 [N], and where each came from."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DecodedImages:
    """Every distinct image of a source, decoded: ``images[rows[path]]``; ``failed[path]`` says why a
    file could not be read."""

    images: torch.Tensor
    rows: dict[str, int]
    failed: dict[str, str]

    def select(self, records: list[Record]) -> TensorSet:
        """The readable ``records``, in order, as a TensorSet (a copy in memory)."""
        kept = [r for r in records if r.path in self.rows]
        index = torch.tensor([self.rows[r.path] for r in kept], dtype=torch.long)
        images = self.images[index] if len(kept) else self.images[:0].clone()
        return TensorSet(images, torch.tensor([r.label for r in kept], dtype=torch.long), [r.path for r in kept])


def decode_source(source: DataSource, preprocessing: Preprocessing, advance: Callable[[int], None] = lambda n: None,
                  cache: ArrayCache | None = None) -> DecodedImages:
    """Decode and prepare every image of ``source`` once, or map in the cached result of an earlier run."""
    paths = sorted({r.path for r in source.records})
    if source.arrays is not None or cache is None:  # built-in sets are decoded arrays already
        return _decode(source, paths, preprocessing, advance)
    key = cache_key({"decoding": DECODING_VERSION, "files": file_identity(source.root, paths),
                     "size": list(preprocessing.image_size), "channels": preprocessing.channels,
                     "resize": preprocessing.resize})
    hit = cache.get(key)
    if hit is not None and hit[0].shape[0] == len(hit[1]["paths"]):
        array, index = hit
        advance(len(paths))
        return DecodedImages(torch.from_numpy(array), {p: i for i, p in enumerate(index["paths"])}, index["failed"])
    decoded = _decode(source, paths, preprocessing, advance)
    cache.put(key, decoded.images.numpy(), {"paths": sorted(decoded.rows, key=decoded.rows.get),
                                            "failed": decoded.failed})
    return decoded




def _decode(source: DataSource, paths: list[str], preprocessing: Preprocessing,
            advance: Callable[[int], None]) -> DecodedImages:
    """Decode ``paths`` in chunks, on every core."""
    chunks = [paths[i:i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    images, rows, failed = [], {}, {}
    with _decoding_pool(len(chunks), source, preprocessing) as pool:
        for chunk, results in zip(chunks, pool.map(_prepare_chunk, chunks)):
            for path, result in zip(chunk, results):
                if isinstance(result, str):
                    failed[path] = result
                else:
                    rows[path] = len(images)
                    images.append(torch.from_numpy(result))
            advance(len(chunk))
    empty = torch.empty((0, preprocessing.channels, *preprocessing.image_size), dtype=torch.uint8)
    return DecodedImages(torch.stack(images) if images else empty, rows, failed)


def _decoding_pool(n_chunks: int, source: DataSource, preprocessing: Preprocessing) -> Executor:
    """Forked worker processes where the platform forks (Linux): image headers are parsed in Python
    under the GIL, so threads do not scale (60,000 CIFAR JPEGs on 2 cores: 11.3 s in one thread, 14.4 s
    in two threads, 7.0 s in two processes). Elsewhere, for a single chunk, or for a built-in set's arrays
    (nothing to decode), this process."""
    workers = min(os.cpu_count() or 1, n_chunks)
    if workers > 1 and sys.platform.startswith("linux") and source.arrays is None:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_start_worker, initargs=(source, preprocessing))
    _start_worker(source, preprocessing, threads=None)
    return ThreadPoolExecutor(1)


_worker_job: tuple[DataSource, Preprocessing] | None = None


def _start_worker(source: DataSource, preprocessing: Preprocessing, threads: int | None = 1) -> None:
    global _worker_job
    _worker_job = (source, preprocessing)
    if threads:
        torch.set_num_threads(threads)  # one thread per process: the processes already fill the cores


def _prepare_chunk(chunk: list[str]) -> list[np.ndarray | str]:
    """uint8 arrays [C, H, W] of the chunk's images, or the reason a file could not be read."""
    source, preprocessing = _worker_job
    out = []
    for path in chunk:
        try:
            image = preprocessing.prepare(source.read(Record(path, 0, ""), channels=preprocessing.channels))
            out.append(image.contiguous().numpy())
        except ImageDecodeError as err:
            out.append(err.reason)
    return out


def load_split(source: DataSource, records: list[Record], preprocessing: Preprocessing,
               skipped: list[tuple[str, str]], advance: Callable[[int], None] = lambda n: None,
               cache: ArrayCache | None = None) -> TensorSet:
    """Decode and prepare ``records``; unreadable ones are appended to ``skipped`` and left out."""
    decoded = decode_source(DataSource(source.name, source.classes, records, source.root, source.arrays),
                            preprocessing, advance, cache)
    skipped += [(r.path, decoded.failed[r.path]) for r in records if r.path in decoded.failed]
    return decoded.select(records)
