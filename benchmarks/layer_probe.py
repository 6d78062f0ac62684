"""Channels of any layer pictured with ``fast``: how far they get, and a grid to look at.

For each photo, the channel of LAYER most selective for it (``convergence.selective_channels``)
or the channel given with ``--channels``; 20 views of its photo as references; ``fast`` for
STEPS steps in one batch. Prints one JSON line (each channel's activation over its references',
the layers matched) and writes OUT/probe.png (per row: the photo, the picture, its
transparency map). ``--taps`` replaces the matched layers (``NAME=WEIGHT``, as ``--tap``).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/layer_probe.py efficientnet_lite0 \\
        conv_head 300 OUT --photos rocket,grace_hopper,astronaut,palace
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from PIL import Image

import vital
from vital.grids import to_image
from vital.references import SAMPLE_PHOTOS, from_samples

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convergence import selective_channels  # noqa: E402  (benchmarks/ is not a package)

TILE = 224


def probe(
    model_name: str, layer: str, steps: int, out: Path, photos: list[str],
    channels: list[int] | None, taps: list[str] | None, seed_base: int = 0,
) -> dict:  # fmt: skip
    """Picture one channel per photo; the rows of the JSON line."""
    model = vital.load_model(model_name)
    if channels is None:
        chosen = selective_channels(model, layer, photos)
        channels = [chosen[photo] for photo in photos]
    targets = [vital.Channel(layer, channel) for channel in channels]
    references = {t: from_samples([p], 20, seed=0) for t, p in zip(targets, photos, strict=True)}
    started = time.perf_counter()
    results = vital.visualize(
        model, targets, references, settings={"steps": steps}, out=out, progress=False,
        batch_size=len(targets), seeds=[seed_base + i for i in range(len(targets))],
        **({"taps": taps} if taps else {}),
    )  # fmt: skip
    rows, grid = [], Image.new("RGB", (3 * TILE, TILE * len(photos)))
    for row, (photo, result) in enumerate(zip(photos, results, strict=True)):
        evaluation = result.record.evaluation
        rows.append({
            "photo": photo,
            "channel": result.target.index,
            "ratio": evaluation["activation"] / evaluation["reference_activation"],
            "taps": [t["layer"] for t in result.record.taps],
        })  # fmt: skip
        view = next(iter(from_samples([photo], 1, seed=0).views(TILE)))
        tiles = [to_image(view), result.image.convert("RGB")]
        if result.alpha is not None:
            tiles.append(Image.fromarray((result.alpha.numpy() * 255).astype("uint8")))
        for column, tile in enumerate(tiles):
            grid.paste(tile.convert("RGB").resize((TILE, TILE)), (column * TILE, row * TILE))
    grid.save(out / "probe.png")
    seconds = time.perf_counter() - started
    return {"model": model_name, "layer": layer, "steps": steps, "seconds": seconds, "rows": rows}


def _whole_numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"whole numbers, comma-separated, not {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("layer")
    parser.add_argument("steps", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--photos", default="coffee,chelsea,motorcycle,daisy")
    parser.add_argument("--channels", type=_whole_numbers, help="one per photo, comma-separated")
    parser.add_argument("--taps", help="NAME=WEIGHT,...: the layers matched instead")
    parser.add_argument("--seed-base", type=int, default=0, help="the pictures' seeds start here")
    args = parser.parse_args()
    photos = args.photos.split(",")
    unknown = [photo for photo in photos if photo not in SAMPLE_PHOTOS]
    if unknown:
        parser.error(f"no sample photo {unknown[0]!r}; there are {', '.join(SAMPLE_PHOTOS)}")
    if args.channels is not None and len(args.channels) != len(photos):
        parser.error(f"--channels gives {len(args.channels)} channels for {len(photos)} photos")
    taps = args.taps.split(",") if args.taps else None
    try:
        found = probe(
            args.model, args.layer, args.steps, args.out, photos, args.channels, taps,
            args.seed_base,
        )  # fmt: skip
    except vital.VitalError as error:  # a wrong model, layer, channel, tap or step count
        parser.exit(2, f"error: {error}\n")
    print(json.dumps(found))


if __name__ == "__main__":
    main()
