"""Labels from a table instead of class folders: a CSV or TSV with a path and a label column (and, optionally,
a split column), as fastai's ``from_csv`` and Keras's ``flow_from_dataframe`` read them.

    path,label,split
    photos/001.jpg,beetle,train
    photos/002.jpg,dragonfly,

Paths are relative to the images folder (``--images``; else the table's own folder), or absolute; a path that
leaves the images folder (``../``) is an error, as are a missing column, an empty label, an unknown split and a
path given twice with two labels. A listed file that is missing or is not an image is skipped and listed, as a
folder's stray files are. The records come out in the order a folder of the same images gives (by class, then
path), so a table made from a folder splits exactly as the folder does.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import OculiError
from ..io import atomic_write_text
from .decode import IMAGE_EXTENSIONS
from .split import Record, rarest_labels

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
TABLE_NAMES = ("labels.csv", "labels.tsv")  # a folder holding one of these is read through it
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test", "": ""}


@dataclass(frozen=True)
class TableColumns:
    """How the table gives its labels: the names of the path, label and (optional) split columns; for
    several labels an image, the separator inside a label cell, or one 0/1 column per class
    (``label_columns``); ``multi_label`` True forces label sets, None decides from the rows (any row with
    two labels)."""

    path: str = "path"
    label: str = "label"
    split: str = "split"
    label_sep: str = ";"
    label_columns: tuple[str, ...] = ()
    multi_label: bool | None = None


@dataclass
class LabelTable:
    """What a table says: class names (sorted, as class folders are), records (split "" where it gives none),
    the folder the paths are relative to, and the rows passed over with why."""

    classes: list[str]
    records: list[Record]
    root: Path
    skipped: list[tuple[str, str]]
    warnings: list[str]
    multi_label: bool = False


def table_name(table: Path) -> str:
    """What a table's data is called (its runs too): the folder of a labels.csv, else the table's own name."""
    return table.resolve().parent.name if table.name in TABLE_NAMES else table.stem


def is_table(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in TABLE_SUFFIXES


def table_in(folder: Path) -> Path | None:
    """The labels table a folder holds (labels.csv or labels.tsv), if any."""
    return next((folder / name for name in TABLE_NAMES if (folder / name).is_file()), None)


def is_data_frame(data) -> bool:
    """Whether ``data`` is a pandas DataFrame, told without importing pandas (it is needed only then)."""
    return type(data).__name__ == "DataFrame" and type(data).__module__.startswith("pandas")


def frame_as_table(frame, folder: Path) -> Path:
    """A DataFrame of labels as a CSV in ``folder``, named by its content: a run's config.json names a file,
    so that ``--resume`` and ``oculi report`` read the very rows the run was trained on."""
    text = frame.to_csv(index=False)
    path = folder / f"table-{hashlib.sha256(text.encode()).hexdigest()[:16]}.csv"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path


def images_root(table: Path, images: str | Path | None = None) -> Path:
    """The folder a table's relative paths start from: ``images`` (--images), else the table's own folder."""
    return (Path(images) if images else table.parent).expanduser().resolve()


def read_label_table(table: Path, images: str | Path | None = None,
                     columns: TableColumns = TableColumns()) -> LabelTable:
    """The labelled images ``table`` lists, their paths relative to ``images`` (default: the table's folder)."""
    root = images_root(table, images)
    if not root.is_dir():
        raise OculiError(f"--images {root}: no such folder")
    rows = _rows(table, columns)
    cells = [(line, *_cells(table, line, row, columns)) for line, row in rows]
    multi = columns.multi_label if columns.multi_label is not None else (
        bool(columns.label_columns) or any(len(labels) > 1 for _, _, labels, _ in cells))
    labels, splits, skipped, lines = {}, {}, [], {}
    for line, path, cell, split in cells:
        rel = _relative(table, line, path, root)
        if rel in labels and labels[rel] != cell:
            if not multi:
                raise OculiError(f"{table}: {rel} is listed twice with two labels, '{labels[rel][0]}' and "
                                 f"'{cell[0]}' (line {line}; --multi-label reads them as one image's labels)")
            cell = tuple(sorted(set(labels[rel]) | set(cell)))  # multi-label: two rows, one image's set
        problem = _file_problem(root / rel)
        if problem:
            skipped.append((rel, problem))
            continue
        labels[rel], splits[rel], lines[rel] = cell, split, lines.get(rel, 0) + 1
    repeated = len(rows) - len(skipped) - len(labels)
    warnings = [f"{table}: {repeated} rows repeat an earlier row's path, read once"
                + (" (their labels joined)" if multi else " (same path and label)")] if repeated else []
    classes = sorted({name for cell in labels.values() for name in cell})
    if columns.label_columns:
        classes = list(columns.label_columns)  # the columns' order, as the user gave them
    records = _records(labels, splits, classes, multi)
    return LabelTable(classes, records, root, skipped, warnings, multi)


def _records(labels: dict[str, tuple[str, ...]], splits: dict[str, str], classes: list[str],
             multi: bool) -> list[Record]:
    """Records in a folder's order (by class, then path); a multi-label image under its rarest class."""
    index = {name: i for i, name in enumerate(classes)}
    sets = {p: tuple(sorted(index[n] for n in cell)) for p, cell in labels.items()}
    if not multi:
        return [Record(p, sets[p][0], splits[p]) for p in sorted(sets, key=lambda p: (sets[p][0], p))]
    paths = list(sets)
    rarest = dict(zip(paths, rarest_labels([sets[p] for p in paths], len(classes))))
    return [Record(p, rarest[p], splits[p], sets[p]) for p in sorted(paths, key=lambda p: (rarest[p], p))]


def _rows(table: Path, columns: TableColumns) -> list[tuple[int, dict]]:
    """(line number, row) of every non-blank row, after checking the header names the columns."""
    delimiter = TABLE_SUFFIXES.get(table.suffix.lower(), ",")
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames or []
            wanted = (columns.path, *(columns.label_columns or (columns.label,)))
            missing = [c for c in wanted if c not in header]
            if missing:
                found = ", ".join(header) if header else "no header"
                flag = "--label-columns" if columns.label_columns else "--path-column and --label-column"
                raise OculiError(f"{table}: no '{missing[0]}' column (found: {found}); name the columns with "
                                 f"{flag}")
            rows = [(reader.line_num, row) for row in reader if any((v or "").strip() for v in row.values())]
    except UnicodeDecodeError as err:
        raise OculiError(f"{table}: not UTF-8 text (byte {err.start}); save the table as UTF-8") from None
    except csv.Error as err:
        raise OculiError(f"{table}: not a readable table ({err})") from None
    if not rows:
        raise OculiError(f"{table}: no rows below the header")
    return rows


def _cells(table: Path, line: int, row: dict, columns: TableColumns) -> tuple[str, tuple[str, ...], str]:
    """(path, the row's labels, split) of one row."""
    path, split = (row.get(columns.path) or "").strip(), (row.get(columns.split) or "").strip()
    if not path:
        raise OculiError(f"{table}: line {line} has no path")
    labels = _column_labels(table, line, path, row, columns) if columns.label_columns else \
        _cell_labels(table, line, path, row, columns)
    if split.lower() not in SPLIT_NAMES:
        raise OculiError(f"{table}: line {line} ({path}) has the split '{split}'; use train, val, test or leave "
                         f"it empty")
    return path, labels, SPLIT_NAMES[split.lower()]


def _cell_labels(table: Path, line: int, path: str, row: dict, columns: TableColumns) -> tuple[str, ...]:
    """The label cell's names: one, or several split at ``label_sep`` (sorted, each once)."""
    cell = (row.get(columns.label) or "").strip()
    names = [n.strip() for n in cell.split(columns.label_sep)] if columns.label_sep else [cell]
    if not cell or not all(names):
        raise OculiError(f"{table}: line {line} ({path}) has an empty label" + (
            f" (labels separated by '{columns.label_sep}')" if cell else ""))
    return tuple(sorted(set(names)))


def _column_labels(table: Path, line: int, path: str, row: dict, columns: TableColumns) -> tuple[str, ...]:
    """The classes whose 0/1 column is 1 in this row."""
    values = {c: (row.get(c) or "").strip() for c in columns.label_columns}
    bad = next((c for c, v in values.items() if v not in ("0", "1")), None)
    if bad is not None:
        raise OculiError(f"{table}: line {line} ({path}) has '{values[bad]}' in the column '{bad}'; "
                         f"--label-columns take 0 or 1")
    labels = tuple(c for c, v in values.items() if v == "1")
    if not labels:
        raise OculiError(f"{table}: line {line} ({path}) has no label (every --label-columns column is 0); "
                         f"give images with no class a column of their own, e.g. 'none'")
    return labels


def _relative(table: Path, line: int, path: str, root: Path) -> str:
    """``path`` as the records name it: relative to ``root`` (an absolute path inside it too), or absolute
    when it is elsewhere; a relative path that climbs out of ``root`` is refused."""
    given = PurePosixPath(path.replace("\\", "/"))
    if given.is_absolute():
        resolved = Path(given).resolve()
        return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else resolved.as_posix()
    if ".." in given.parts and not (root / given).resolve().is_relative_to(root):
        raise OculiError(f"{table}: line {line}: {path} leaves the images folder {root}")
    return given.as_posix()


def _file_problem(path: Path) -> str | None:
    """Why a listed file cannot be one of the images (None when it can be)."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file ({path.suffix or 'no extension'})"
    if not path.is_file():
        return "listed in the table, but no such file" if not path.exists() else "not a regular file"
    return None
