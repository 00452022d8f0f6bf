"""Shared fixtures: small image folders made by the tests, tiny trained runs shared by the whole session
(``tiny_data``, ``tiny_run``), and the real data in ../shared when present."""

from __future__ import annotations

import random
from contextlib import contextmanager
import tarfile
import time
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
def tiny_data(tmp_path_factory):
    """``tiny_data(**make_class_folder's arguments)``: the class folder (named ``colours``) made once per
    distinct arguments for the whole session. Shared, so read only: a test that adds, damages or deletes
    images makes its own folder with ``make_class_folder``."""
    made: dict[tuple, Path] = {}

    def get(per_class: int = 12, classes=("red", "green", "blue"), seed: int = 0, size=(24, 20)) -> Path:
        key = (per_class, tuple(classes), seed, tuple(size))
        if key not in made:
            root = tmp_path_factory.mktemp("tiny-data") / "colours"
            made[key] = make_class_folder(root, per_class=per_class, classes=classes, seed=seed, size=size)
        return made[key]
    return get


# What a tiny run leaves out unless a test asks for it: nothing printed, no report.html, nothing cached.
TINY_RUN_DEFAULTS = {"progress": False, "report": False, "cache": False}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(data="digits", name="run", **settings)``: ``oculi.train(data, **settings)`` run once per
    distinct (data, name, settings) for the whole session, its RunResult kept; the folder is
    ``<session tmp>/tiny-runN/<name>`` (``name`` shows in its report's title and its trackers' run name).
    Settings start from ``TINY_RUN_DEFAULTS``. Two modules that ask for the same settings share one run,
    so the folder is read only: a test that writes in it (export, edits of model.json or the metrics)
    works on ``shutil.copytree(run.run_dir, tmp_path / ...)``.

    Training runs in a folder of its own, with a cache of its own (never the user's ~/.cache/oculi,
    whichever test or fixture asks first), and leaves the random state of torch, numpy and random as it
    found it: whether a run was trained now or earlier for another test changes nothing for the caller."""
    runs: dict[tuple, object] = {}
    cache = tmp_path_factory.mktemp("tiny-run-cache")

    def get(data="digits", name: str = "run", **settings):
        import oculi
        import torch

        settings = {**TINY_RUN_DEFAULTS, **settings}
        key = (str(data), name, tuple(sorted((k, repr(v)) for k, v in settings.items())))
        if key not in runs:
            folder = tmp_path_factory.mktemp("tiny-run")
            numpy_state, python_state = np.random.get_state(), random.getstate()
            try:
                with pytest.MonkeyPatch.context() as patch, torch.random.fork_rng(devices=[]):
                    patch.chdir(folder)
                    patch.setenv("OCULI_CACHE_DIR", str(cache))
                    runs[key] = oculi.train(str(data), out=str(folder / name), **settings)
            finally:
                np.random.set_state(numpy_state)
                random.setstate(python_state)
        return runs[key]
    return get


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


@contextmanager
def on_loopback(app, ready=lambda: True, timeout: float = 30):
    """A FastAPI ``app`` served by uvicorn on 127.0.0.1 (a free port) in a thread of this process, once it has
    started and ``ready()``: yields its URL; the server is stopped after."""
    import threading

    import uvicorn

    from oculi.deploy.serve import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not (server.started and ready()):
            assert time.monotonic() < deadline, "the server did not start in time"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
