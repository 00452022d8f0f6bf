"""report.html in a real browser: headless Chromium (Debian's package) at a laptop's and a phone's width.

Each section is photographed (kept under the test's tmp folder, and under $OCULI_SCREENSHOTS when set, to
look at); every image must have decoded and nothing may stick out past the screen's right edge, except
inside the tables' own sideways-scrolling boxes.
"""

import os
import shutil
from pathlib import Path

import pytest

from oculi.rundir import RunDir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install -e .[dev])")
# slow: a trained, reported run and a browser's start, over 5 s before the first page.
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium (.ci/run does)"),
              pytest.mark.slow]

# Chromium as root in a container, with no network: without these it tries (and fails) to reach Google.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]
WIDTHS = {"laptop": 1280, "phone": 390}

# Elements sticking out past the viewport, ignoring what sits in a box that scrolls on its own.
OVERFLOW_JS = """() => [...document.querySelectorAll('body *')]
  .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > window.innerWidth + 1)
  .map(e => e.tagName + (e.id ? '#' + e.id : '') + ' ' + (e.textContent || '').slice(0, 40))"""
BROKEN_IMAGES_JS = """() => [...document.images]
  .filter(i => !i.complete || i.naturalWidth === 0 || i.getBoundingClientRect().width === 0)
  .map(i => i.alt)"""


@pytest.fixture(scope="module")
def report(tiny_data, tiny_run) -> Path:
    """The report of a small run with long class names (which must wrap, not widen the page)."""
    classes = ("red", "green", "a_class_name_long_enough_to_overflow_a_phone_screen_if_nothing_wraps_it")
    run = tiny_run(tiny_data(per_class=12, classes=classes), epochs=2, report=True)
    return RunDir(run.run_dir).report


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.mark.parametrize("screen", WIDTHS)
def test_report_renders_every_section_within_the_screen(report, browser, screen, tmp_path):
    page = browser.new_page(viewport={"width": WIDTHS[screen], "height": 900})
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    assert page.evaluate(BROKEN_IMAGES_JS) == []
    assert page.evaluate(OVERFLOW_JS) == []
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTHS[screen]
    sections = page.evaluate("[...document.querySelectorAll('section')].map(s => s.id)")
    assert sections == ["data", "check", "augmentation", "model", "training", "metrics", "trust", "predictions",
                        "explain"]
    keep = Path(os.environ["OCULI_SCREENSHOTS"]) if os.environ.get("OCULI_SCREENSHOTS") else None
    for name in ["summary", *sections]:
        shot = page.locator(f"#{name}").screenshot(path=str(tmp_path / f"{screen}-{name}.png"))
        assert len(shot) > 1000  # a real picture, not an empty box
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{screen}-{name}.png").write_bytes(shot)
    page.close()
