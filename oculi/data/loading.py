"""Decode and prepare every image once, into uint8 tensors held in memory.

Decoding is the slow part of a small-image run, so it happens exactly once per image; every epoch
then slices batches out of one tensor (and augments them on the device) instead of re-reading files.
A bad file is recorded and skipped: a long run never dies on one image.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import os

import torch

from ..errors import ImageDecodeError
from .sources import DataSource
from .split import Record
from .transforms import Preprocessing


@dataclass
class TensorSet:
    """Prepared images of one split: uint8 [N, C, H, W], labels int64 [N], and where each came from."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_split(source: DataSource, records: list[Record], preprocessing: Preprocessing,
               skipped: list[tuple[str, str]], advance: Callable[[int], None] | None = None) -> TensorSet:
    """Decode and prepare ``records``; unreadable ones are appended to ``skipped`` and left out."""
    if source.arrays is not None:
        return _load_arrays(source, records, preprocessing, advance)

    def prepare(record: Record):
        try:
            image = preprocessing.prepare(source.read(record, channels=preprocessing.channels))
        except ImageDecodeError as err:
            return record, None, err.reason
        return record, image, None

    kept, images = [], []
    # Decoders release the GIL, so threads give real parallelism without pickling images between processes.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for record, image, reason in pool.map(prepare, records):
            if image is None:
                skipped.append((record.path, reason))
            else:
                kept.append(record)
                images.append(image)
            if advance:
                advance(1)
    return _stack(kept, images, preprocessing)


def _load_arrays(source: DataSource, records: list[Record], preprocessing: Preprocessing,
                 advance) -> TensorSet:
    images = [preprocessing.prepare(source.read(r, channels=preprocessing.channels)) for r in records]
    if advance:
        advance(len(records))
    return _stack(records, images, preprocessing)


def _stack(records: list[Record], images: list[torch.Tensor], preprocessing: Preprocessing) -> TensorSet:
    if images:
        stacked = torch.stack(images)
    else:
        stacked = torch.empty((0, preprocessing.channels, *preprocessing.image_size), dtype=torch.uint8)
    labels = torch.tensor([r.label for r in records], dtype=torch.long)
    return TensorSet(stacked, labels, [r.path for r in records])
