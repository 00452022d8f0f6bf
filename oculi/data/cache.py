"""On-disk caches, keyed by everything their contents depend on, so a stale entry is never read back.

- ``images/``: a dataset's decoded, resized uint8 pixels (``ArrayCache``), keyed by every file's path,
  size and modification time and the preprocessing: a changed, added or removed file, or another image
  size, gives another key. Read back memory-mapped, so opening an entry costs no time.
- ``features/``: backbone features (``TensorCache``), keyed by the exact prepared pixels and a
  description of the computation (backbone, weights, view).

An old entry is only wasted disk, which ``oculi cache clear`` frees. Every entry is written atomically.

The folder is ``$OCULI_CACHE_DIR``, else ``$XDG_CACHE_HOME/oculi``, else ``~/.cache/oculi``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
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
        temporary folder, renamed into place in one step when the block ends without error."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f".{key}."))
        try:
            array = np.lib.format.open_memmap(tmp / "array.npy", mode="w+", dtype=np.uint8, shape=shape)
            index: dict = {}
            yield array, index
            array.flush()
            del array
            (tmp / "index.json").write_text(json.dumps(index))
            if (self.folder / key).exists():  # a damaged entry (a sound one is read, not rewritten)
                shutil.rmtree(self.folder / key, ignore_errors=True)
            try:
                os.replace(tmp, self.folder / key)
            except OSError:
                pass  # another process wrote the same entry meanwhile
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def file_identity(root: Path, paths: list[str]) -> str:
    """A key for the files as they are now: each one's path, size and modification time."""
    digest = hashlib.blake2b(str(root.resolve()).encode(), digest_size=20)
    for path in paths:
        try:
            stat = (root / path).stat()
            digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        except OSError:  # gone since the folder was listed: decoding will report it
            digest.update(f"\0{path}\0missing".encode())
    return digest.hexdigest()


def cache_size(root: Path | None = None) -> tuple[int, int]:
    """(number of entries, bytes) under the cache folder."""
    root = root or cache_root()
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".npy")]
    return len(files), sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def clear_cache(root: Path | None = None) -> tuple[int, int]:
    """Delete every cache entry; returns what was freed as (entries, bytes)."""
    root = root or cache_root()
    freed = cache_size(root)
    if root.is_dir():
        shutil.rmtree(root)
    return freed
