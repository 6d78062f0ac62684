"""An atlas of MobileNetV2 channels from the embedded photos, with the local and the Ray engine.

Builds the same atlas twice (local engine, then Ray on this machine), reports units/min for
each, and screenshots the index and one unit page with headless Chromium.

    python benchmarks/atlas_mobilenet.py --channels 24 --steps 40
"""

from __future__ import annotations

import argparse
import platform
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch

from vital.atlas import build_atlas, make_server
from vital.engines import LocalEngine, RayEngine
from vital.grids import to_image
from vital.mining import mine, mined_references
from vital.references import ImageSource, center_crop, export_sample_photos, open_rgb, random_view
from vital.targets import Channel
from vital.zoo import load_model

HERE = Path(__file__).resolve().parent


def augmented_photos(folder: Path, per_photo: int) -> Path:
    """The embedded photos plus seeded random crops and flips of each (a small pool)."""
    originals = export_sample_photos(folder / "originals")
    rng = np.random.default_rng(0)
    for path in originals:
        image = open_rgb(ImageSource.from_path(path))
        for i in range(per_photo):
            to_image(random_view(image, 256, rng)).save(folder / f"{path.stem}-{i}.jpg")
    return folder


def most_active_channels(model, layer: str, data: Path, count: int) -> list[int]:
    """The channels whose strongest response over the photos is largest (not picked by eye)."""
    from vital.taps import tapped

    images = [open_rgb(ImageSource.from_path(p)) for p in sorted(data.rglob("*.jpg"))]
    batch = torch.stack([center_crop(image, 224) for image in images])
    with tapped(model.module, [layer], stop_early=True) as tap, torch.no_grad():
        peaks = tap(model.preprocessing.normalize(batch))[layer].amax(dim=(0, 2))
    return peaks.argsort(descending=True)[:count].sort().values.tolist()


def screenshots(atlas: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    server = make_server(atlas, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    try:
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=flags)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url)
            page.screenshot(path=str(out / "atlas-index.png"))
            page.locator("#grid .card").first.click()
            page.wait_for_load_state("load")
            page.screenshot(path=str(out / "atlas-unit.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--channels", type=int, default=24)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--work", type=Path, default=HERE / "out" / "atlas")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    data = augmented_photos(args.work / "photos", per_photo=5)
    model = load_model("mobilenet_v2")
    channels = most_active_channels(model, args.layer, data, args.channels)
    started = time.perf_counter()
    mine(
        model,
        args.layer,
        data,
        args.work / "mining",
        channels=channels,
        top_images=12,
        reference_count=8,
        patch_side=64,
        progress=False,
    )
    mining_seconds = time.perf_counter() - started
    targets = [Channel(args.layer, k) for k in channels]

    def references(target):
        return mined_references(args.work / "mining", model, target.layer, target, "patch", 8)

    settings = {"steps": args.steps, "seed": 0}
    reports = {}
    for name, engine in (("local", LocalEngine()), ("ray", None)):
        if engine is None:
            engine = RayEngine(num_cpus=2)
        report = build_atlas(
            "mobilenet_v2",
            targets,
            references,
            args.work / f"atlas-{name}",
            settings,
            setting=1,  # the authors' setting, as the RESULTS sections of this script report
            engine=engine,
            batch_size=args.batch,
            progress=False,
        )
        if name == "ray":
            engine.shutdown()
        reports[name] = report
    figures = HERE / "figures"
    screenshots(args.work / "atlas-local", figures)

    print(
        f"## Atlas of MobileNetV2 `{args.layer}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    )
    print(
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads. Command: "
        f"`python benchmarks/atlas_mobilenet.py --channels {args.channels} --steps {args.steps} "
        f"--batch {args.batch}`.\n"
    )
    print(
        f"{len(channels)} channels (the most active on the photos): {channels}. References: "
        f"the 8 best 64 px patches mined from {len(list(data.rglob('*.jpg')))} images "
        f"(the 8 embedded photos and 5 crops/flips of each); mining took {mining_seconds:.0f} s. "
        f"{args.steps} steps per unit (the authors use 2000), batches of {args.batch}, "
        "`lrp` relevance.\n"
    )
    print("| engine | units | seconds | units/min |")
    print("|---|---|---|---|")
    for name, report in reports.items():
        print(
            f"| {name} | {report.finished} (+{report.failed} failed) | {report.seconds:.0f} "
            f"| {report.units_per_minute:.2f} |"
        )


if __name__ == "__main__":
    main()
