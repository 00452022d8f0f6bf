"""`oculi serve` on real sockets (127.0.0.1 only, always stopped): the command as a subprocess, and its web
page driven in Chromium at a phone's and a laptop's width."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import live_server, make_service

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
    port, env = free_port(), {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
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


# ---------------------------------------------------------------- the web page in Chromium

from tests.report.test_browser import BROKEN_IMAGES_JS, CHROMIUM, CHROMIUM_FLAGS, OVERFLOW_JS, WIDTHS  # noqa: E402

playwright = pytest.importorskip("playwright.sync_api")


def until(condition, timeout: float = 10) -> None:
    """Wait for ``condition()`` (the page's policy forbids the eval behind playwright's wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def page_url(served_run):
    with live_server(make_service(served_run[0], workers=1)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("needs Chromium: apt-get install chromium")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.mark.parametrize("screen", WIDTHS)
def test_the_page_classifies_two_images_with_bars_and_grad_cam(page_url, browser, served_run, screen, tmp_path):
    data = served_run[1]
    page = browser.new_page(viewport={"width": WIDTHS[screen], "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(str(err)))
    page.goto(page_url)
    page.wait_for_selector("#classes li")
    assert page.locator("#classes li").all_inner_texts() == ["blue", "green", "red"]
    assert "test accuracy" in page.locator("#metrics").inner_text()

    page.set_input_files("#picker", [str(data / "red" / "img_02.png"), str(data / "blue" / "img_05.png")])
    playwright.expect(page.locator(".card .bars li")).to_have_count(6)
    assert page.locator(".card .file").all_inner_texts() == ["img_02.png", "img_05.png"]
    for card in page.locator(".card").all():
        labels = card.locator(".bars .name").all_inner_texts()
        assert sorted(labels) == ["blue", "green", "red"]
        assert card.locator(".status").inner_text().startswith(labels[0])  # the top bar is the prediction

    page.check("#show-cam")
    playwright.expect(page.locator(".card .cam img")).to_have_count(2)
    until(lambda: page.evaluate(BROKEN_IMAGES_JS) == [])
    assert page.evaluate(OVERFLOW_JS) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTHS[screen]
    shot = page.screenshot(path=str(tmp_path / f"serve-{screen}.png"), full_page=True)
    if os.environ.get("OCULI_SCREENSHOTS"):
        keep = Path(os.environ["OCULI_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"serve-{screen}.png").write_bytes(shot)
    assert problems == []
    page.close()
