"""The served atlas in a real headless Chromium: grid, search, unit page, loaded images."""

import shutil
import threading
from pathlib import Path

import pytest
from tests.conftest import tiny_cnn_model, write_images
from tests.test_atlas import TARGETS

from vital.atlas import build_atlas, make_server
from vital.references import from_folder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "benchmarks" / "out"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed (apt-get install chromium); browser test skipped",
)


def test_atlas_in_chromium(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    for i in range(5):
        write_images(tmp_path / "data" / str(i), 2, seed=i)
    build_atlas(
        tiny_cnn_model(),
        TARGETS,
        lambda t: from_folder(tmp_path / "data" / str(t.index), count=3),
        tmp_path / "atlas",
        {"steps": 4, "jitter": 2},
        progress=False,
    )
    server = make_server(tmp_path / "atlas", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=flags)
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(url)
            cards = page.locator("#grid .card")
            assert cards.count() == 5
            assert page.locator("#grid .card:visible").count() == 5
            assert page.inner_text("#count") == "5 of 5 units"
            page.screenshot(path=str(SCREENSHOTS / "atlas-index.png"))

            page.locator("#search").press_sequentially("class 3")
            assert page.locator("#grid .card:visible").count() == 1
            assert page.inner_text("#count") == "1 of 5 units"
            page.locator("#search").fill("")
            page.select_option("#layer", "output")
            assert page.locator("#grid .card:visible").count() == 5

            page.locator("#search").fill("class 3")
            page.locator("#grid .card:visible").first.click()
            page.wait_for_load_state("load")
            assert page.url.endswith(".html") and "/units/" in page.url
            assert page.inner_text("h1") == "class/3"
            widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
            assert len(widths) >= 2 and all(width > 0 for width in widths)
            assert page.locator("svg.curve polyline").count() == 1
            page.screenshot(path=str(SCREENSHOTS / "atlas-unit.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
