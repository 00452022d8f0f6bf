"""On-disk caches, keyed by everything their contents depend on, so a stale entry is never read back.

- ``images/``: a dataset's decoded, resized uint8 pixels (``ArrayCache``), keyed by every file's path,
  size and modification time and the preprocessing: a changed, added or removed file, or another image
  size, gives another key. Read back memory-mapped, so opening an entry costs no time.
- ``features/``: backbone features (``TensorCache``), keyed by the exact prepared pixels and a
  description of the computation (backbone, weights, view).

An old entry is only wasted disk, which ``oculi cache clear`` frees. Every entry is written atomically,
through a temporary entry that a killed run leaves behind: those are removed once their writer is gone
(by the next write, ``oculi cache info`` and ``clear``).

The folder is ``$OCULI_CACHE_DIR``, else ``$XDG_CACHE_HOME/oculi``, else ``~/.cache/oculi``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_path


DIGEST_ROWS = 4096


def cache_root() -> Path:
    if os.environ.get("OCULI_CACHE_DIR"):
        return Path(os.environ["OCULI_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "oculi"


def tensor_digest(tensor) -> str:
    """BLAKE2 of a tensor's bytes, shape and dtype (about 1 GB/s on one core), read a block of rows at a
    time, so that images streamed from disk (``RowView``) hash like the same tensor in memory."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
    rows = tensor if len(tensor.shape) else tensor.reshape(1)
    for start in range(0, len(rows), DIGEST_ROWS):
        digest.update(rows[start:start + DIGEST_ROWS].contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(description: dict, *tensors: torch.Tensor) -> str:
    """A key for a computation described by ``description`` (JSON-able) over ``tensors``."""
    digest = hashlib.blake2b(json.dumps(description, sort_keys=True).encode(), digest_size=20)
    for tensor in tensors:
        digest.update(tensor_digest(tensor).encode())
    return digest.hexdigest()


class TensorCache:
    """``get``/``put`` of named tensors under a key, in ``root/<kind>/``."""

    def __init__(self, kind: str, root: Path | None = None):
        self.folder = (root or cache_root()) / kind

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except Exception:  # a damaged entry is a miss, never an error
            return None

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder, recursive=False)
        with atomic_path(self.path(key)) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))


class ArrayCache:
    """``get``/``put`` of one uint8 array and a JSON index under a key: ``root/<kind>/<key>/``."""

    def __init__(self, kind: str, root: Path | None = None):
        self.folder = (root or cache_root()) / kind

    def get(self, key: str) -> tuple[np.ndarray, dict] | None:
        """(array memory-mapped copy-on-write, index), or None when absent or damaged."""
        entry = self.folder / key
        try:
            index = json.loads((entry / "index.json").read_text())
            return np.load(entry / "array.npy", mmap_mode="c"), index
        except (OSError, ValueError):
            return None

    @contextmanager
    def writing(self, key: str, shape: tuple[int, ...]) -> Iterator[tuple[np.ndarray, dict]]:
        """A new entry: a uint8 array of ``shape`` memory-mapped for writing (filled row by row, so a
        dataset larger than memory never has to fit in it) and an index dict to fill. Written into a
        temporary folder that names its writer (``writer.json``: so that a killed run's folder can be told
        from a live one and removed), renamed into place in one step when the block ends without error."""
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder, recursive=False)
        tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{key}."))
        try:
            (tmp / WRITER_FILE).write_text(json.dumps(_this_writer()))
            array = np.lib.format.open_memmap(tmp / "array.npy", mode="w+", dtype=np.uint8, shape=shape)
            index: dict = {}
            yield array, index
            array.flush()
            del array
            (tmp / "index.json").write_text(json.dumps(index))
            self._publish(tmp, key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: Path, key: str) -> None:
        """Rename the finished ``tmp`` to ``key``. Another process building the same entry may have
        published it meanwhile: the same key means the same content, so its entry is kept and ``tmp`` is
        dropped. Only a damaged entry is replaced (a sound one is read, never rewritten)."""
        entry = self.folder / key
        if entry.exists() and self.get(key) is None:
            # Renamed aside before it is deleted: the key never names a half-deleted folder.
            aside = self.folder / f".{key}.damaged.{os.getpid()}"
            try:
                os.replace(entry, aside)
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            pass  # another process published the same entry meanwhile: a non-empty folder is not replaced


def file_identity(root: Path, paths: list[str]) -> str:
    """A key for the files as they are now: each one's path, size and modification time.

    Paths are hashed as the bytes the filesystem gave (``os.fsencode``): a name that is not valid UTF-8
    comes back as a str with surrogate escapes, which plain ``.encode()`` refuses."""
    digest = hashlib.blake2b(os.fsencode(root.resolve()), digest_size=20)
    for path in paths:
        try:
            stat = (root / path).stat()
            state = f"{stat.st_size}\0{stat.st_mtime_ns}"
        except OSError:  # gone since the folder was listed: decoding will report it
            state = "missing"
        digest.update(b"\0" + os.fsencode(path) + f"\0{state}".encode())
    return digest.hexdigest()


def cache_size(root: Path | None = None) -> tuple[int, int]:
    """(number of entries, bytes) under the cache folder, once the temporary entries of writes that will
    never finish are removed; live writes' temporary entries are not counted."""
    root = root or cache_root()
    remove_stale_temps(root)
    files = [Path(folder) / name for folder, dirs, names in _walk_entries(root) for name in names]
    entries = [p for p in files if p.suffix in (".safetensors", ".npy")]
    return len(entries), sum(_size(p) for p in files)


def clear_cache(root: Path | None = None) -> tuple[int, int]:
    """Delete every cache entry, but not the temporary entry of a write in progress (its process would
    fail when it renames it into place); returns what was freed as (entries, bytes)."""
    root = root or cache_root()
    freed = cache_size(root)
    # Children before their folder (a top-down walk reversed): the walk leaves out live writes' entries.
    for folder, dirs, names in reversed(list(_walk_entries(root))):
        for name in names:
            (Path(folder) / name).unlink(missing_ok=True)
        for name in dirs:
            with contextlib.suppress(OSError):  # not empty: it holds a live write
                (Path(folder) / name).rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()
    return freed


# ---- temporary entries -------------------------------------------------------------------------------
# Every write goes to a dot-named temporary entry beside its final name (``ArrayCache.writing``, ``io.
# atomic_path``, a built-in set's download), and nothing else in the cache is dot-named. A run killed
# mid-write leaves its temporary entry behind: it is removed once it is known to be dead.

WRITER_FILE = "writer.json"
# A temporary entry whose writer cannot be checked (another host, no /proc, no writer.json) is removed
# once it is this old: far longer than decoding any dataset into the cache takes.
STALE_AFTER_S = 2 * 24 * 3600


def remove_stale_temps(root: Path, recursive: bool = True) -> None:
    """Remove the temporary entries under ``root`` (only those directly in it unless ``recursive``)
    that no live process is writing."""
    now = time.time()
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder) / name
            if not name.startswith(".") or not _is_stale(path, now):
                continue
            if name in dirs:
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if not recursive:
            break
        dirs[:] = [d for d in dirs if not d.startswith(".")]


def _walk_entries(root: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` of ``root`` without the temporary entries."""
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        yield folder, dirs, [n for n in names if not n.startswith(".")]


def _this_writer() -> dict:
    return {"pid": os.getpid(), "started": _process_start(os.getpid()), "host": socket.gethostname(),
            "time": time.time()}


def _is_stale(path: Path, now: float) -> bool:
    """Whether the temporary entry ``path`` will never be finished: its writer's process has ended, or
    (where that cannot be told) it is older than STALE_AFTER_S."""
    try:
        writer = json.loads((path / WRITER_FILE).read_text())
    except (OSError, ValueError):
        writer = {}
    alive = _writer_alive(writer) if isinstance(writer, dict) else None
    if alive is not None:
        return not alive
    try:
        return now - path.stat().st_mtime > STALE_AFTER_S
    except OSError:
        return False  # gone meanwhile


def _writer_alive(writer: dict) -> bool | None:
    """Whether the process that wrote ``writer`` still runs; None when that cannot be told."""
    pid = writer.get("pid")
    if writer.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None  # pid 0 or below would signal a process group, not check a process
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    except (OSError, OverflowError):
        return None
    # The pid exists; it is the writer's only if it started when the writer did (pids are reused).
    started = writer.get("started")
    return None if started is None else _process_start(pid) == started


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks after boot, field 22 of /proc/<pid>/stat);
    None where there is no /proc or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields from the 3rd on, after "pid (command name)"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # removed meanwhile
