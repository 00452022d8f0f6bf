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
    """One labelled image: a file path relative to the data root, or a built-in set's key. A multi-label
    image has its set of classes in ``labels`` (sorted indices) and, in ``label``, the rarest of them: the
    class it is stratified by (``rarest_labels``)."""

    path: str
    label: int
    split: str
    labels: tuple[int, ...] | None = None  # None: one label, ``label``

    @property
    def label_set(self) -> tuple[int, ...]:
        return self.labels if self.labels is not None else (self.label,)


def label_counts(records: list[Record], num_classes: int) -> np.ndarray:
    """Images per class (an image with several labels counts for each of them)."""
    counts = np.zeros(num_classes, dtype=int)
    for record in records:
        counts[list(record.label_set)] += 1
    return counts


def rarest_labels(label_sets: list[tuple[int, ...]], num_classes: int) -> list[int]:
    """For each image, its label that fewest images carry (ties: the lower index): what a multi-label image is
    stratified by, so that every rare class is divided in the split's fractions (the common first step of
    iterative stratification, Sechidis et al. 2011), while frequent classes follow from their many images."""
    counts = np.zeros(num_classes, dtype=int)
    for labels in label_sets:
        counts[list(labels)] += 1
    return [min(labels, key=lambda c: (counts[c], c)) for labels in label_sets]


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
    """CSV with one row per image: path, label (class name; a multi-label image's names joined by
    LABEL_SEP), split."""
    atomic_write_csv(path, ["path", "label", "split"], [(r.path, label_names(r, classes), r.split) for r in records])


LABEL_SEP = ";"  # between the class names of a multi-label image, in split.csv and predictions


def named_record(path: str, names: str, split: str, classes: list[str], multi_label: bool, where) -> Record:
    """The record of a row that names its class (split.csv, test_predictions.csv, a table read for another
    model), labelled in ``classes``' order: a multi-label row's names are joined by LABEL_SEP."""
    wanted = [n for n in names.split(LABEL_SEP) if n] if multi_label else [names]
    unknown = next((n for n in wanted if n not in classes), None)
    if unknown is not None:
        raise OculiError(f"{where}: class '{unknown}' is not one the model knows ({', '.join(classes)})")
    labels = tuple(sorted(classes.index(n) for n in wanted))
    return Record(path, labels[0] if labels else 0, split, labels if multi_label else None)


def label_names(record: Record, classes: list[str]) -> str:
    return LABEL_SEP.join(classes[c] for c in record.label_set) if record.labels is not None else classes[record.label]


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
