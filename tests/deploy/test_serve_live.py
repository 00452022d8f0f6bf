"""`oculi serve` for real: the command in a subprocess on 127.0.0.1 (a free port), always stopped."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"oculi serve exited with {process.returncode}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"oculi serve was not ready within {timeout} s")


def test_oculi_serve_answers_then_stops_on_sigint(served_run):
    run, data = served_run
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # this checkout
    process = subprocess.Popen([sys.executable, "-m", "oculi", "serve", str(run), "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)
        image = data / "green" / "img_01.png"
        response = httpx.post(f"{url}/v1/predict", files=[("files", (image.name, image.read_bytes()))], timeout=30)
        assert response.status_code == 200
        assert response.json()["predictions"][0]["label"] in ("red", "green", "blue")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "model 'simple-cnn' ready" in output
    assert "engine: " in output  # said before anything listens, as predict and evaluate say it
