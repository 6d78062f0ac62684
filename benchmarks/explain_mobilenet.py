"""`vital explain` on the embedded MobileNetV2 and photos: three predictions, one atlas.

Exports the embedded photos as the mining data, explains three of them at ``features.18``
(the same as ``vital explain PHOTO --layer features.18 --top 5 --data PHOTOS --out ATLAS
--steps 300 --references 4 --mined-as patch``, one call per photo), prints a RESULTS.md section
and screenshots the overview, an explanation and a unit page (JPEG) with headless Chromium.

    python benchmarks/explain_mobilenet.py --steps 300
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import time
from pathlib import Path

import torch
from PIL import Image

from screens import browsing
from vital.explanation import explain
from vital.references import export_sample_photos
from vital.zoo import load_model

HERE = Path(__file__).resolve().parent


def screenshots(atlas: Path, records, out: Path) -> list[Path]:
    written = []
    with browsing(atlas) as (page, root):
        page.goto(f"{root}/index.html?sort=relevant")
        written.append(out / "explain-atlas-index.jpg")
        page.screenshot(path=str(written[-1]), type="jpeg", quality=60)
        for record in records:
            page.goto(f"{root}/{record.files['page']}")
            stem = Path(record.image["source"]).stem
            written.append(out / f"explain-{stem}.jpg")
            page.screenshot(path=str(written[-1]), full_page=True, type="jpeg", quality=60)
        page.goto(f"{root}/{records[0].files['page']}")
        page.locator(".channel-row .unit-link").first.click()
        page.wait_for_load_state("load")
        written.append(out / "explain-unit.jpg")
        page.screenshot(path=str(written[-1]), full_page=True, type="jpeg", quality=60)
    for path in written:  # small files for the repository
        shrink(path)
    return written


def shrink(path: Path, width: int = 1000) -> None:
    """Scale a screenshot down to ``width`` pixels and save it as a compact JPEG."""
    with Image.open(path) as image:
        height = round(image.height * width / image.width)
        small = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    small.save(path, quality=62, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", nargs="+", default=["coffee", "chelsea", "motorcycle"])
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--setting", default="1", help="VITAL's setting (1, fast ...)")
    parser.add_argument("--references", type=int, default=4)
    parser.add_argument("--work", type=Path, default=HERE / "out" / "explain")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    data = args.work / "photos"
    export_sample_photos(data)
    model = load_model("mobilenet_v2")
    atlas = args.work / "atlas"
    records, seconds = [], []
    for name in args.photos:
        started = time.perf_counter()
        records.append(
            explain(
                model,
                data / f"{name}.jpg",
                layer=args.layer,
                top=args.top,
                data=data,
                out=atlas,
                setting=args.setting,
                settings={"steps": args.steps},
                reference_count=args.references,
                mined_as="patch",
                progress=False,
            )
        )
        seconds.append(time.perf_counter() - started)
    figures = screenshots(atlas, records, HERE / "figures")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"## `vital explain` on MobileNetV2 `{args.layer}`, {when}\n")
    chosen = f" --setting {args.setting}" if args.setting else ""
    print(
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, no GPU. "
        f"Commit {commit}. Command: `python benchmarks/explain_mobilenet.py --steps {args.steps}"
        f"{chosen}` "
        f"(per photo the same as `vital explain PHOTO --layer {args.layer} --top {args.top} "
        f"--data PHOTOS --out ATLAS --steps {args.steps}{chosen} --ref-count {args.references} "
        "--mined-as patch`). Data: the 8 embedded photos; relevance `lrp` from the class logit. "
        f"Pictures: VITAL{chosen or ' setting 1'} at {args.steps} steps (the authors use 2000) "
        "on each channel's "
        f"{args.references} best 64 px patches.\n"
    )
    for record, took in zip(records, seconds, strict=True):
        explained = record.explained
        print(
            f"**{Path(record.image['source']).name}**: {explained['name']} "
            f"(class {explained['index']}, p = {explained['probability']:.3f}); relevance at "
            f"{record.layer} {record.total:.4g} (logit {explained['logit']:.4g}); "
            f"{took:.0f} s.\n"
        )
        print("| # | channel | relevance | share | examples (best patch score: photo) | picture |")
        print("|---|---|---|---|---|---|")
        for evidence in record.top:
            examples = ", ".join(
                f"{e['score']:.2f}: {Path(e['image']).stem}" for e in evidence.examples
            )
            picture = evidence.picture or {}
            print(
                f"| {evidence.rank + 1} | {evidence.channel} | {evidence.relevance:.4g} | "
                f"{100 * evidence.share:.2f}% | {examples} | {picture.get('source', '–')}, "
                f"activation {picture.get('activation') or 0:.3g} (references "
                f"{picture.get('reference_activation') or 0:.3g}) |"
            )
        print()
    print("Screenshots: " + ", ".join(f"`figures/{p.name}`" for p in figures) + ".")


if __name__ == "__main__":
    main()
