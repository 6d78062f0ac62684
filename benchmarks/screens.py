"""Screenshots of atlas pages for the benchmarks' figures: the atlas served, a headless browser.

Needs Playwright (``pip install playwright``) and a Chromium on ``PATH``; only the benchmarks
that write page figures import it.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vital.atlas import make_server

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@contextmanager
def browsing(atlas: Path, width: int = 1280, height: int = 900) -> Iterator[tuple[object, str]]:
    """A browser page and the address the atlas is served at, both closed on leaving."""
    from playwright.sync_api import sync_playwright

    server = make_server(atlas, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": width, "height": height})
                yield page, f"http://127.0.0.1:{server.server_address[1]}"
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
