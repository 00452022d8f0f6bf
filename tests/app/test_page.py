"""The page of `oculi app` in headless Chromium (Debian's, as the report's and serve's browser tests launch it),
against the app on 127.0.0.1: a project made from a folder, its check, a short training whose epochs arrive
live, the results, an uploaded image and the (fake) webcam predicted; at a laptop's width, then every screen
at a phone's. No console errors, nothing off the screen. Screenshots go under the test's tmp folder, and
under $OCULI_SCREENSHOTS when set, to look at."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.request import urlopen

import pytest

from tests.app.conftest import live_app, make_root, wait_until
from tests.report.test_browser import CHROMIUM, CHROMIUM_FLAGS, OVERFLOW_JS, WIDTHS, playwright

pytestmark = pytest.mark.slow
# Chromium's stand-in camera (a moving test pattern), allowed without asking.
CAMERA_FLAGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
SCREENS = ("data", "train", "results", "try", "export")
# The report's test of broken images, on the images of the screen shown (the others have no size).
BROKEN_IMAGES_JS = """() => [...document.images].filter(i => i.offsetParent !== null)
  .filter(i => !i.complete || i.naturalWidth === 0 || i.getBoundingClientRect().width === 0)
  .map(i => i.alt)"""


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("needs Chromium: apt-get install chromium")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS + CAMERA_FLAGS)
        yield chromium
        chromium.close()


def watched_page(browser, width: int, problems: list):
    context = browser.new_context(viewport={"width": width, "height": 844 if width < 500 else 800})
    context.grant_permissions(["camera"])
    page = context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(str(err)))
    return page


def shoot(page, name: str, folder: Path) -> None:
    shot = page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    if os.environ.get("OCULI_SCREENSHOTS"):
        keep = Path(os.environ["OCULI_SCREENSHOTS"])
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"{name}.png").write_bytes(shot)


def fits(page, width: int) -> None:
    assert page.evaluate(OVERFLOW_JS) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def test_the_whole_loop_in_the_browser_at_a_laptops_and_a_phones_width(browser, tmp_path):
    root = make_root(tmp_path / "root")
    red = root / "colours" / "red" / "img_00.png"
    shutil.copy(red, root / "colours" / "green" / "copy.png")  # one picture, two labels: a finding to fix
    problems: list = []
    with live_app(root) as url:
        page = watched_page(browser, WIDTHS["laptop"], problems)
        page.goto(url)
        playwright.expect(page.locator("#new-project")).to_be_visible()
        page.fill("#new-name", "colours")
        page.select_option("#new-folder", "colours")
        page.click("#new-project-form button[type=submit]")
        playwright.expect(page.locator("#classes .class-card")).to_have_count(3)
        page.click("#check-button")

        page.click("#tabs [data-screen=train]")
        page.fill("#knobs [name=model]", "fast-cnn")
        page.fill("#knobs [name=epochs]", "2")
        page.fill("#knobs [name=image_size]", "16")
        playwright.expect(page.locator("#plan")).to_contain_text("from scratch, 2 epochs")
        page.click("#start-button")  # queued behind the check
        wait_until(lambda: page.locator("#epoch-rows tr").count() >= 1, timeout=120)  # while the job runs
        assert page.locator("#progress-text").inner_text().startswith("training: epoch ")
        shoot(page, "train-laptop", tmp_path)
        playwright.expect(page.locator("#train-status")).to_contain_text("done", timeout=120_000)
        assert page.locator("#epoch-rows tr").count() == 2

        page.click("#tabs [data-screen=data]")
        playwright.expect(page.locator("#check-summary")).to_contain_text("1 exact", timeout=30_000)
        shoot(page, "data-laptop", tmp_path)
        copy = page.locator(".finding", has_text="exact copy")
        copy.locator("button").click()  # drop the copy: moved out of the data, logged
        playwright.expect(page.locator("#changes li")).to_contain_text("dropped")
        pair = (red, root / "colours" / "green" / "copy.png")
        assert sum(p.is_file() for p in pair) == 1  # one of the pair is in the project's removed/
        page.locator("#changes button", has_text="Undo").click()
        playwright.expect(page.locator("#changes li")).to_contain_text("undone")
        assert (root / "colours" / "green" / "copy.png").is_file() and red.is_file()

        page.click("#tabs [data-screen=results]")
        playwright.expect(page.locator("#confusion td")).to_have_count(9)
        page.locator("#confusion td").first.click()
        playwright.expect(page.locator("#mistakes-title")).to_contain_text("predicted as")
        playwright.expect(page.frame_locator("#report").locator("h1")).to_contain_text("run-1")
        with urlopen(f"{url}/api/projects/colours/runs/run-1/files/report") as report:
            assert "sandbox" in report.headers["Content-Security-Policy"]
        shoot(page, "results-laptop", tmp_path)

        page.click("#tabs [data-screen=try]")
        page.set_input_files("#picker", str(red))
        playwright.expect(page.locator("#bars li")).to_have_count(3)
        answers = int(page.locator("#answer").get_attribute("data-answers"))
        page.click("#camera-button")
        wait_until(lambda: int(page.locator("#answer").get_attribute("data-answers")) > answers + 1, timeout=30)
        assert page.locator("#video").is_visible()
        shoot(page, "try-laptop", tmp_path)
        page.click("#camera-button")

        page.click("#tabs [data-screen=export]")
        assert page.locator("#bundle-link").get_attribute("href").endswith("/files/bundle")
        fits(page, WIDTHS["laptop"])
        until_images_load(page)

        phone = watched_page(browser, WIDTHS["phone"], problems)
        phone.goto(url)
        playwright.expect(phone.locator("#classes .class-card")).to_have_count(3)
        for screen in SCREENS:
            phone.click(f"#tabs [data-screen={screen}]")
            if screen == "try":
                phone.set_input_files("#picker", str(red))
                playwright.expect(phone.locator("#bars li")).to_have_count(3)
            if screen == "results":
                playwright.expect(phone.frame_locator("#report").locator("h1")).to_contain_text("run-1")
            if screen == "train":
                playwright.expect(phone.locator("#epoch-rows tr")).to_have_count(2)
            until_images_load(phone)
            fits(phone, WIDTHS["phone"])
            shoot(phone, f"{screen}-phone", tmp_path)
    assert problems == []


def until_images_load(page) -> None:
    wait_until(lambda: page.evaluate(BROKEN_IMAGES_JS) == [], timeout=15, every=0.1)
