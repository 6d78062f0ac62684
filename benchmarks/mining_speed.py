"""Stage-1 mining throughput against the bare model forward over the same images.

Both read the same folder through the same DataLoader (same decoding workers, same centre
crop), so the difference is what mining adds: hooks, stopping at the layer, the running
top-k of every channel and the SQLite checkpoints.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mining_speed.py --images 320
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vital.grids import to_image
from vital.mining import list_images, mine
from vital.mining.datasets import crop_loader
from vital.references import SAMPLE_PHOTOS, open_rgb, random_view, sample_photo
from vital.taps import tapped
from vital.zoo import load_model

OUT = Path(__file__).parent / "out"


def augmented_photos(folder: Path, count: int, side: int = 288, seed: int = 0) -> Path:
    """``count`` random resized crops and flips of the embedded photos, as JPEGs (cached)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    for old in folder.glob("*.jpg"):
        old.unlink()
    photos = {name: open_rgb(sample_photo(name)) for name in SAMPLE_PHOTOS}
    generator = np.random.default_rng(seed)
    names = list(photos)
    for i in range(count):
        name = names[i % len(names)]
        if i < len(names):  # the photos themselves first
            image = photos[name]
        else:
            image = to_image(random_view(photos[name], side, generator))
        image.save(folder / f"{name}-{i:04d}.jpg", quality=90)
    return folder


def bare_forward(model, data: Path, batch: int, workers: int) -> float:
    """Images/s of decoding + the full model forward, nothing else."""
    images = list_images(data)
    loader = crop_loader(
        images, list(range(len(images))), model.preprocessing.input_size, batch, workers
    )
    started = time.perf_counter()
    with torch.no_grad():
        for _, crops, _ in loader:
            model.module(model.preprocessing.normalize(crops))
    return len(images) / (time.perf_counter() - started)


def forward_to_layer(model, data: Path, layer: str, batch: int, workers: int) -> float:
    """Images/s of decoding + the forward pass up to ``layer`` (what mining runs), no top-k."""
    images = list_images(data)
    loader = crop_loader(
        images, list(range(len(images))), model.preprocessing.input_size, batch, workers
    )
    started = time.perf_counter()
    with tapped(model.module, [layer], stop_early=True) as tap, torch.no_grad():
        for _, crops, _ in loader:
            tap(model.preprocessing.normalize(crops))[layer].amax(dim=-1)
    return len(images) / (time.perf_counter() - started)


def mining(model, data: Path, layer: str, batch: int, workers: int) -> float:
    """Images/s of stage 1 over every channel of ``layer`` (fresh index each time)."""
    with tempfile.TemporaryDirectory() as folder:
        report = mine(
            model,
            layer,
            data,
            folder,
            patch=0,  # stage 1 only: the stage whose cost grows with the dataset
            top=1,
            batch_size=batch,
            workers=workers,
            progress=False,
        )
    return report.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    data = augmented_photos(OUT / f"speed-photos-{arguments.images}", arguments.images)
    model = load_model("mobilenet_v2")
    with torch.no_grad():  # first-call costs (allocations, kernel choice) out of the timings
        model.module(torch.zeros(arguments.batch, 3, 224, 224))
    bare, partial, mined = [], [], []
    run = (data, arguments.batch, arguments.workers)
    for _ in range(arguments.repeats):  # interleaved, so drift hits all alike
        bare.append(bare_forward(model, *run))
        partial.append(forward_to_layer(model, data, arguments.layer, *run[1:]))
        mined.append(mining(model, data, arguments.layer, *run[1:]))
    best_bare, best_partial, best_mined = max(bare), max(partial), max(mined)
    lines = [
        "",
        f"## Mining speed (stage 1), {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {os.cpu_count()}-core {platform.machine()} CPU container shared with other "
        f"jobs (load average {os.getloadavg()[0]:.1f} at the end), "
        f"{arguments.threads} torch thread(s), "
        f"{arguments.workers} decoding worker(s), torch {torch.__version__}.",
        f"Command: `OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mining_speed.py "
        f"--images {arguments.images} --layer {arguments.layer} --batch {arguments.batch} "
        f"--workers {arguments.workers} --repeats {arguments.repeats} "
        f"--threads {arguments.threads}`",
        f"Data: {arguments.images} JPEGs (288x288 random resized crops "
        "and flips of the 8 embedded photos), MobileNetV2 (embedded weights), 224 centre crops.",
        "",
        "| run | images/s (best of repeats) | all repeats |",
        "|---|---|---|",
        f"| bare model forward (full network) | {best_bare:.1f} | "
        + ", ".join(f"{v:.1f}" for v in bare)
        + " |",
        f"| forward up to {arguments.layer} (stop early), spatial max, no top-k | "
        f"{best_partial:.1f} | " + ", ".join(f"{v:.1f}" for v in partial) + " |",
        f"| mining stage 1, all channels of {arguments.layer} | {best_mined:.1f} | "
        + ", ".join(f"{v:.1f}" for v in mined)
        + " |",
        "",
        f"Mining / bare forward: {best_mined / best_bare:.2f}x; mining / forward to the layer: "
        f"{best_mined / best_partial:.2f}x (the cost of the running top-k, the index and "
        "checkpoints).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    results = Path(__file__).parent / "RESULTS.md"
    if not results.exists():
        results.write_text("# Benchmark results\n")
    with results.open("a") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
