"""Built-in datasets by name: digits (bundled with scikit-learn), mnist, fashion-mnist and cifar10.

Files are looked for in ``data_dir`` when given (used as-is, never downloaded), else in
``<cache>/datasets/<name>/``, else downloaded there. Integrity: a file oculi downloads itself must match
its published MD5 before it is kept; a file the user provides in ``data_dir`` is not MD5-checked (mirrors
and re-packs differ) but is validated structurally while parsing (IDX magic numbers and dimensions,
CIFAR record sizes, label ranges). Nothing is ever unpickled or extracted to disk.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import OculiError
from .cache import cache_root

BUILTIN_DATASETS = ("digits", "cifar10", "mnist", "fashion-mnist")

CLASSES = {
    "digits": [str(d) for d in range(10)],
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}

MIRRORED_IS_ANOTHER_CLASS = {"digits", "mnist"}

MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

# The files each downloadable set needs, with their published MD5s. Module-level so tests can swap them.
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
}

IDX_IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-bin/"
CIFAR_MEMBERS = {**{f"data_batch_{i}.bin": "train" for i in range(1, 6)}, "test_batch.bin": "test"}
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + CHW pixels
DOWNLOAD_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 60

Progress = Callable[[int, "int | None"], None]


@dataclass
class ArrayDataset:
    """A decoded built-in set. ``splits`` holds the official split ("train"/"test") of each image."""

    name: str
    classes: list[str]
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray  # int64 [N]
    splits: np.ndarray  # str [N]

    @property
    def flips_keep_class(self) -> bool:
        """Digits mirrored are other glyphs (or none); clothes and CIFAR's objects stay what they are."""
        return self.name not in MIRRORED_IS_ANOTHER_CLASS


def is_builtin(name: str) -> bool:
    return name in BUILTIN_DATASETS


def default_cache_dir() -> Path:
    """The one oculi cache folder (``oculi.data.cache.cache_root``: $OCULI_CACHE_DIR, else
    $XDG_CACHE_HOME/oculi, else ~/.cache/oculi); downloads go to its ``datasets/``."""
    return cache_root()


def load_builtin(name: str, data_dir: str | Path | None = None, download: bool = True,
                 progress: Progress | None = None) -> ArrayDataset:
    """Load a built-in set, downloading missing files to the cache unless ``data_dir`` or ``download=False``.

    ``progress(done_bytes, total_bytes)`` is called while downloading; total is None when unknown.
    """
    if not is_builtin(name):
        raise OculiError(f"unknown built-in dataset '{name}' (choose from {', '.join(BUILTIN_DATASETS)})")
    if name == "digits":
        return _load_digits()
    paths = {f: _locate(name, f, data_dir, download, progress) for f in CHECKSUMS[name]}
    if name == "cifar10":
        return _load_cifar(paths[CIFAR_ARCHIVE])
    return _load_idx_set(name, paths)


# ---- digits ------------------------------------------------------------------------------------------

def _load_digits() -> ArrayDataset:
    """scikit-learn's 8x8 digits, 0..16 scaled to 0..255; no official split, so all are "train"."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    bunch = load_digits()
    images = np.round(bunch.images * 255 / 16).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    return ArrayDataset("digits", list(CLASSES["digits"]), images, labels, np.full(len(labels), "train"))


# ---- finding and downloading files --------------------------------------------------------------------

def _locate(name: str, filename: str, data_dir, download: bool, progress: Progress | None) -> Path:
    """The local path of one file: from data_dir, the cache, or a fresh download into the cache."""
    urls = [base + filename for base in MIRRORS[name]]
    if data_dir is not None:
        return _from_data_dir(name, filename, Path(data_dir).expanduser(), urls[0])
    path = default_cache_dir() / "datasets" / name / filename
    if path.is_file():  # only ever renamed into place after its MD5 matched
        return path
    if not download:
        raise OculiError(f"{name}: {filename} is not in {path.parent} and downloading is off; get it from "
                         f"{urls[0]} and pass --data-dir <folder holding it>")
    _download(urls, path, CHECKSUMS[name][filename], progress)
    return path


def _from_data_dir(name: str, filename: str, data_dir: Path, url: str) -> Path:
    """data_dir/<name>/<file> (mnist and fashion-mnist share file names) or data_dir/<file>."""
    for path in (data_dir / name / filename, data_dir / filename):
        if path.is_file():
            _reject_other_dataset(name, path)
            return path
    hint = " (the binary version: oculi never reads the pickled python one)" if name == "cifar10" else ""
    raise OculiError(f"--data-dir {data_dir} has no {filename}{hint}; download it from {url} into that folder")


def _reject_other_dataset(name: str, path: Path) -> None:
    """mnist and fashion-mnist files have identical names and shapes: tell them apart by their known MD5."""
    others = [other for other, files in CHECKSUMS.items() if other != name and path.name in files]
    digest = _md5_of(path) if others else None  # hash only where a mix-up is possible
    for other in others:
        if CHECKSUMS[other][path.name] == digest:
            raise OculiError(f"{path} is the {other} file, not {name}; keep each set in its own folder "
                             f"(--data-dir <dir> with <dir>/{name}/{path.name})")


def _md5_of(path: Path) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(DOWNLOAD_CHUNK):
            md5.update(chunk)
    return md5.hexdigest()


class _DownloadFailed(Exception):
    """One mirror failed; the caller tries the next and reports all of them."""


def _download(urls: list[str], dest: Path, md5: str, progress: Progress | None) -> None:
    """Fetch ``dest`` from the first mirror that serves it with the right MD5."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OculiError(f"cannot create {dest.parent} ({e.strerror}); set OCULI_CACHE_DIR or pass --data-dir") from e
    failures = []
    for url in urls:
        try:
            _fetch(url, dest, md5, progress)
            return
        except _DownloadFailed as e:
            failures.append(f"{url} ({e})")
    raise OculiError(f"cannot download {dest.name}: {'; '.join(failures)}; download it yourself and "
                     f"pass --data-dir <folder holding {dest.name}>")


def _fetch(url: str, dest: Path, md5: str, progress: Progress | None) -> None:
    """Stream ``url`` into a temp file beside ``dest`` and rename it into place only once its MD5 matches,
    so an interrupted or corrupt download never looks like a cached file."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            digest = _copy(response, out, progress)
        if digest != md5:
            raise _DownloadFailed(f"MD5 {digest}, expected {md5}: corrupt or changed download")
        os.replace(tmp, dest)
    except (OSError, HTTPException) as e:  # URLError, HTTPError, timeouts and resets are all OSErrors
        raise _DownloadFailed(_reason(e)) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _copy(response, out, progress: Progress | None) -> str:
    """Copy the response body to ``out``; returns its MD5."""
    total = _content_length(response)
    md5 = hashlib.md5(usedforsecurity=False)
    done = 0
    while chunk := response.read(DOWNLOAD_CHUNK):
        out.write(chunk)
        md5.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return md5.hexdigest()


def _content_length(response) -> int | None:
    try:
        return int(response.headers.get("Content-Length"))
    except (TypeError, ValueError, AttributeError):
        return None


def _reason(error: Exception) -> str:
    """A short one-line reason: URLError wraps the socket error in ``.reason``."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split()) or type(error).__name__


# ---- IDX (mnist, fashion-mnist) ----------------------------------------------------------------------

def _load_idx_set(name: str, paths: dict[str, Path]) -> ArrayDataset:
    """Train then test images of an IDX set, as [N, 1, 28, 28]."""
    parts = [_read_idx_pair(paths[f"{prefix}-images-idx3-ubyte.gz"], paths[f"{prefix}-labels-idx1-ubyte.gz"],
                            len(CLASSES[name])) for prefix in ("train", "t10k")]
    images = np.concatenate([images for images, _ in parts])[:, None]
    labels = np.concatenate([labels for _, labels in parts]).astype(np.int64)
    splits = np.array(["train"] * len(parts[0][1]) + ["test"] * len(parts[1][1]))
    return ArrayDataset(name, list(CLASSES[name]), images, labels, splits)


def _read_idx_pair(images_path: Path, labels_path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(images_path, IDX_IMAGES_MAGIC, (28, 28))
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise OculiError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path.name}")
    _check_labels(labels, n_classes, labels_path)
    return images, labels


def _read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """An IDX ubyte array; checks the magic number, the per-item shape and the data length."""
    raw = _gunzip(path)
    ndim = 1 + len(item_shape)
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else "none"
        raise OculiError(f"{path}: not an IDX file of this kind (magic number {found}, expected {magic})")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if dims[1:] != item_shape:
        raise OculiError(f"{path}: items are {'x'.join(map(str, dims[1:]))}, expected {'x'.join(map(str, item_shape))}")
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise OculiError(f"{path}: {len(raw)} bytes after decompression, expected {expected} (truncated or padded)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise OculiError(f"{path}: not a readable gzip file ({_reason(e)})") from e


def _check_labels(labels: np.ndarray, n_classes: int, where) -> None:
    if len(labels) and int(labels.max()) >= n_classes:
        raise OculiError(f"{where}: label {int(labels.max())} is out of range (expected 0..{n_classes - 1})")


# ---- CIFAR-10 binary -----------------------------------------------------------------------------------

def _load_cifar(archive: Path) -> ArrayDataset:
    """The five training batches then the test batch, read straight from the tar.gz."""
    members = _read_cifar_members(archive)
    parts = [_parse_cifar_batch(members[m], f"{archive}:{m}") for m in CIFAR_MEMBERS]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts]).astype(np.int64)
    splits = np.concatenate([np.full(len(batch_labels), split)
                             for (_, batch_labels), split in zip(parts, CIFAR_MEMBERS.values())])
    return ArrayDataset("cifar10", list(CLASSES["cifar10"]), images, labels, splits)


def _read_cifar_members(archive: Path) -> dict[str, bytes]:
    """The bytes of the known batch files only, in one pass over the stream. Other members (and links or
    folders wearing a known name) are ignored: nothing is extracted to disk, so no path can escape."""
    wanted = {CIFAR_FOLDER + m: m for m in CIFAR_MEMBERS}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    found[wanted[member.name]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise OculiError(f"{archive}: not a readable {CIFAR_ARCHIVE} ({_reason(e)})") from e
    missing = [CIFAR_FOLDER + m for m in CIFAR_MEMBERS if m not in found]
    if missing:
        raise OculiError(f"{archive}: missing {', '.join(missing)} (is it the binary version, {CIFAR_ARCHIVE}?)")
    return found


def _parse_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Records of one label byte then 3x32x32 pixels."""
    if not data or len(data) % CIFAR_RECORD:
        raise OculiError(f"{where}: {len(data)} bytes is not a whole number of {CIFAR_RECORD}-byte records")
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0]
    _check_labels(labels, len(CLASSES["cifar10"]), where)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels
