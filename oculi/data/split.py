"""Deterministic stratified splits and the split manifest (path, label, split) saved with every run."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OculiError
from ..io import atomic_write_csv

SPLITS = ("train", "val", "test")


@dataclass
class Record:
    """One labelled image: a file path relative to the data root, or a built-in set's key."""

    path: str
    label: int
    split: str


def stratified_split(labels: list[int], fractions: dict[str, float], seed: int) -> list[str]:
    """Assign each index a split so that every class is divided in the given fractions.

    ``fractions`` names the splits other than "train" (e.g. {"val": 0.1, "test": 0.1}); the rest is train.
    Each class is shuffled by its own seeded generator, so adding images of one class never moves
    another class's images between splits.
    """
    labels_arr = np.asarray(labels)
    assigned = np.full(len(labels_arr), "train", dtype=object)
    for cls in np.unique(labels_arr):
        members = np.flatnonzero(labels_arr == cls)
        order = np.random.default_rng([seed, int(cls)]).permutation(members)
        start = 0
        for split, fraction in fractions.items():
            # Never take a class's last training image: a class must stay learnable.
            count = min(int(round(fraction * len(order))), len(order) - start - 1)
            assigned[order[start:start + max(count, 0)]] = split
            start += max(count, 0)
    return assigned.tolist()


def write_manifest(path: Path, records: list[Record], classes: list[str]) -> None:
    """CSV with one row per image: path, label (class name), split."""
    atomic_write_csv(path, ["path", "label", "split"], [(r.path, classes[r.label], r.split) for r in records])


def read_manifest(path: str | Path) -> list[tuple[str, str, str]]:
    """Rows (path, class name, split) of a manifest written by a previous run."""
    path = Path(path)
    if not path.is_file():
        raise OculiError(f"--split-manifest: no such file: {path}")
    # surrogateescape: a file name that is not UTF-8 reads back as the str the OS gives (io.atomic_write_text)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label", "split"} <= set(reader.fieldnames):
            raise OculiError(f"--split-manifest: {path} needs the columns path,label,split")
        rows = [(row["path"], row["label"], row["split"]) for row in reader]
    bad = [s for _, _, s in rows if s not in SPLITS]
    if bad:
        raise OculiError(f"--split-manifest: {path} has an unknown split '{bad[0]}' (use train, val, test)")
    return rows
