"""Contact sheets of three late-layer MobileNetV2 channels, mined over the embedded photos.

The data: the 8 embedded photos plus random resized crops and flips of them (96 images). The
channels: for the cat, the daisy and the espresso photo, the channel of the layer whose
spatial maximum on that photo exceeds its maximum on every other photo by the most. The
sheets then show whether mining finds that photo's crops again, and which part of them.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mining_sheets.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mining_speed import OUT, augmented_photos
from vital.mining import contact_sheet, mine, mined
from vital.references import SAMPLE_PHOTOS, center_crop, open_rgb, sample_photo
from vital.taps import tapped
from vital.zoo import load_model

FIGURES = Path(__file__).parent / "figures"


def selective_channels(model, layer: str, photos: list[str]) -> dict[str, int]:
    """Per photo: the channel most above its maximum on all other embedded photos."""
    names = list(SAMPLE_PHOTOS)
    crops = torch.stack([center_crop(open_rgb(sample_photo(n)), 224) for n in names])
    with tapped(model.module, [layer], stop_early=True) as tap, torch.no_grad():
        maxima = tap(model.preprocessing.normalize(crops))[layer].amax(dim=-1)  # (8, C)
    chosen = {}
    for photo in photos:
        i = names.index(photo)
        others = torch.cat([maxima[:i], maxima[i + 1 :]]).amax(dim=0)
        chosen[photo] = int((maxima[i] - others).argmax())
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--top-images", type=int, default=16)
    parser.add_argument("--ref-count", type=int, default=12)
    parser.add_argument("--patch", type=int, default=64)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("mobilenet_v2")
    data = augmented_photos(OUT / f"sheet-photos-{arguments.images}", arguments.images)
    channels = selective_channels(model, arguments.layer, ["chelsea", "daisy", "coffee"])
    started = time.perf_counter()
    report = mine(
        model,
        arguments.layer,
        data,
        OUT / "mining-sheets",
        channels=list(channels.values()),
        top_images=arguments.top_images,
        reference_count=arguments.ref_count,
        patch_side=arguments.patch,
        batch_size=32,
        workers=1,
    )
    print(f"mined in {time.perf_counter() - started:.0f} s: {report}")
    FIGURES.mkdir(exist_ok=True)
    for photo, channel in channels.items():
        _, ranked = mined(report.database, model, arguments.layer, channel)
        sources = [Path(r.path).stem.split("-")[0] for r in ranked]
        print(
            f"channel {channel} (chosen for {photo}): top {len(ranked)} from "
            + ", ".join(f"{s} {sources.count(s)}" for s in dict.fromkeys(sources))
            + f"; patch scores {ranked[0].score:.2f} .. {ranked[-1].score:.2f}"
        )
        sheet = contact_sheet(
            report.database,
            model,
            arguments.layer,
            channel,
            arguments.ref_count,
            columns=6,
            cell=96,
        )
        path = FIGURES / f"mining-{arguments.layer}-ch{channel}-{photo}.png"
        sheet.save(path, optimize=True)
        print(f"  {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
