"""Where labelled images come from: a folder of class folders, a folder already split into
train/val/test, or a built-in dataset name. Everything becomes a ``DataSource``: class names and a
list of records (path, label, split), with the files that were passed over and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import OculiError
from .builtin import is_builtin, load_builtin
from .decode import IMAGE_EXTENSIONS, convert_channels, decode_image, is_hidden
from .split import Record, read_manifest, stratified_split

SPLIT_FOLDER_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class DataSource:
    """Labelled images with their split. ``arrays`` holds a built-in set's decoded images."""

    name: str
    classes: list[str]
    records: list[Record]
    root: Path | None = None
    arrays: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)

    def read(self, record: Record, channels: int | None = None) -> torch.Tensor:
        """The image of one record as uint8 [C, H, W]; raises ImageDecodeError for a bad file."""
        if self.arrays is not None:
            image = torch.from_numpy(self.arrays[int(record.path.rsplit("/", 1)[1])])
            return convert_channels(image, channels)
        return decode_image(self.root / record.path, channels=channels)

    def split_records(self, split: str) -> list[Record]:
        return [r for r in self.records if r.split == split]

    def class_counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: count}} for the class-count chart and the imbalance check."""
        counts = {s: {c: 0 for c in self.classes} for s in ("train", "val", "test")}
        for r in self.records:
            counts[r.split][self.classes[r.label]] += 1
        return {s: c for s, c in counts.items() if sum(c.values())}


def open_source(data: str, val_split: float = 0.1, test_split: float = 0.1, seed: int = 0,
                split_manifest: str | None = None, data_dir: str | None = None,
                download_progress: Callable[[int, int | None], None] | None = None) -> DataSource:
    """Open ``data`` (a folder or a built-in name) and assign every image a split."""
    path = Path(data).expanduser()
    if not path.exists() and is_builtin(data):
        source = _builtin_source(data, data_dir, download_progress)
    elif not path.exists():
        raise OculiError(f"no such folder: {data} (built-in datasets: digits, cifar10, mnist, fashion-mnist)")
    elif not path.is_dir():
        raise OculiError(f"{data} is a file; give a folder with one sub-folder per class")
    elif split_folders(path):
        source = _presplit_source(path)
    else:
        source = scan_class_folders(path)
    if split_manifest:
        _apply_manifest(source, split_manifest)
    else:
        _fill_missing_splits(source, val_split, test_split, seed)
    _check_usable(source)
    return source


# ---- folders -------------------------------------------------------------------------------------

def split_folders(root: Path) -> dict[str, Path]:
    """{"train": path, "val": path, ...} when root holds a train/ folder, else {}."""
    found = {SPLIT_FOLDER_NAMES[p.name.lower()]: p for p in sorted(root.iterdir())
             if p.is_dir() and p.name.lower() in SPLIT_FOLDER_NAMES}
    return found if "train" in found else {}


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p))


def _files_of(folder: Path, root: Path, skipped: list) -> list[str]:
    """Image files below ``folder`` (recursively), as paths relative to ``root``.

    Hidden files (.DS_Store, ._*, Thumbs.db) are ignored silently; other non-image files are
    recorded as skipped so the user learns about them."""
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(root)
        if any(is_hidden(part) for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(rel.as_posix())
        else:
            skipped.append((rel.as_posix(), f"not an image file ({p.suffix or 'no extension'})"))
    return files


def scan_class_folders(root: Path) -> DataSource:
    """root/<class>/<images>: every image with its class, no split yet."""
    classes = [p.name for p in _class_dirs(root)]
    if not classes:
        raise OculiError(f"{root}: no class folders found (expected {root}/<class>/<image files>)")
    skipped: list = []
    records = [Record(f, label, "") for label, name in enumerate(classes)
               for f in _files_of(root / name, root, skipped)]
    return DataSource(root.name, classes, records, root=root, skipped=skipped)


def _presplit_source(root: Path) -> DataSource:
    folders = split_folders(root)
    per_split = {split: [p.name for p in _class_dirs(folder)] for split, folder in folders.items()}
    classes = per_split["train"]
    source = DataSource(root.name, classes, [], root=root)
    for split, names in per_split.items():
        extra = sorted(set(names) - set(classes))
        if extra:
            raise OculiError(f"{folders[split]}: class '{extra[0]}' is not in {folders['train']}")
        missing = sorted(set(classes) - set(names))
        if missing:
            source.warnings.append(f"{folders[split].name}/ has no class folder "
                                   f"{', '.join(missing)}")
        for name in names:
            files = _files_of(folders[split] / name, root, source.skipped)
            source.records += [Record(f, classes.index(name), split) for f in files]
    return source


# ---- built-in sets ---------------------------------------------------------------------------------

def _builtin_source(name: str, data_dir: str | None, progress) -> DataSource:
    ds = load_builtin(name, data_dir=data_dir, progress=progress)
    records = [Record(f"{split}/{i}", int(label), split if split == "test" else "")
               for i, (label, split) in enumerate(zip(ds.labels, ds.splits))]
    return DataSource(ds.name, list(ds.classes), records, arrays=ds.images)


# ---- splits ------------------------------------------------------------------------------------------

def _fill_missing_splits(source: DataSource, val_split: float, test_split: float, seed: int) -> None:
    """Split records without a split: val (and test, when there is no test set) are carved out of
    train, stratified by class."""
    unassigned = [r for r in source.records if r.split in ("", "train")]
    has_val = any(r.split == "val" for r in source.records)
    has_test = any(r.split == "test" for r in source.records)
    fractions = {}
    if not has_val and val_split > 0:
        fractions["val"] = val_split
    if not has_test and test_split > 0:
        fractions["test"] = test_split
    splits = stratified_split([r.label for r in unassigned], fractions, seed)
    for record, split in zip(unassigned, splits):
        record.split = split


def _apply_manifest(source: DataSource, manifest: str) -> None:
    """Reuse a previous run's split: the manifest decides every image's split (and its label)."""
    known = {r.path: r for r in source.records}
    records = []
    for path, label, split in read_manifest(manifest):
        if label not in source.classes:
            raise OculiError(f"--split-manifest: class '{label}' of {path} is not in {source.name}")
        if path not in known:
            source.warnings.append(f"--split-manifest: {path} is no longer in {source.name}")
            continue
        records.append(Record(path, source.classes.index(label), split))
    source.records = records


def _check_usable(source: DataSource) -> None:
    train_counts = np.bincount([r.label for r in source.records if r.split == "train"],
                               minlength=len(source.classes))
    if len(source.records) == 0:
        raise OculiError(f"{source.root or source.name}: no images found")
    if len(source.classes) < 2:
        raise OculiError(f"{source.root or source.name}: only one class ({source.classes[0]}); "
                         f"a classifier needs at least two class folders")
    empty = [c for c, n in zip(source.classes, train_counts) if n == 0]
    if empty:
        raise OculiError(f"{source.root or source.name}: class folder '{empty[0]}' has no training images")
    largest, smallest = train_counts.max(), train_counts.min()
    if largest >= 3 * smallest:
        source.warnings.append(
            f"imbalanced classes: '{source.classes[int(train_counts.argmax())]}' has {largest} training "
            f"images, '{source.classes[int(train_counts.argmin())]}' {smallest}; consider "
            f"--class-weights auto or --sampler balanced")
