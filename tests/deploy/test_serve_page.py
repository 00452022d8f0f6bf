"""The web page of `oculi serve` in headless Chromium (Debian's, as the report's browser tests launch it), at a
phone's and a laptop's width, against the app on 127.0.0.1: two images in, their bars, class names and
Grad-CAM overlays out, nothing off the screen, no console errors. Screenshots go under the test's tmp folder,
and under $OCULI_SCREENSHOTS when set, to look at."""

import os
import time
from pathlib import Path

import pytest

from tests.deploy.conftest import live_server, make_service
from tests.report.test_browser import BROKEN_IMAGES_JS, CHROMIUM, CHROMIUM_FLAGS, OVERFLOW_JS, WIDTHS, playwright


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
