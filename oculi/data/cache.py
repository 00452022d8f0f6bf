"""An on-disk cache of computed tensors (backbone features), keyed by everything they depend on.

A key is a hash of the exact inputs: the prepared uint8 pixels of every image (so a changed, added or
removed file, or another preprocessing, gives another key), plus a description of the computation
(backbone, weights, view). A stale entry can therefore never be read back; it is only wasted disk,
which ``oculi cache clear`` frees. Entries are safetensors files, written atomically.

The folder is ``$OCULI_CACHE_DIR``, else ``$XDG_CACHE_HOME/oculi``, else ``~/.cache/oculi``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_path


def cache_root() -> Path:
    if os.environ.get("OCULI_CACHE_DIR"):
        return Path(os.environ["OCULI_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "oculi"


def tensor_digest(tensor: torch.Tensor) -> str:
    """BLAKE2 of a tensor's bytes, shape and dtype (about 1 GB/s on one core)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
    digest.update(tensor.contiguous().numpy().tobytes() if tensor.numel() else b"")
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


def cache_size(root: Path | None = None) -> tuple[int, int]:
    """(number of entries, bytes) under the cache folder."""
    files = [p for p in (root or cache_root()).rglob("*.safetensors") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def clear_cache(root: Path | None = None) -> tuple[int, int]:
    """Delete every cache entry; returns what was freed as (entries, bytes)."""
    root = root or cache_root()
    freed = cache_size(root)
    if root.is_dir():
        shutil.rmtree(root)
    return freed
