"""Built-in datasets, on tiny fake IDX / CIFAR files; the network is never touched (urlopen is patched)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from oculi.data import builtin
from oculi.data.builtin import BUILTIN_DATASETS, CHECKSUMS, default_cache_dir, is_builtin, load_builtin
from oculi.errors import OculiError

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# ---- fake files ----------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX ubyte file: magic, big-endian dims, then the data."""
    dims = np.array(array.shape, dtype=">u4").tobytes()
    return gzip.compress(magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes())


def write_idx_set(folder: Path, n_train=5, n_test=3, seed=0) -> dict[str, np.ndarray]:
    """A tiny mnist-shaped set in ``folder``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, key, magic in zip(IDX_FILES, ("train_x", "train_y", "test_x", "test_y"), (2051, 2049, 2051, 2049)):
        (folder / name).write_bytes(idx_bytes(arrays[key], magic))
    return arrays


def cifar_archive_bytes(per_batch=2, seed=0, skip=()) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A cifar-10-binary.tar.gz with ``per_batch`` records in each batch; returns (bytes, images, labels)."""
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    images = rng.integers(0, 256, (6 * per_batch, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 6 * per_batch, dtype=np.uint8)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        add_member(tar, "cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n")
        for b, name in enumerate(names):
            if name in skip:
                continue
            rows = slice(b * per_batch, (b + 1) * per_batch)
            records = np.concatenate([labels[rows, None], images[rows].reshape(per_batch, -1)], axis=1)
            add_member(tar, f"cifar-10-batches-bin/{name}", records.tobytes())
    return buffer.getvalue(), images, labels


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable body with headers, usable as a context manager."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    """Patch urlopen to serve ``files`` by URL (anything else is a network error); returns the URLs asked for."""
    asked = []

    def urlopen(url, timeout=None):
        asked.append(url)
        if url not in files:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return FakeResponse(files[url])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("OCULI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- names and digits -----------------------------------------------------------------------------------

def test_names():
    assert BUILTIN_DATASETS == ("digits", "cifar10", "mnist", "fashion-mnist")
    assert is_builtin("mnist") and not is_builtin("imagenet")
    with pytest.raises(OculiError, match="unknown built-in dataset 'imagenet'"):
        load_builtin("imagenet")


def test_downloads_share_the_one_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("OCULI_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("OCULI_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "oculi"


def test_digits():
    ds = load_builtin("digits", download=False)
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == np.uint8
    assert ds.images.min() == 0 and ds.images.max() == 255
    assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == set(range(10))
    assert ds.classes == [str(d) for d in range(10)]
    assert (ds.splits == "train").all() and len(ds.splits) == 1797


def test_digits_images_are_named_after_their_split_and_older_manifests_still_resolve(tmp_path):
    from oculi.data.sources import open_source
    from oculi.data.split import Record, write_manifest
    source = open_source("digits", seed=3)
    assert all(r.path == f"{r.split}/{row}" for row, r in enumerate(source.records))  # test/17, not train/17
    assert {r.split for r in source.records} == {"train", "val", "test"}
    # Runs before this named every digit train/<row>, the ones they tested on included.
    older = tmp_path / "split.csv"
    write_manifest(older, [Record(f"train/{row}", r.label, r.split) for row, r in enumerate(source.records)],
                   source.classes)
    again = open_source("digits", seed=99, split_manifest=str(older))
    assert not again.warnings
    assert [(r.path, r.label, r.split) for r in again.records] == [(r.path, r.label, r.split) for r in source.records]
    test = next(r for r in again.records if r.split == "test")
    assert (again.read(test).numpy() == source.arrays[int(test.path.split("/")[1])]).all()


# ---- IDX sets from data_dir -----------------------------------------------------------------------------

def test_mnist_from_data_dir_round_trips(tmp_path, monkeypatch):
    serve(monkeypatch, {})  # any network use would fail
    arrays = write_idx_set(tmp_path / "raw")
    ds = load_builtin("mnist", data_dir=tmp_path / "raw")
    assert ds.images.shape == (8, 1, 28, 28) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[:5, 0], arrays["train_x"]) and np.array_equal(ds.images[5:, 0], arrays["test_x"])
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == arrays["train_y"].tolist() + arrays["test_y"].tolist()
    assert ds.splits.tolist() == ["train"] * 5 + ["test"] * 3
    assert ds.classes == [str(d) for d in range(10)] and ds.images.flags.writeable


def test_fashion_mnist_class_names_and_per_set_subfolder(tmp_path):
    write_idx_set(tmp_path / "raw" / "fashion-mnist", n_train=4, n_test=2)
    ds = load_builtin("fashion-mnist", data_dir=str(tmp_path / "raw"))
    assert ds.classes[0] == "T-shirt/top" and ds.classes[-1] == "Ankle boot" and len(ds.classes) == 10
    assert len(ds.labels) == 6


def test_data_dir_holding_the_other_sets_file_is_refused(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "raw")
    fake_md5 = hashlib.md5((tmp_path / "raw" / IDX_FILES[0]).read_bytes()).hexdigest()
    monkeypatch.setitem(CHECKSUMS, "mnist", {**CHECKSUMS["mnist"], IDX_FILES[0]: fake_md5})
    with pytest.raises(OculiError, match="is the mnist file, not fashion-mnist"):
        load_builtin("fashion-mnist", data_dir=tmp_path / "raw")


def test_missing_file_in_data_dir_names_it_and_the_url(tmp_path):
    write_idx_set(tmp_path / "raw")
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(OculiError) as err:
        load_builtin("mnist", data_dir=tmp_path / "raw")
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz" in str(err.value)


def test_corrupt_idx_magic_names_the_file(tmp_path):
    write_idx_set(tmp_path / "raw")
    bad = tmp_path / "raw" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(idx_bytes(np.zeros((5, 28, 28)), 2049))  # a labels magic on an images file
    with pytest.raises(OculiError, match=r"train-images-idx3-ubyte\.gz: not an IDX file .*magic number 2049"):
        load_builtin("mnist", data_dir=tmp_path / "raw")


@pytest.mark.parametrize("damage, message", [
    (lambda raw: gzip.compress(gzip.decompress(raw)[:-10]), "expected"),          # truncated data
    (lambda raw: b"not gzip at all", "not a readable gzip file"),                 # not gzip
    (lambda raw: idx_bytes(np.zeros((5, 20, 20)), 2051), "items are 20x20, expected 28x28"),
])
def test_damaged_idx_images_are_reported(tmp_path, damage, message):
    write_idx_set(tmp_path / "raw")
    path = tmp_path / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(OculiError, match=message) as err:
        load_builtin("mnist", data_dir=tmp_path / "raw")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_label_count_and_range_are_checked(tmp_path):
    write_idx_set(tmp_path / "raw")
    labels = tmp_path / "raw" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(idx_bytes(np.zeros(4), 2049))
    with pytest.raises(OculiError, match="4 labels for the 5 images"):
        load_builtin("mnist", data_dir=tmp_path / "raw")
    labels.write_bytes(idx_bytes(np.array([0, 1, 2, 3, 10]), 2049))
    with pytest.raises(OculiError, match="label 10 is out of range"):
        load_builtin("mnist", data_dir=tmp_path / "raw")


# ---- CIFAR-10 binary ------------------------------------------------------------------------------------

def test_cifar_from_data_dir_round_trips(tmp_path):
    data, images, labels = cifar_archive_bytes(per_batch=2)
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(data)
    ds = load_builtin("cifar10", data_dir=tmp_path)
    assert ds.images.shape == (12, 3, 32, 32) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images, images) and ds.labels.tolist() == labels.tolist()
    assert ds.splits.tolist() == ["train"] * 10 + ["test"] * 2
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"


def test_cifar_archive_missing_a_batch_is_reported(tmp_path):
    data, _, _ = cifar_archive_bytes(skip=("test_batch.bin",))
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(data)
    with pytest.raises(OculiError, match="missing cifar-10-batches-bin/test_batch.bin"):
        load_builtin("cifar10", data_dir=tmp_path)


def test_cifar_python_version_is_not_accepted(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"pickles")
    with pytest.raises(OculiError, match="no cifar-10-binary.tar.gz .*binary version"):
        load_builtin("cifar10", data_dir=tmp_path)


# ---- downloads ------------------------------------------------------------------------------------------

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def test_download_verifies_md5_caches_and_reports_progress(cache, monkeypatch):
    data, images, _ = cifar_archive_bytes()
    monkeypatch.setitem(CHECKSUMS, "cifar10", {"cifar-10-binary.tar.gz": hashlib.md5(data).hexdigest()})
    monkeypatch.setattr(builtin, "DOWNLOAD_CHUNK", 1000)
    serve(monkeypatch, {CIFAR_URL: data})
    calls = []
    ds = load_builtin("cifar10", progress=lambda done, total: calls.append((done, total)))
    assert np.array_equal(ds.images, images)
    folder = cache / "datasets" / "cifar10"
    assert [p.name for p in folder.iterdir()] == ["cifar-10-binary.tar.gz"]  # no temp file left behind
    assert calls[-1] == (len(data), len(data)) and len(calls) > 1
    asked = serve(monkeypatch, {})  # the cached copy is used: no second download
    assert np.array_equal(load_builtin("cifar10", download=False).images, images) and asked == []


def test_md5_mismatch_is_refused_and_nothing_is_kept(cache, monkeypatch):
    data, _, _ = cifar_archive_bytes()
    serve(monkeypatch, {CIFAR_URL: data})  # the real table's MD5 cannot match the fake archive
    with pytest.raises(OculiError) as err:
        load_builtin("cifar10")
    message = str(err.value)
    assert f"expected {CHECKSUMS['cifar10']['cifar-10-binary.tar.gz']}" in message and "MD5" in message
    assert CIFAR_URL in message and "\n" not in message
    assert list((cache / "datasets" / "cifar10").iterdir()) == []


def test_no_network_is_one_line_naming_file_url_and_data_dir(cache, monkeypatch):
    serve(monkeypatch, {})
    with pytest.raises(OculiError) as err:
        load_builtin("fashion-mnist")
    message = str(err.value)
    assert "\n" not in message and "train-images-idx3-ubyte.gz" in message and "--data-dir" in message
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz" in message
    assert "name resolution" in message


def test_mnist_falls_back_to_the_next_mirror(cache, monkeypatch):
    write_idx_set(cache.parent / "served")
    served = {name: (cache.parent / "served" / name).read_bytes() for name in IDX_FILES}
    monkeypatch.setitem(CHECKSUMS, "mnist", {name: hashlib.md5(b).hexdigest() for name, b in served.items()})
    asked = serve(monkeypatch, {"http://yann.lecun.com/exdb/mnist/" + name: b for name, b in served.items()})
    ds = load_builtin("mnist")
    assert len(ds.labels) == 8
    assert asked[:2] == ["https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                         "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz"]


def test_download_off_names_the_file_and_never_connects(cache, monkeypatch):
    asked = serve(monkeypatch, {})
    with pytest.raises(OculiError, match=r"cifar-10-binary\.tar\.gz .*downloading is off.*--data-dir"):
        load_builtin("cifar10", download=False)
    assert asked == []
