"""The projects of ``oculi app``: a data folder of class subfolders inside the app's root, or one made under
ROOT/projects/NAME/data from uploads; their counts and images, and the fixes a check suggests, each a file
move written to the project's change log (labels.jsonl) and undone by moving the file back.

Every path a client names is checked here: names are plain words (no ``/``, no ``..``), and a path is
resolved, symlinks followed, and refused unless it lies inside the folder it must be in.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..data.children import ChildDied, map_in_children
from ..data.pixels import IMAGE_EXTENSIONS, decode_array, is_hidden
from ..data.sources import split_folders
from ..data.unreadable import Unreadable
from ..deploy.service import ServeError, unreadable_code
from ..errors import ImageDecodeError
from ..io import atomic_path, atomic_write_json, atomic_write_text
from ..rundir import RunDir

PROJECTS = "projects"  # ROOT/projects/NAME: the app's own folders
APP_FOLDERS = {PROJECTS, ".oculi-app"}  # never offered as data
PROJECT_FILE = "project.json"
CHANGE_LOG = "labels.jsonl"
REMOVED = "removed"  # where a dropped copy goes, under the project: undo brings it back
# A project, class or run name: a plain word a file system takes anywhere (no separators, no leading dot).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SAMPLES = 6  # thumbnails per class
MAX_IMAGE_MB = 20  # an upload's largest file
DECODE_TIMEOUT_S = 30.0  # an upload whose decoder is silent this long is refused as a hang


def checked_name(name: str, what: str) -> str:
    """``name`` when it is a plain word; else a 400 naming the field."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise ServeError(400, "invalid_name", f"{what} {name!r}: use letters, digits, '-', '_' or '.' "
                                              f"(at most 64, no '/' or '..')")
    return name


def inside(base: Path, relative: str, what: str) -> Path:
    """``base / relative`` resolved (symlinks followed), refused (400) unless it stays inside ``base``."""
    if not relative or Path(relative).is_absolute() or "\\" in relative or "\0" in relative:
        raise ServeError(400, "outside_root", f"{what} {relative!r}: give a path relative to {base.name}/")
    path = (base / relative).resolve()
    if not path.is_relative_to(base.resolve()):
        raise ServeError(400, "outside_root", f"{what} {relative!r}: outside {base.name}/")
    return path


def image_files(folder: Path) -> list[Path]:
    """The image files below ``folder``, as ``oculi train`` finds them (hidden files skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(is_hidden(part) for part in p.relative_to(folder).parts))


def class_folders(data: Path) -> list[tuple[str, Path]]:
    """(class, folder) of each class folder of ``data``, in every split folder when it has train/ val/ test/."""
    if not data.is_dir():  # a data folder moved or deleted since the project was made: no classes
        return []
    splits = split_folders(data) or {"": data}
    return [(c.name, c) for folder in splits.values() for c in sorted(folder.iterdir())
            if c.is_dir() and not is_hidden(c)]


@dataclass(frozen=True)
class Project:
    name: str
    folder: Path  # ROOT/projects/NAME
    data: Path  # the class folders: the project's data/ or a folder of the root

    @property
    def checks(self) -> Path:
        return self.folder / "check"

    @property
    def runs(self) -> Path:
        return self.folder / "runs"

    @property
    def log(self) -> Path:
        return self.folder / CHANGE_LOG

    def run(self, name: str) -> Path:
        """A run folder of the project, which must exist (404 otherwise)."""
        path = self.runs / checked_name(name, "run")
        if not path.is_dir():
            raise ServeError(404, "not_found", f"project {self.name} has no run {name!r}")
        return path

    def summary(self) -> dict:
        """Its name, where its data is, and each class's image count and a few thumbnails."""
        counts: dict[str, list[Path]] = {}
        for name, folder in class_folders(self.data):
            counts.setdefault(name, []).extend(image_files(folder))
        classes = [{"name": name, "count": len(files),
                    "samples": [self.relative(f) for f in files[:SAMPLES]]} for name, files in sorted(counts.items())]
        return {"name": self.name, "data": str(self.data), "classes": classes,
                "images": sum(c["count"] for c in classes), "uploads": self.data == self.folder / "data"}

    def relative(self, path: Path) -> str:
        return path.relative_to(self.data).as_posix()

    def image(self, relative: str) -> Path:
        """An image of the project (its data, or a copy it dropped), by its path relative to the data."""
        for base in (self.data, self.folder / REMOVED):
            path = inside(base, relative, "path")
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                return path
        raise ServeError(404, "not_found", f"project {self.name} has no image {relative!r}")

    def check_result(self) -> dict | None:
        """What the last ``oculi check`` of the project found (its check.json), or None before one."""
        files = RunDir(self.checks)
        return files.read_json(files.check) if files.check.is_file() else None

    def run_names(self) -> list[str]:
        return sorted(p.name for p in self.runs.iterdir() if p.is_dir()) if self.runs.is_dir() else []

    def next_run(self) -> Path:
        taken = set(self.run_names())
        return self.runs / next(f"run-{i}" for i in range(1, len(taken) + 2) if f"run-{i}" not in taken)


class Projects:
    """The projects under ``root``; every change to a project's files is made under one lock."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.folder = self.root / PROJECTS
        self._lock = threading.Lock()

    # ------------------------------------------------------------ finding and making

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.folder.glob(f"*/{PROJECT_FILE}")) if self.folder.is_dir() else []

    def get(self, name: str) -> Project:
        folder = self.folder / checked_name(name, "project")
        if not (folder / PROJECT_FILE).is_file():
            raise ServeError(404, "not_found", f"no project {name!r}")
        saved = json.loads((folder / PROJECT_FILE).read_text())
        return Project(name, folder, inside(self.root, saved["data"], "data folder"))

    def data_folders(self) -> list[str]:
        """Folders of the root (two levels down) that hold class folders: what a project can be made from."""
        found = []
        for folder in sorted(p for p in self.root.glob("*") if p.is_dir() and p.name not in APP_FOLDERS):
            for candidate in (folder, *sorted(p for p in folder.iterdir() if p.is_dir())):
                if not is_hidden(candidate) and class_folders(candidate):
                    found.append(candidate.relative_to(self.root).as_posix())
        return found

    def create(self, name: str, folder: str | None = None, classes: list[str] | None = None) -> Project:
        """A project over ``folder`` (relative to the root), or an empty one with ``classes`` for uploads."""
        checked_name(name, "project")
        if folder is None:
            names = [checked_name(c, "class") for c in classes or []]
            if not names:
                raise ServeError(400, "bad_request", "a new project needs a data folder or at least one class")
        with self._lock:
            target = self.folder / name
            if (target / PROJECT_FILE).exists():
                raise ServeError(409, "exists", f"project {name!r} exists already")
            if folder is not None:
                data = inside(self.root, folder, "folder")
                if not data.is_dir() or not class_folders(data):
                    raise ServeError(400, "no_class_folders", f"folder {folder!r}: no class folders in it")
            else:
                data = target / "data"
                for c in names:
                    (data / c).mkdir(parents=True, exist_ok=True)
            target.mkdir(parents=True, exist_ok=True)
            atomic_write_json(target / PROJECT_FILE, {"name": name, "data": data.relative_to(self.root).as_posix()})
        return self.get(name)

    def add_class(self, project: Project, name: str) -> None:
        self._uploads_only(project)
        (project.data / checked_name(name, "class")).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ uploads

    def save_uploads(self, project: Project, class_name: str, files: list[tuple[str, bytes]]) -> dict:
        """Each (file name, bytes) saved into the class folder once it decodes as an image; refused ones
        get an error entry. None saved: a 400 naming each file."""
        self._uploads_only(project)
        folder = project.data / checked_name(class_name, "class")
        if not folder.is_dir():
            raise ServeError(404, "not_found", f"project {project.name} has no class {class_name!r}")
        saved, refused = [], []
        for (name, data), problem in zip(files, upload_problems(files)):
            if problem:
                refused.append({"file": name, "error": {"code": problem[0], "message": f"{name}: {problem[1]}"}})
                continue
            with self._lock:
                target = free_name(folder / name)
                with atomic_path(target) as tmp:
                    tmp.write_bytes(data)
            saved.append(project.relative(target))
        if not saved:
            first = refused[0]["error"]
            raise ServeError(400, first["code"], "; ".join(r["error"]["message"] for r in refused), details=refused)
        return {"saved": saved, "refused": refused}

    def _uploads_only(self, project: Project) -> None:
        if project.data != project.folder / "data":
            raise ServeError(400, "read_only", f"project {project.name} reads {project.data.name}/ as it is: "
                                               f"uploads go to a project made for them")

    # ------------------------------------------------------------ fixes and their log

    def changes(self, project: Project) -> list[dict]:
        if not project.log.is_file():
            return []
        return [json.loads(line) for line in project.log.read_text().splitlines() if line.strip()]

    def apply_fix(self, project: Project, kind: str, path: str, to_class: str | None = None) -> dict:
        """Drop an image (moved to the project's removed/) or relabel it (moved to ``to_class``'s folder)."""
        if kind not in ("drop", "relabel"):
            raise ServeError(400, "bad_request", f"kind {kind!r}: a fix is 'drop' or 'relabel'")
        with self._lock:
            source = inside(project.data, path, "path")
            if not source.is_file():
                raise ServeError(404, "not_found", f"path {path!r}: no such image in {project.data.name}/")
            path = project.relative(source)  # red/../red/x.jpg as red/x.jpg: the log names each file one way
            if kind == "drop":
                target = project.folder / REMOVED / path
            else:
                target = project.data / relabelled(project, path, to_class)
            target = free_name(target)
            move(source, target)
            changes = self.changes(project)
            change = {"id": 1 + max((c["id"] for c in changes), default=0), "kind": kind, "path": path,
                      "moved_to": str(target.relative_to(project.folder if kind == "drop" else project.data)),
                      "to_class": to_class, "time": round(time.time(), 3), "undone": None}
            self._write_log(project, changes + [change])
        return change

    def undo(self, project: Project, change_id: int) -> dict:
        """Move the file of change ``change_id`` back where it was."""
        with self._lock:
            changes = self.changes(project)
            change = next((c for c in changes if c["id"] == change_id), None)
            if change is None or change["undone"] is not None:
                raise ServeError(404, "not_found", f"change {change_id}: no such change to undo")
            base = project.folder if change["kind"] == "drop" else project.data
            back = inside(project.data, change["path"], "path")
            if back.exists():
                raise ServeError(409, "exists", f"{change['path']}: a file has taken its place; move it first")
            move(inside(base, change["moved_to"], "path"), back)
            change["undone"] = round(time.time(), 3)
            self._write_log(project, changes)
        return change

    @staticmethod
    def _write_log(project: Project, changes: list[dict]) -> None:
        atomic_write_text(project.log, "".join(json.dumps(c) + "\n" for c in changes))


def relabelled(project: Project, path: str, to_class: str | None) -> str:
    """``path`` with its class folder replaced by ``to_class`` (an existing class of the project)."""
    known = {name for name, _ in class_folders(project.data)}
    if to_class is None or to_class not in known:
        raise ServeError(400, "unknown_class", f"to_class {to_class!r}: not a class of {project.name} "
                                               f"({', '.join(sorted(known))})")
    parts = Path(path).parts
    at = 1 if split_folders(project.data) else 0  # train/ants/x.jpg: the class is the second part
    if len(parts) < at + 2:
        raise ServeError(400, "bad_request", f"path {path!r}: not inside a class folder")
    return Path(*parts[:at], to_class, *parts[at + 1:]).as_posix()


def upload_problems(files: list[tuple[str, bytes]]) -> list[tuple[str, str] | None]:
    """For each (name, bytes): (code, reason) when it may not be saved (``upload_problem``), else None. The
    bytes are decoded in a forked child (``map_in_children``), as serve decodes uploads: a decoder that
    crashes or hangs on one file refuses that file, not the app."""
    problems = [upload_problem(name, data) for name, data in files]
    unchecked = [i for i, problem in enumerate(problems) if problem is None]
    decoded = map_in_children(lambda i: decoding_problem(files[i][1]), unchecked, timeout=DECODE_TIMEOUT_S)
    for i, outcome in zip(unchecked, decoded):
        problems[i] = (("decoder_crashed", f"the decoder {outcome.reason} on it ({outcome.detail})")
                       if isinstance(outcome, ChildDied) else outcome)
    return problems


def upload_problem(name: str, data: bytes) -> tuple[str, str] | None:
    """(code, reason) when an upload's name or size rules it out: not a plain file name, not an image's
    extension, too large."""
    if not name or Path(name).name != name or name.startswith(".") or "\\" in name or ".." in name:
        return "invalid_name", "not a plain file name"
    if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
        return "not_an_image", f"not an image file name (use {', '.join(sorted(IMAGE_EXTENSIONS))})"
    if len(data) > MAX_IMAGE_MB * 2**20:
        return "upload_too_large", f"larger than {MAX_IMAGE_MB} MB"
    return None


def decoding_problem(data: bytes) -> tuple[str, str] | None:
    """(code, reason) when ``data`` does not decode as an image (oculi's own decoding, as training reads it)."""
    try:
        decode_array(data)
    except ImageDecodeError as err:
        return unreadable_code(Unreadable.of(err)), err.reason
    return None


def free_name(path: Path) -> Path:
    """``path``, or ``name-2.jpg``, ``name-3.jpg``... when it is taken."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)
