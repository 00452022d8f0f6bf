"""Duplicate images: exact copies (the same file bytes) and near copies (perceptual hashes a few bits apart,
or, with a pretrained backbone, features almost parallel), grouped; each group is named by one image, a
training image when it has one. A val or test image in a group with a training image is a leak: the model
is tested on what it learnt from; so is a test image in a group with a val image (val chose the model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.split import Record
from .hashing import cosine_pairs, hash_pairs

# A resized or re-encoded copy moves a few of the 64 pHash bits; distinct photos differ by ~32 of them. On
# the 398 hymenoptera photos at 224 px: copies at half size, JPEG quality 60, at most 4 bits from their
# original; no two distinct photos closer than 16. 6 leaves room on both sides.
NEAR_HASH_BITS = 6
# ... and their 8x8 colour thumbnails at most this many levels apart on average (of 255): a re-encoded copy
# is within 2-3; on CIFAR-10 (32 px) the hash alone paired planes in the sky with birds on sand.
NEAR_COLOUR_LEVELS = 12
# Features of a pretrained backbone (efficientnet_lite0, hymenoptera at 288 px): a copy cropped to the central
# 90% and re-encoded is at cosine 0.94 from its original (median; 95% of them above 0.895), while no two
# distinct photos of the 398 are above 0.84.
NEAR_COSINE = 0.90
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "": 3}


@dataclass(frozen=True)
class Duplicate:
    """``path`` is a copy of ``duplicate_of`` (the image that names its group)."""

    path: str
    duplicate_of: str
    kind: str  # exact | near
    across_splits: bool
    across_classes: bool
    split: str
    leak: bool  # a val/test image whose group holds a training image

    def row(self) -> list:
        return [self.path, self.duplicate_of, self.kind, self.across_splits, self.across_classes]


CSV_HEADER = ["path", "duplicate_of", "kind", "across_splits", "across_classes"]


class _Groups:
    """Union-find over item indices."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)

    def members(self) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            groups.setdefault(self.find(i), []).append(i)
        return [g for g in groups.values() if len(g) > 1]


def find_duplicates(records: list[Record], digests: list[str], hashes: torch.Tensor | None, thumbs: torch.Tensor,
                    features: torch.Tensor | None = None, near_bits: int = NEAR_HASH_BITS,
                    near_cosine: float = NEAR_COSINE) -> list[Duplicate]:
    """Every image that copies another, exactly or nearly. ``digests[i]``, ``hashes[i]`` (pHash bits),
    ``thumbs[i]`` (colour thumbnails) and ``features[i]`` belong to ``records[i]``; no ``hashes``: no
    near copies by hash (images too small for it)."""
    groups = _Groups(len(records))
    first_of: dict[str, int] = {}
    for i, digest in enumerate(digests):
        groups.join(i, first_of.setdefault(digest, i))
    for i, j, _ in ([] if hashes is None else hash_pairs(hashes, near_bits)):
        if (thumbs[i] - thumbs[j]).abs().mean() <= NEAR_COLOUR_LEVELS:
            groups.join(i, j)
    if features is not None:
        for i, j, _ in cosine_pairs(features, near_cosine):
            groups.join(i, j)
    found = []
    for members in groups.members():
        found += _group_rows(records, digests, members)
    return sorted(found, key=lambda d: (not d.leak, d.duplicate_of, d.path))


def _group_rows(records: list[Record], digests: list[str], members: list[int]) -> list[Duplicate]:
    """The rows of one group: each member but the one that names it (a training image when there is one)."""
    head = min(members, key=lambda i: (SPLIT_ORDER.get(records[i].split, 3), records[i].path))
    splits = {records[i].split for i in members}
    return [Duplicate(records[i].path, records[head].path, "exact" if digests[i] == digests[head] else "near",
                      records[i].split != records[head].split, records[i].label_set != records[head].label_set,
                      records[i].split, _leaks(records[i].split, splits))
            for i in members if i != head]


def _leaks(split: str, group_splits: set[str]) -> bool:
    """A val image copying a training image leaks; so does a test image copying a training or a val image
    (val chose the model: a test copy of it measures that choice on the images it was made on)."""
    earlier = {"val": {"train"}, "test": {"train", "val"}}.get(split, set())
    return bool(earlier & group_splits)


def summarize(duplicates: list[Duplicate]) -> dict[str, int]:
    """Counts for the summary line and check.json."""
    return {"exact": sum(d.kind == "exact" for d in duplicates),
            "near": sum(d.kind == "near" for d in duplicates),
            "across_classes": sum(d.across_classes for d in duplicates),
            "leaks": sum(d.leak for d in duplicates)}
