"""Decode and prepare every image once, into uint8 tensors held in memory.

Decoding is the slow part of a small-image run, so it happens once per image and preprocessing:
the decoded pixels of a folder are kept on disk (``images/`` in the cache, see ``oculi.data.cache``)
and later runs map them back in instead of decoding again. Every epoch then slices batches out of one
tensor (and augments them on the device) instead of re-reading files. A bad file is recorded and
skipped: a long run never dies on one image.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from ..console import Reporter
from .cache import ArrayCache, cache_key, file_identity
from .contained import DECODE_CHUNK, prepared_chunks
from .decode import FileFacts
from .sources import DataSource
from .split import Record
from .transforms import Preprocessing
from .unreadable import Unreadable

# Bump when decoding or resizing changes the pixels a file gives: older cache entries stop matching.
DECODING_VERSION = 4  # 3: PNGs decoded by PIL (16-bit colour ones may differ by a level); 4: large JPEGs drafted


@dataclass
class TensorSet:
    """Prepared images of one split: uint8 [N, C, H, W], labels int64 [N] (multi-label: float32 0/1 [N, classes],
    ``label_tensor``), and where each came from."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


class RowView:
    """Some rows of a memory-mapped image array, read from disk when indexed, for a split too large to
    copy into memory: the process holds one batch, and the OS page cache keeps what is read often. Indexing
    (an int tensor, a slice) gives a tensor, in the order asked, as indexing a tensor would."""

    def __init__(self, images: torch.Tensor, rows: torch.Tensor):
        self.images, self.rows = images, rows
        self.shape = torch.Size((len(rows), *images.shape[1:]))
        self.dtype, self.device = images.dtype, images.device

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> torch.Tensor:
        return self.images[self.rows[index]]

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.images[0].nbytes if len(self.rows) else 0

    def to(self, *args, **kwargs) -> torch.Tensor:
        return self[:].to(*args, **kwargs)


class _RowBatches(torch.utils.data.Dataset):
    """Batch ``i``: the rows ``indices[i]`` of a ``RowView``; what one streaming worker process reads."""

    def __init__(self, rows: RowView, indices: list[torch.Tensor]):
        self.rows, self.indices = rows, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[self.indices[i]]


def streamed_batches(rows: RowView, indices: list[torch.Tensor], workers: int | None = None,
                     prefetch: int = 2) -> Iterator[torch.Tensor]:
    """The rows of each batch of ``indices`` as uint8 tensors, read from the cache file by worker processes
    while the model trains on earlier ones, in order. Memory stays bounded: at most ``workers * prefetch``
    batches are read ahead (4 x 2 x 512 CIFAR images: 12 MiB; 4 x 2 x 64 photos at 224 px: 75 MiB),
    beside the pages of the file the OS chooses to cache. Workers are forked (they share the mapping,
    nothing is copied); where fork is not the default, batches are read in this process."""
    workers = min(4, max(1, (os.cpu_count() or 2) // 2)) if workers is None else workers
    batches = _RowBatches(rows, indices)
    if sys.platform != "linux" or workers == 0:
        return (batches[i] for i in range(len(batches)))
    return iter(torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, prefetch_factor=prefetch,
                                            multiprocessing_context="fork"))


@dataclass
class DecodedImages:
    """Every distinct image of a source, decoded: ``images[rows[path]]``; ``failed[path]`` says why a
    file could not be read (an ``Unreadable``'s reason, as skipped.csv lists it: the cache's index keeps it).
    ``mapped``: ``images`` lives in a memory-mapped cache file."""

    images: torch.Tensor
    rows: dict[str, int]
    failed: dict[str, str]
    mapped: bool = False
    facts: dict[str, FileFacts] = field(default_factory=dict)  # of the files whose decoding read them

    def select(self, records: list[Record], num_classes: int = 0) -> TensorSet:
        """The readable ``records``, in order: a copy in memory, or a ``RowView`` of the mapped file when
        the copy would take more than ``stream_threshold()`` bytes. ``num_classes``: of a multi-label set."""
        kept = [r for r in records if r.path in self.rows]
        index = torch.tensor([self.rows[r.path] for r in kept], dtype=torch.long)
        images = RowView(self.images, index)
        if not (self.mapped and images.nbytes > stream_threshold()):
            images = self.images[index]
        return TensorSet(images, label_tensor(kept, num_classes), [r.path for r in kept])


def label_tensor(records: list[Record], num_classes: int = 0) -> torch.Tensor:
    """The labels of ``records``: class indices int64 [N], or, when ``num_classes`` is given (a multi-label
    set), each image's label set as 0/1 float32 [N, num_classes], what binary cross-entropy takes."""
    if not num_classes:
        return torch.tensor([r.label for r in records], dtype=torch.long)
    targets = torch.zeros(len(records), num_classes)
    for row, record in enumerate(records):
        targets[row, list(record.label_set)] = 1.0
    return targets


def label_sets(labels: torch.Tensor) -> list[tuple[int, ...]]:
    """The label set of each row of a 0/1 [N, classes] tensor (``label_tensor``'s inverse)."""
    return [tuple(torch.nonzero(row).flatten().tolist()) for row in labels]


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Images per class of a split's labels (class indices, or a multi-label set's 0/1 rows)."""
    if labels.dim() == 2:
        return labels.sum(0).long()
    return torch.bincount(labels, minlength=num_classes)


def tensor_records(data: TensorSet, split: str) -> list[Record]:
    """The records of a split's readable images, in its row order (a multi-label image under its first label)."""
    if data.labels.dim() == 2:
        return [Record(path, labels[0], split, labels) for path, labels in zip(data.paths, label_sets(data.labels))]
    return [Record(path, label, split) for path, label in zip(data.paths, data.labels.tolist())]


def stream_threshold() -> float:
    """Splits larger than half the memory available now stream from the decoded-image cache (tests and
    benchmarks replace this function to stream smaller ones)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2
    except (ValueError, OSError, AttributeError):  # no such counters here: never stream
        return float("inf")


def decode_source(source: DataSource, preprocessing: Preprocessing, advance: Callable[[int], None] = lambda n: None,
                  cache: ArrayCache | None = None) -> DecodedImages:
    """Decode and prepare every image of ``source`` once, or map in the cached result of an earlier run.
    Decoded rows go straight into the cache file, so memory holds a chunk of images, not the dataset."""
    paths = sorted({r.path for r in source.records})
    shape = (len(paths), preprocessing.channels, *preprocessing.image_size)
    if source.arrays is not None or cache is None:  # built-in sets are decoded arrays already
        images, index = np.empty(shape, dtype=np.uint8), {}
        _decode_into(images, index, source, paths, preprocessing, advance)
        return DecodedImages(torch.from_numpy(images), index["rows"], index["failed"], facts=_facts(index))
    key = cache_key({"decoding": DECODING_VERSION, "files": file_identity(source.root, paths),
                     **preprocessing.pixel_settings()})
    hit = _cached(cache, key, shape)
    if hit is None:
        with cache.writing(key, shape) as (array, index):
            _decode_into(array, index, source, paths, preprocessing, advance)
        hit = _cached(cache, key, shape)
        if hit is None:  # could not be stored: decode into memory instead (rare: a read-only cache folder)
            return decode_source(source, preprocessing, lambda n: None, cache=None)
    else:
        advance(len(paths))
    array, index = hit
    return DecodedImages(torch.from_numpy(array), index["rows"], index["failed"], mapped=True, facts=_facts(index))


def _cached(cache: ArrayCache, key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, dict] | None:
    hit = cache.get(key)
    return hit if hit is not None and hit[0].shape == shape and "rows" in hit[1] else None


def _decode_into(images: np.ndarray, index: dict, source: DataSource, paths: list[str],
                 preprocessing: Preprocessing, advance: Callable[[int], None]) -> None:
    """Decode ``paths`` in chunks, on every core, into ``images[i]`` for ``paths[i]``; ``index`` gets the
    rows of the readable files, the reasons for the others (their rows stay unused) and the facts of the
    files read (digest, channels, height, width: what the data check needs)."""
    rows, failed, facts = {}, {}, {}
    for start, results in zip(range(0, len(paths), DECODE_CHUNK), _prepared_chunks(source, paths, preprocessing)):
        for row, result in enumerate(results, start):
            if isinstance(result, Unreadable):
                failed[paths[row]] = result.reason
                continue
            if isinstance(result, tuple):
                result, fact = result
                if fact is not None:
                    facts[paths[row]] = dataclasses.astuple(fact)
            rows[paths[row]] = row
            images[row] = result
        advance(len(results))
    index.update(rows=rows, failed=failed, facts=facts)


def _facts(index: dict) -> dict[str, FileFacts]:
    return {path: FileFacts(*fact) for path, fact in index.get("facts", {}).items()}


def _prepared_chunks(source: DataSource, paths: list[str], preprocessing: Preprocessing) -> Iterator[list]:
    """A folder's files go through the decoding processes, where a decoder crash costs one file
    (``oculi.data.contained``); a built-in set's arrays, with nothing to decode, are prepared here.
    A JPEG of at least twice the model's input size is decoded at 1/2-1/8 scale, as ``oculi predict`` does:
    a 12-megapixel photo in 11 ms instead of 45 ms, for a model input that differs by ~0.2 of 255 a pixel."""
    if source.arrays is None:
        return prepared_chunks([source.root / path for path in paths], preprocessing, draft=True, facts=True)
    return ([_prepare_array(source, path, preprocessing) for path in paths[i:i + DECODE_CHUNK]]
            for i in range(0, len(paths), DECODE_CHUNK))


def _prepare_array(source: DataSource, path: str, preprocessing: Preprocessing) -> np.ndarray:
    return preprocessing.prepare(source.read(Record(path, 0, ""), channels=preprocessing.channels)).contiguous().numpy()


@dataclass
class LoadedSource:
    """Every split of a source, decoded: the readable images, the files skipped and why, and the facts of the
    files decoding read (for the data check)."""

    sets: dict[str, TensorSet]
    skipped: list[tuple[str, str]]
    facts: dict[str, FileFacts]


def load_with_progress(source: DataSource, preprocessing: Preprocessing, reporter: Reporter,
                       cache: bool = True) -> LoadedSource:
    """``load_source`` under a "decoding images" bar, through the decoded-image cache unless ``cache`` is off:
    training and ``oculi check`` both load this way, so that each finds what the other decoded."""
    with reporter.bar("decoding images", len({r.path for r in source.records})) as advance:
        return load_source(source, preprocessing, advance, ArrayCache("images") if cache else None)


def load_source(source: DataSource, preprocessing: Preprocessing, advance: Callable[[int], None] = lambda n: None,
                cache: ArrayCache | None = None) -> LoadedSource:
    """``source``'s train, val and test images, each file decoded once (``decode_source``)."""
    decoded = decode_source(source, preprocessing, advance, cache)
    skipped = list(source.skipped) + [(r.path, decoded.failed[r.path]) for r in source.records
                                      if r.path in decoded.failed]
    width = len(source.classes) if source.multi_label else 0
    sets = {split: decoded.select(source.split_records(split), width) for split in ("train", "val", "test")}
    return LoadedSource(sets, skipped, decoded.facts)


def load_split(source: DataSource, records: list[Record], preprocessing: Preprocessing,
               skipped: list[tuple[str, str]], advance: Callable[[int], None] = lambda n: None,
               cache: ArrayCache | None = None) -> TensorSet:
    """Decode and prepare ``records``; unreadable ones are appended to ``skipped`` and left out."""
    decoded = decode_source(DataSource(source.name, source.classes, records, source.root, source.arrays),
                            preprocessing, advance, cache)
    skipped += [(r.path, decoded.failed[r.path]) for r in records if r.path in decoded.failed]
    return decoded.select(records, len(source.classes) if source.multi_label else 0)
