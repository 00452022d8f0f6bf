"""Shared fixtures: small image folders made by the tests, and the real data in ../shared when present."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_image(path: Path, rng: np.random.Generator, size=(24, 20), colour=None, fmt=None) -> Path:
    """A small RGB image; ``colour`` biases it so that classes are learnable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 80, size=(size[1], size[0], 3))
    if colour is not None:
        pixels[..., colour] += 150
    Image.fromarray(pixels.astype(np.uint8)).save(path, format=fmt)
    return path


def make_class_folder(root: Path, per_class: int = 12, classes=("red", "green", "blue"), seed: int = 0,
                      size=(24, 20)) -> Path:
    """root/<class>/img_XX.png: one colour channel dominates each class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"img_{i:02d}.png", rng, size=size, colour=c)
    return root


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "colours")


@pytest.fixture(scope="session")
def hymenoptera(tmp_path_factory) -> Path:
    """The real ants/bees photos from ../shared (CI has them; a user's clone may not)."""
    archive = SHARED_DATA / "hymenoptera-256.tar"
    if not archive.is_file():
        pytest.skip(f"needs {archive} (the project's shared data; absent in a plain clone)")
    target = tmp_path_factory.mktemp("hymenoptera")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "hymenoptera_data"


@pytest.fixture(autouse=True)
def work_in_tmp_path(tmp_path, monkeypatch) -> None:
    """Every test runs in its own folder: a run without --out lands in tmp_path/runs, never the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Tests never read or fill the user's ~/.cache/oculi, nor one another's."""
    folder = tmp_path / "oculi-cache"
    monkeypatch.setenv("OCULI_CACHE_DIR", str(folder))
    return folder


def without_timing(rows: list[dict]) -> list[dict]:
    """Metrics rows less what depends on the clock (equal runs differ only there)."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s", "time")} for r in rows]
