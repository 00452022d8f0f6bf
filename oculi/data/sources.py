"""Where labelled images come from: a folder of class folders, a folder already split into
train/val/test, a table of labels (a CSV or TSV, or a folder holding labels.csv: ``data.table``), or a
built-in dataset name. Everything becomes a ``DataSource``: class names and a
list of records (path, label, split), with the files that were passed over and why."""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..config import IMBALANCE_RATIO, TrainConfig
from ..errors import OculiError
from .builtin import is_builtin, load_builtin
from .decode import IMAGE_EXTENSIONS, convert_channels, decode_image, is_hidden
from .split import LABEL_SEP, Record, label_counts, read_manifest, stratified_split
from .table import TABLE_SUFFIXES, TableColumns, images_root, is_table, read_label_table, table_in, table_name

# Why stat() fails on a symbolic link: the names a user can act on.
LINK_ERRORS = {errno.ELOOP: "symbolic link loop", errno.ENOENT: "broken symbolic link",
               errno.ENOTDIR: "broken symbolic link"}
# Fewer val + test images than this per class measure next to nothing (one image is 100% or 0%).
MIN_HELD_OUT_PER_CLASS = 2
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
    # False where a mirrored image may be another class (a mirrored 3 is not a 3): training then does not
    # flip unless asked to. A property of the data (built-in digit sets; folders whose classes are the digits,
    # ``digit_classes``), not of a name: a user's folder called "mnist" is judged by its classes.
    flips_keep_class: bool = True
    table: Path | None = None  # the table of labels the records come from (None: folders or a built-in set)
    multi_label: bool = False  # records carry label sets (Record.labels); the model has a sigmoid per class

    def read(self, record: Record, channels: int | None = None) -> torch.Tensor:
        """The image of one record as uint8 [C, H, W]; raises ImageDecodeError for a bad file."""
        if self.arrays is not None:
            image = torch.from_numpy(self.arrays[builtin_row(record.path)])
            return convert_channels(image, channels)
        return decode_image(self.root / record.path, channels=channels)

    def split_records(self, split: str) -> list[Record]:
        return [r for r in self.records if r.split == split]

    def class_counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: count}} for the class-count chart and the imbalance check."""
        counts = {s: dict(zip(self.classes, label_counts(self.split_records(s), len(self.classes)).tolist()))
                  for s in ("train", "val", "test")}
        return {s: c for s, c in counts.items() if sum(c.values())}


def open_source(data: str, val_split: float = 0.1, test_split: float = 0.1, seed: int = 0,
                split_manifest: str | None = None, data_dir: str | None = None,
                download_progress: Callable[[int, int | None], None] | None = None,
                images: str | None = None, columns: TableColumns = TableColumns()) -> DataSource:
    """Open ``data`` (a folder, a table of labels with its ``images`` folder, or a built-in name) and assign
    every image a split."""
    path = data_folder(data)
    table = None if path is None else path if is_table(path) else table_in(path)
    if images is not None and table is None:
        raise OculiError(f"--images {images}: only a table of labels (.csv, .tsv) names its images folder; "
                         f"{data} is not one")
    if path is None:
        source = _builtin_source(data, data_dir, download_progress)
    elif table is not None:
        source = _table_source(table, images, columns)
    elif split_folders(path):
        source = _presplit_source(path)
    else:
        source = scan_class_folders(path)
    if source.arrays is None:
        source.flips_keep_class = not digit_classes(source.classes)
    if split_manifest:
        _apply_manifest(source, split_manifest)
    else:
        _fill_missing_splits(source, val_split, test_split, seed)
    if source.arrays is not None:
        _name_by_split(source)
    _check_usable(source)
    _check_held_out(source, asked=bool(split_manifest) or val_split + test_split > 0)
    return source


def open_configured(cfg: TrainConfig, download_progress: Callable[[int, int | None], None] | None = None,
                    split_manifest: str | None = None) -> DataSource:
    """``open_source`` with the data settings of ``cfg``: where the images are, how they are labelled and split."""
    return open_source(cfg.data, cfg.val_split, cfg.test_split, cfg.seed, split_manifest, cfg.data_dir,
                       download_progress, cfg.images, table_columns(cfg))


def table_columns(cfg: TrainConfig) -> TableColumns:
    """How ``cfg`` says a table gives its labels."""
    label_columns = tuple(c.strip() for c in cfg.label_columns.split(",") if c.strip()) if cfg.label_columns else ()
    if cfg.label_columns is not None and len(label_columns) < 2:
        raise OculiError(f"--label-columns {cfg.label_columns}: name at least two columns, separated by commas")
    return TableColumns(cfg.path_column, cfg.label_column, cfg.split_column, cfg.label_sep, label_columns,
                        cfg.multi_label)


def data_folder(data: str) -> Path | None:
    """The folder (or table of labels) ``data`` names, or None when it names a built-in set: a path that exists is the user's
    (a folder called "digits" is read, not the built-in set), a built-in name that is no path is the set.
    Anything else is a one-line OculiError."""
    path = Path(data).expanduser()
    if not path.exists() and is_builtin(data):
        return None
    if not path.exists():
        what = "table" if path.suffix.lower() in TABLE_SUFFIXES else "folder"
        raise OculiError(f"no such {what}: {data} (built-in datasets: digits, cifar10, mnist, fashion-mnist)")
    if not path.is_dir() and not is_table(path):
        raise OculiError(f"{data} is a file; give a folder with one sub-folder per class, or a table of labels "
                         f"(.csv or .tsv)")
    return path


def records_source(data: str, classes: list[str], records: list[Record], data_dir: str | None = None,
                   images: str | None = None) -> DataSource:
    """A source that reads ``records`` (paths as a run's split.csv names them, labels indexing ``classes``)
    from ``data``, found as ``open_source`` finds it: without scanning the folder or splitting anything.
    A table's records are read from its ``images`` folder (default: the table's own)."""
    folder = data_folder(data)
    table = None if folder is None else folder if is_table(folder) else table_in(folder)
    if table is not None:
        return DataSource(table_name(table), list(classes), records, root=images_root(table, images), table=table,
                          multi_label=any(r.labels is not None for r in records))
    if folder is not None:
        return DataSource(folder.name, list(classes), records, root=folder)
    dataset = load_builtin(data, data_dir=data_dir)  # no files: the records are rows of the set's arrays
    return DataSource(dataset.name, list(classes), records, arrays=dataset.images,
                      flips_keep_class=dataset.flips_keep_class)


def digit_classes(classes: list[str]) -> bool:
    """Whether every class is one digit (folders 0/ to 9/, as MNIST's are kept): a mirrored digit is another
    glyph or none. On 10,000 such digits (benchmarks/make_digits28.py, 10 epochs) flips in training and at
    test time gave 99.45% test, none 99.60%. Letters are left alone: "a/" and "b/" name anything."""
    return all(len(name) == 1 and name in "0123456789" for name in classes)


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

    Hidden files (.DS_Store, ._*, Thumbs.db) are ignored silently; other non-image files, broken or
    looping symbolic links and unreadable folders are recorded as skipped so the user learns about them."""
    files = []
    # Sorted by path as a whole, the order rglob's sorted list had: the split of a class depends on it.
    for path, problem in sorted(_walk(folder, set()), key=lambda item: item[0]):
        rel = path.relative_to(root).as_posix()
        if problem is None and path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(rel)
        else:
            skipped.append((rel, problem or f"not an image file ({path.suffix or 'no extension'})"))
    return files


def _walk(folder: Path, scanned: set) -> Iterator[tuple[Path, str | None]]:
    """(file, None) for every regular file below ``folder``, (path, why it is passed over) for the rest.

    Links to folders are followed (a linked folder of images counts), each folder once (``scanned``), but
    never a link to a folder that holds the one being scanned: it would recurse for ever, or bring the
    data root's other classes in again."""
    scanned.add(_folder_id(folder))
    try:
        entries = sorted(p for p in folder.iterdir() if not is_hidden(p))
    except OSError as err:
        yield folder, f"unreadable folder ({err.strerror})"
        return
    for entry in entries:
        try:
            info = entry.stat()  # follows links
        except OSError as err:
            if entry.is_symlink():
                yield entry, LINK_ERRORS.get(err.errno, f"unreadable symbolic link ({err.strerror})")
            continue  # anything else vanished since the listing
        if stat.S_ISREG(info.st_mode):
            yield entry, None
        elif not stat.S_ISDIR(info.st_mode):
            yield entry, "not a regular file"  # a FIFO named x.png would block the decoder for ever
        elif entry.is_symlink() and folder.resolve().is_relative_to(entry.resolve()):
            yield entry, "symbolic link loop"
        elif (info.st_dev, info.st_ino) in scanned:
            yield entry, "symbolic link to a folder already scanned"
        else:
            yield from _walk(entry, scanned)


def _folder_id(folder: Path) -> tuple[int, int]:
    info = folder.stat()
    return info.st_dev, info.st_ino


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


def _table_source(table: Path, images: str | None, columns: TableColumns) -> DataSource:
    """The images a table of labels lists."""
    read = read_label_table(table, images, columns)
    return DataSource(table_name(table), read.classes, read.records, root=read.root, skipped=read.skipped,
                      warnings=read.warnings, table=table, multi_label=read.multi_label)


# ---- built-in sets ---------------------------------------------------------------------------------

def _builtin_source(name: str, data_dir: str | None, progress) -> DataSource:
    """Records named by their official split until their own split is known (``_name_by_split``)."""
    ds = load_builtin(name, data_dir=data_dir, progress=progress)
    records = [Record(f"{split}/{i}", int(label), split if split == "test" else "")
               for i, (label, split) in enumerate(zip(ds.labels, ds.splits))]
    return DataSource(ds.name, list(ds.classes), records, arrays=ds.images, flips_keep_class=ds.flips_keep_class)


def builtin_row(path: str) -> int:
    """The row of a built-in set's image named ``path`` ("<split>/<row>"); ValueError when it names none."""
    return int(path.rsplit("/", 1)[-1])


def _name_by_split(source: DataSource) -> None:
    """A built-in set's images are rows of its arrays, named "<split>/<row>" after the split they are in,
    so that split.csv and test_predictions.csv call a test image test/... (digits has no official split:
    its images were all "train/<row>", those held out for testing too). The row alone identifies an
    image: a manifest naming it otherwise (an older run's) still finds it (``_manifest_key``)."""
    for record in source.records:
        record.path = f"{record.split}/{builtin_row(record.path)}"


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
    known = {_manifest_key(source, r.path) for r in source.records}
    counts = label_counts(source.records, len(source.classes))  # once: what a label set is stratified by
    records = []
    for path, label, split in read_manifest(manifest):
        names = label.split(LABEL_SEP) if source.multi_label else [label]
        unknown = next((name for name in names if name not in source.classes), None)
        if unknown is not None:
            raise OculiError(f"--split-manifest: class '{unknown}' of {path} is not in {source.name}")
        if _manifest_key(source, path) not in known:
            source.warnings.append(f"--split-manifest: {path} is no longer in {source.name}")
            continue
        records.append(_manifest_record(source, path, names, split, counts))
    source.records = records


def _manifest_record(source: DataSource, path: str, names: list[str], split: str, counts) -> Record:
    """The record a manifest row gives: one class, or a label set under its rarest class by ``counts`` (as the
    table had it)."""
    if not source.multi_label:
        return Record(path, source.classes.index(names[0]), split)
    labels = tuple(sorted(source.classes.index(n) for n in names))
    return Record(path, min(labels, key=lambda c: (counts[c], c)), split, labels)


def _manifest_key(source: DataSource, path: str) -> str | int:
    """What identifies an image across runs: its file path, or a built-in set's row whatever the split
    in its name."""
    if source.arrays is None:
        return path
    try:
        return builtin_row(path)
    except ValueError:
        return path  # not a built-in set's name: reported as no longer there


def _check_usable(source: DataSource) -> None:
    train_counts = label_counts(source.split_records("train"), len(source.classes))
    if len(source.records) == 0:
        raise OculiError(f"{source.root or source.name}: no images found")
    if len(source.classes) < 2:
        raise OculiError(f"{source.root or source.name}: only one class ({source.classes[0]}); "
                         f"a classifier needs at least two classes")
    empty = [c for c, n in zip(source.classes, train_counts) if n == 0]
    if empty:
        raise OculiError(f"{source.root or source.name}: class '{empty[0]}' has no training images")
    largest, smallest = train_counts.max(), train_counts.min()
    if largest >= IMBALANCE_RATIO * smallest:
        source.warnings.append(
            f"imbalanced classes: '{source.classes[int(train_counts.argmax())]}' has {largest} training "
            f"images, '{source.classes[int(train_counts.argmin())]}' {smallest}; consider "
            f"--class-weights auto or --sampler balanced")


def _check_held_out(source: DataSource, asked: bool) -> None:
    """Warn when the images held out for validation and testing are too few to measure the model (one
    image per class leaves none: a class's last training image is never held out). Not when the user
    asked for no held-out images (--val-split 0 --test-split 0)."""
    held_out = sum(r.split in ("val", "test") for r in source.records)
    if asked and held_out < MIN_HELD_OUT_PER_CLASS * len(source.classes):
        source.warnings.append(
            f"val/test are empty or too small: {held_out} images for {len(source.classes)} classes; val "
            f"accuracy and test metrics need more images per class (each class keeps one for training)")
