"""What a laptop CPU gets: an atlas slice of MobileNetV2 ``features.18``, mining to pages.

The user's path, timed in stages: mine the layer over a small image folder (the embedded
photos and seeded crops and flips of each; or ``--data DIR``), then build the atlas of
``--channels`` channels spread evenly over the layer (every 1280/N-th: no choice by eye) with
``--setting`` (default ``fast``), their references the mined images (``--mined-as image``, as
``vital atlas build`` uses them by default; ``patch``: the 64 px patches), and render its pages.
It prints the seconds of each stage, channels per minute, and an **extrapolation** to all
1,280 channels of the layer: mining is one pass over the images for every channel at once
(so it is measured for all 1,280: ``--mine-slice`` mines only the slice's channels), the
pictures and pages scale with the number of channels.

    PYTHONPATH=src python benchmarks/atlas_slice.py                    # 32 channels, fast
    PYTHONPATH=src python benchmarks/atlas_slice.py --channels 4 --steps 20   # a check

The same from the command line (the stages this script times)::

    vital mine --layer features.18 --data PHOTOS --channel all --ref-count 8 --patch 64 --out OUT
    vital atlas build --layer features.18 --channel 0,40,... --data PHOTOS --setting fast \\
        --out OUT/atlas
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import torch

from atlas_mobilenet import augmented_photos
from vital.atlas import build_atlas
from vital.mining import mine, mined_references
from vital.targets import Channel
from vital.zoo import load_model

HERE = Path(__file__).resolve().parent
LAYER_CHANNELS = 1280  # MobileNetV2 features.18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--channels", type=int, default=32, help="channels in the slice")
    parser.add_argument("--setting", default="fast")
    parser.add_argument("--steps", type=int, default=None, help="default: the setting's own")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--data", type=Path, default=None, help="default: photos + crops")
    parser.add_argument("--mine-slice", action="store_true", help="mine the slice only")
    parser.add_argument(
        "--mined-as", choices=("image", "patch"), default="image", help="as vital atlas build's"
    )
    parser.add_argument("--work", type=Path, default=HERE / "out" / "atlas-slice")
    args = parser.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    data = args.data or augmented_photos(args.work / "photos", per_photo=5)
    images = sum(1 for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    stride = LAYER_CHANNELS // args.channels
    channels = list(range(0, stride * args.channels, stride))
    model = load_model("mobilenet_v2")

    started = time.perf_counter()
    mine(
        model, args.layer, data, args.work / "mining",
        channels=channels if args.mine_slice else None, top_images=12, reference_count=8,
        patch_side=64, progress=False,
    )  # fmt: skip
    mining = time.perf_counter() - started

    def references(target):
        return mined_references(args.work / "mining", model, target.layer, target, args.mined_as, 8)

    settings = {"seed": 0} | ({"steps": args.steps} if args.steps else {})
    started = time.perf_counter()
    report = build_atlas(
        model,
        [Channel(args.layer, k) for k in channels],
        references,
        args.work / "atlas",
        settings,
        setting=args.setting,
        batch_size=args.batch,
        progress=False,
    )
    building = time.perf_counter() - started

    count = len(channels)
    total = mining + building
    mined_for = count if args.mine_slice else LAYER_CHANNELS
    whole_layer = mining + building * LAYER_CHANNELS / count
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()} CPU, "
        f"{torch.get_num_threads()} torch threads; setting {args.setting}"
        f"{f', {args.steps} steps' if args.steps else ''}; batch {args.batch}; {images} images; "
        f"references: mined {args.mined_as}s"
    )
    print(f"channels {channels}")
    print(f"mining {mined_for} channels over {images} images: {mining:.0f} s")
    print(
        f"atlas of {count} channels (pictures, records, pages): {building:.0f} s, "
        f"{report.finished} finished, {report.failed} failed"
    )
    print(f"slice, mining to pages: {total:.0f} s = {count / total * 60:.2f} channels per minute")
    print(
        f"EXTRAPOLATED to all {LAYER_CHANNELS} channels (mining "
        f"{'of the slice, assumed one pass for all' if args.mine_slice else 'as measured'}, "
        f"pictures x {LAYER_CHANNELS / count:.0f}): {whole_layer / 3600:.1f} h"
    )


if __name__ == "__main__":
    main()
