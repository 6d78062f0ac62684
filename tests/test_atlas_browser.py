"""The served atlas in a real headless Chromium: overview, sorting, search, unit, explanation,
a class's concept overview and a concept page.

Screenshots (JPEG) go to ``benchmarks/out/``; the real-model ones are in ``benchmarks/figures``
(``benchmarks/explain_mobilenet.py``).
"""

import json
import shutil
import threading
from pathlib import Path

import pytest
from tests.conftest import tiny_cnn_model, write_images

from vital.atlas import build_atlas, make_server
from vital.concepts import add_concepts
from vital.explanation import explain
from vital.references import from_folder
from vital.targets import ClassTarget

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "benchmarks" / "out"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium installed (apt-get install chromium); browser test skipped",
)


def images_loaded(page) -> list[int]:
    return page.evaluate(
        "Array.from(document.images).filter(i => i.loading !== 'lazy').map(i => i.naturalWidth)"
    )


def values(page, selector) -> list:
    return [json.loads(v) for v in page.eval_on_selector_all(
        selector, "nodes => nodes.map(n => n.dataset.value)"
    )]  # fmt: skip


@pytest.fixture
def atlas(tmp_path):
    data = tmp_path / "data"
    write_images(data, 8)
    for i in range(2):
        write_images(tmp_path / "classes" / str(i), 2, seed=i)
    model = tiny_cnn_model()
    folder = tmp_path / "atlas"
    build_atlas(
        model,
        [ClassTarget(i, f"class {i}") for i in range(2)],
        lambda t: from_folder(tmp_path / "classes" / str(t.index), count=2),
        folder,
        {"steps": 3, "jitter": 2},
        progress=False,
    )
    records = [
        explain(
            model,
            data / name,
            layer="stage3",
            top=3,
            data=data,
            out=folder,
            settings={"steps": 3, "jitter": 2},
            reference_count=4,
            top_images=8,
            patch_side=16,
            workers=0,
            progress=False,
        )
        for name in ("img000.png", "img003.png")
    ]
    add_concepts(
        model, 1, tmp_path / "classes" / "1", layer="stage3", count=2, crops=12, examples=3,
        settings={"steps": 3, "jitter": 2}, out=folder, progress=False,
    )  # fmt: skip
    return folder, records


def test_atlas_in_chromium(atlas):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    folder, explanations = atlas
    server = make_server(folder, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = f"http://127.0.0.1:{server.server_address[1]}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    channels = {e.channel for record in explanations for e in record.top}
    units = 2 + len(channels)
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{root}/index.html")
            assert page.locator("#grid .card").count() == units
            assert page.inner_text("#count") == f"{units} of {units} units"
            assert page.locator(".explanation-card").count() == 2
            page.screenshot(path=str(SCREENSHOTS / "atlas-index.jpg"), type="jpeg", quality=70)

            # Sort by activation: the pictures' recorded activations, largest first.
            page.select_option("#layer", "stage3")
            assert page.locator("#grid .card:visible").count() == len(channels)
            page.select_option("#sort", "activation")
            shown = values(page, "#grid .card:visible .activation")
            assert shown == sorted(shown, reverse=True) and len(shown) == len(channels)
            # Sort by relevance in explanations: the units of both explanations first.
            page.select_option("#sort", "relevant")
            counts = page.eval_on_selector_all(
                "#grid .card:visible", "cards => cards.map(c => +c.dataset.relevant)"
            )
            expected = sorted(
                (sum(e.channel == c for r in explanations for e in r.top) for c in channels),
                reverse=True,
            )
            assert counts == expected

            # Search, and the layer overview opened from its address.
            target = explanations[0].top[0].channel
            page.select_option("#layer", "")
            page.locator("#search").fill(f"stage3/{target}")
            matching = [c for c in channels if f"stage3/{c}".startswith(f"stage3/{target}")]
            assert page.locator("#grid .card:visible").count() == len(matching)
            page.locator("#search").fill(f"channel {target} stage3")  # words in any order
            assert page.locator("#grid .card:visible").count() == len(matching)
            page.goto(f"{root}/index.html?layer=output")
            assert page.locator("#grid .card:visible").count() == 2

            # A unit page: images load, its numbers are its record's.
            page.goto(f"{root}/index.html")
            page.locator(f"#grid .card[data-unit='stage3/{target}']").click()
            page.wait_for_load_state("load")
            assert page.inner_text("h1") == f"stage3/{target}"
            widths = images_loaded(page)
            assert len(widths) >= 4 and all(width > 0 for width in widths)
            record_url = page.get_attribute("#record-link", "href")
            record = page.request.get(page.url.rsplit("/", 1)[0] + "/" + record_url).json()
            table = dict(
                zip(
                    page.eval_on_selector_all(".facts th", "n => n.map(x => x.textContent)"),
                    page.eval_on_selector_all(
                        ".facts td", "n => n.map(x => x.firstElementChild?.dataset.value)"
                    ),
                    strict=True,
                )
            )
            assert json.loads(table["activation"]) == record["evaluation"]["activation"]
            assert json.loads(table["seed"]) == record["seed"]
            assert page.locator("svg.curve .x-tick").count() >= 2
            assert page.locator("svg.curve .y-tick").count() >= 2
            assert page.locator(".example-figure").count() == 4
            assert page.locator(".relevant-in li").count() >= 1
            page.screenshot(
                path=str(SCREENSHOTS / "atlas-unit.jpg"), full_page=True, type="jpeg", quality=70
            )

            # An explanation page: images load, every number is the record's.
            explanation = explanations[0]
            page.goto(f"{root}/{explanation.files['page']}")
            widths = images_loaded(page)
            assert len(widths) >= 2 + 3 * 4 and all(width > 0 for width in widths)
            record = page.request.get(f"{root}/{explanation.files['json']}").json()
            assert values(page, ".channel-row .relevance") == [
                e["relevance"] for e in record["top"]
            ]
            assert values(page, ".channel-row .share") == [e["share"] for e in record["top"]]
            shares = page.eval_on_selector_all(
                ".channel-row .share", "n => n.map(x => x.textContent)"
            )
            assert shares == [f"{100 * e['share']:.2f}%" for e in record["top"]]
            assert values(page, ".logit") == [record["explained"]["logit"]]
            assert values(page, ".total") == [record["total"]]
            scores = values(page, ".channel-row:first-child .score, .channel-row .score")
            assert scores[:4] == [x["score"] for x in record["top"][0]["examples"][:4]]
            page.screenshot(
                path=str(SCREENSHOTS / "atlas-explain.jpg"), full_page=True, type="jpeg", quality=70
            )
            # From the explanation to the unit of its first channel.
            page.locator(".channel-row .unit-link").first.click()
            page.wait_for_load_state("load")
            assert page.inner_text("h1") == f"stage3/{record['top'][0]['channel']}"

            # The class's concepts: from the index to the overview, then to a concept's page.
            page.goto(f"{root}/index.html")
            page.locator(".concept-card").first.click()
            page.wait_for_load_state("load")
            widths = images_loaded(page)
            assert len(widths) >= 2 * 4 and all(width > 0 for width in widths)
            record = page.request.get(page.url.rsplit("/", 1)[0] + "/concepts.json").json()
            assert values(page, ".concept-row .share") == [c["share"] for c in record["concepts"]]
            assert values(page, ".explained") == [record["explained_share"]]
            assert page.locator("svg.curve").count() == 2
            page.screenshot(
                path=str(SCREENSHOTS / "atlas-concepts.jpg"), full_page=True, type="jpeg",
                quality=70,
            )  # fmt: skip
            page.locator(".concept-link").first.click()
            page.wait_for_load_state("load")
            top = record["concepts"][0]
            assert page.inner_text("h1") == f"class 1 · concept {top['index']}"
            widths = images_loaded(page)
            assert len(widths) == 2 + len(top["maps"]) + len(top["examples"])
            assert all(width > 0 for width in widths)
            assert values(page, ".activation") == [top["activation"]]
            assert values(page, ".coefficient") == top["example_coefficients"]
            page.screenshot(
                path=str(SCREENSHOTS / "atlas-concept.jpg"), full_page=True, type="jpeg",
                quality=70,
            )  # fmt: skip
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_site_reads_from_disk_without_the_server(atlas):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    folder, explanations = atlas
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto((folder / explanations[1].files["page"]).as_uri())
        widths = images_loaded(page)
        assert len(widths) >= 2 and all(width > 0 for width in widths)
        page.goto((folder / "index.html").as_uri() + "?sort=relevant")
        assert page.locator("#grid .card:visible").count() >= 3
        browser.close()
