"""An app root with a small class folder, the app over it (in-process, or on a real socket for a browser),
and waiting for its jobs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from oculi.app.server import create_app
from tests.conftest import make_class_folder, on_loopback

# The smallest training the app can start: oculi's small-image CNN, 16 px, one epoch, no ONNX export.
TINY_TRAIN = {"model": "fast-cnn", "epochs": 1, "image_size": "16", "export": "none"}
ENDED = ("done", "failed", "cancelled", "interrupted")


def make_root(root: Path, per_class: int = 6) -> Path:
    """root/colours/<red|green|blue>/img_XX.png, 16 px."""
    make_class_folder(root / "colours", per_class=per_class, size=(16, 16))
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return make_root(tmp_path / "root")


@contextmanager
def app_client(root: Path):
    with TestClient(create_app(root)) as client:
        yield client


def wait_job(client, job_id: int, states=ENDED, timeout: float = 120) -> dict:
    """The job once its state is one of ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}: {job.get('log', '')[-2000:]}"
        time.sleep(0.2)


def wait_until(condition, timeout: float = 120, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)
    return found


@contextmanager
def live_app(root: Path):
    """The app on a real socket (127.0.0.1, a free port) in a thread of this process: yields its URL."""
    with on_loopback(create_app(root)) as url:
        yield url
