"""A small trained run to serve, and ways to serve it: in-process (TestClient) or on a real socket."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from fastapi.testclient import TestClient

from oculi.deploy.predict import Classifier
from oculi.deploy.serve import create_app
from oculi.deploy.service import ServeSettings, Service
from tests.conftest import on_loopback


@pytest.fixture(scope="session")
def served_run(tiny_data, tiny_run):
    """A CNN (so Grad-CAM works) trained for an epoch on red, green and blue images: (run folder, data).
    Read only: a test that exports into it takes a copy."""
    data = tiny_data(per_class=12)
    return tiny_run(data, model="simple-cnn", epochs=1).run_dir, data


def make_service(run_dir, prepare=None, **settings) -> Service:
    """A service over the run, CPU, two decoding workers unless told otherwise."""
    settings = ServeSettings(**{"workers": 2, **settings}).checked()
    extra = {} if prepare is None else {"prepare": prepare}
    return Service(Classifier.load(run_dir, device="cpu"), settings, **extra)


def wait_ready(service: Service, timeout: float = 30) -> None:
    assert service.ready.wait(timeout), service.failure or "not ready in time"


@contextmanager
def serving(service: Service, raise_server_exceptions: bool = True):
    """A TestClient over the service's app, once the model is warmed up; the service stopped after."""
    with TestClient(create_app(service), raise_server_exceptions=raise_server_exceptions) as client:
        wait_ready(service)
        yield client


@contextmanager
def live_server(service: Service):
    """The app on a real socket (127.0.0.1, a free port) in a thread of this process: yields its URL."""
    with on_loopback(create_app(service), ready=service.ready.is_set) as url:  # the model warmed up too
        yield url
