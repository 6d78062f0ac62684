"""Concept pages in an atlas on the embedded MobileNetV2: the espresso's concepts at features.18.

Runs, as a user would (each command prints what it did):

    vital atlas build --class espresso --layer features.18 --by concepts --data coffee.jpg \\
        --count 10 --steps STEPS --out ATLAS
    vital atlas build --layer features.18 --channel C1,C2,... --data PHOTOS --steps STEPS \\
        --ref-count 4 --out ATLAS        # the top concepts' largest channels, for their links

then screenshots the concept overview and the top concept's page with headless Chromium and
keeps small JPEGs of them in benchmarks/figures/.

    OMP_NUM_THREADS=1 python benchmarks/concept_pages.py --steps 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from screens import browsing
from vital.references import export_sample_photos

HERE = Path(__file__).resolve().parent


def vital(*arguments: str) -> float:
    """Run ``vital ARGUMENTS`` in a fresh process, echoing the command; its wall time."""
    print("$ vital " + " ".join(arguments), flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vital", *arguments], check=True)
    return time.perf_counter() - started


def screenshot(atlas: Path, pages: dict[str, str], figures: Path, width: int) -> list[Path]:
    """Full-page JPEGs of ``pages`` (name → path in the atlas), scaled to ``width`` pixels."""
    written = []
    with browsing(atlas) as (page, root):
        for name, path in pages.items():
            page.goto(f"{root}/{path}")
            full = atlas.parent / f"{name}-full.png"
            page.screenshot(path=str(full), full_page=True)
            image = Image.open(full).convert("RGB")
            scale = width / image.width
            image = image.resize((width, round(image.height * scale)), Image.Resampling.LANCZOS)
            written.append(figures / f"{name}.jpg")
            image.save(written[-1], quality=72, optimize=True)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "concept-pages")
    parser.add_argument("--width", type=int, default=900, help="Width of the kept JPEGs.")
    args = parser.parse_args()
    photos = args.out / "photos"
    if not photos.is_dir():
        export_sample_photos(photos)
    atlas = args.out / "atlas"
    steps = ["--steps", str(args.steps)]
    concepts_seconds = vital(
        "atlas", "build", "--class", "espresso", "--layer", "features.18", "--by", "concepts",
        "--data", str(photos / "coffee.jpg"), "--count", str(args.count), *steps,
        "--out", str(atlas),
    )  # fmt: skip
    (folder,) = (atlas / "concepts").iterdir()
    record = json.loads((folder / "concepts.json").read_text())
    directions = np.load(folder / "directions.npy")
    channels = []
    for entry in record["concepts"][:2]:  # the two largest concepts' three heaviest channels
        row = directions[entry["index"]]
        channels += [int(c) for c in np.argsort(-np.abs(row))[:3]]
    channels = list(dict.fromkeys(channels))
    channel_seconds = vital(
        "atlas", "build", "--layer", "features.18", "--channel", ",".join(map(str, channels)),
        "--data", str(photos), "--ref-count", "4", *steps, "--out", str(atlas),
    )  # fmt: skip
    top = record["concepts"][0]
    relative = folder.relative_to(atlas).as_posix()
    figures = screenshot(
        atlas,
        {
            "concept-pages-overview": f"{relative}/index.html",
            "concept-pages-concept": f"{relative}/concept-{top['index']}.html",
        },
        HERE / "figures",
        args.width,
    )
    print(f"concepts {concepts_seconds:.0f} s, channels {channel_seconds:.0f} s")
    shares = record["explained_share"], record["residual_share"]
    print("explained share {:.3f}, residual {:.3f}".format(*shares))
    for entry in record["concepts"]:
        ratio = (
            entry["activation"] / entry["reference_activation"]
            if entry["reference_activation"]
            else float("nan")
        )
        print(f"  concept {entry['index']:2d} share {entry['share']:.3f} picture/refs {ratio:.2f}")
    print("channels linked:", channels)
    print("figures:", *[f.relative_to(HERE.parent) for f in figures])


if __name__ == "__main__":
    main()
