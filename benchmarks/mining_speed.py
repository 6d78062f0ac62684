"""Stage-1 mining throughput on each engine against the bare model forward over the same images.

The bare passes read the same folder through the same DataLoader (same decoding workers, same
centre crop), so the difference is what mining adds: hooks, stopping at the layer, the running
top-k of every channel, shards and the SQLite records. ``--engine ray`` also mines on a local
Ray instance with as many CPUs as the machine (decoding and the model in Ray tasks, one torch
thread per task). ``--merge`` times the driver's merge of one shard's lists at ImageNet scale.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mining_speed.py --images 320 \
        --engine local --engine ray --shard-size 32
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vital.engines import RayEngine
from vital.grids import to_image
from vital.mining import list_images, mine
from vital.mining.datasets import crop_loader
from vital.mining.topk import RunningTopK
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


def native_photos(folder: Path, count: int) -> Path:
    """``count`` JPEGs of the embedded photos at their own sizes (451x300 to 741x500, like
    ImageNet's), cycling through the 8 photos (cached)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    photos = [open_rgb(sample_photo(name)) for name in SAMPLE_PHOTOS]
    for i in range(count):
        photos[i % len(photos)].save(folder / f"photo-{i:04d}.jpg", quality=90)
    return folder


def decode_only(data: Path, resolution: int, batch: int) -> float:
    """Images/s of decoding and centre-cropping alone, in this process (one core)."""
    images = list_images(data)
    loader = crop_loader(images.paths, list(range(len(images))), resolution, batch, 0)
    started = time.perf_counter()
    for _ in loader:
        pass
    return len(images) / (time.perf_counter() - started)


def _loader(model, data: Path, batch: int, workers: int):
    images = list_images(data)
    positions = list(range(len(images)))
    size = model.preprocessing.input_size
    return len(images), crop_loader(images.paths, positions, size, batch, workers)


def bare_forward(model, data: Path, batch: int, workers: int) -> float:
    """Images/s of decoding + the full model forward, nothing else."""
    count, loader = _loader(model, data, batch, workers)
    started = time.perf_counter()
    with torch.no_grad():
        for _, crops, _ in loader:
            model.module(model.preprocessing.normalize(crops.float() / 255))
    return count / (time.perf_counter() - started)


def forward_to_layer(model, data: Path, layer: str, batch: int, workers: int) -> float:
    """Images/s of decoding + the forward pass up to ``layer`` (what mining runs), no top-k."""
    count, loader = _loader(model, data, batch, workers)
    started = time.perf_counter()
    with tapped(model.module, [layer], stop_early=True) as tap, torch.no_grad():
        for _, crops, _ in loader:
            tap(model.preprocessing.normalize(crops.float() / 255))[layer].amax(dim=-1)
    return count / (time.perf_counter() - started)


def mining(model, data: Path, layer: str, batch: int, workers: int, engine, shard: int) -> float:
    """Images/s of stage 1 over every channel of ``layer`` (fresh index each time)."""
    with tempfile.TemporaryDirectory() as folder:
        report = mine(
            model,
            layer,
            data,
            folder,
            patch_side=0,  # stage 1 only: the stage whose cost grows with the dataset
            reference_count=1,
            batch_size=batch,
            workers=workers,
            progress=False,
            engine=engine,
            shard_size=shard,
        )
    return report.images_per_second


def merge_cost(units: int, capacity: int, shard: int, repeats: int = 3) -> tuple[float, float]:
    """Seconds for the driver to merge one shard's lists into full running lists.

    Returns (median seconds with every unit merged: the worst case, early in a pass; median
    seconds when the shard sends back only what beats the floor, about 1 % of the capacity).
    """
    generator = torch.Generator().manual_seed(0)
    timings = {"full": [], "floored": []}
    for _ in range(repeats):
        kept = torch.rand(units, capacity, generator=generator).sort(dim=1, descending=True)
        ids = torch.randperm(units * capacity, generator=generator).view(units, capacity)
        driver = RunningTopK.restore(  # full lists, as after the first shards
            {"scores": kept.values, "ids": ids, "payload": torch.zeros_like(ids)}, capacity
        )
        base = units * capacity
        for kind, width in (("full", min(capacity, shard)), ("floored", max(1, capacity // 100))):
            scores = torch.rand(units, width, generator=generator).sort(dim=1, descending=True)[0]
            ids = torch.arange(base, base + width)
            top = RunningTopK.restore(driver.state(), capacity)
            started = time.perf_counter()
            new = top.merge(scores, ids)
            top.changes(new)
            timings[kind].append(time.perf_counter() - started)
    return tuple(sorted(t)[len(t) // 2] for t in timings.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engine", action="append", choices=["local", "ray"])
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--merge", action="store_true", help="also time the driver's merge")
    arguments = parser.parse_args()
    engines = arguments.engine or ["local"]
    torch.set_num_threads(arguments.threads)
    data = augmented_photos(OUT / f"speed-photos-{arguments.images}", arguments.images)
    model = load_model("mobilenet_v2")
    with torch.no_grad():  # first-call costs (allocations, kernel choice) out of the timings
        model.module(torch.zeros(arguments.batch, 3, 224, 224))
    ray_engine, ray_start = None, 0.0
    if "ray" in engines:
        started = time.perf_counter()
        ray_engine = RayEngine(num_cpus=os.cpu_count())
        ray_start = time.perf_counter() - started
    native = native_photos(OUT / f"native-photos-{arguments.images}", arguments.images)
    runs = {"decode": [], "native": [], "bare": [], "partial": [], **{e: [] for e in engines}}
    common = (data, arguments.batch, arguments.workers)
    try:
        for _ in range(arguments.repeats):  # interleaved, so drift hits all alike
            runs["decode"].append(decode_only(data, 224, arguments.batch))
            runs["native"].append(decode_only(native, 224, arguments.batch))
            runs["bare"].append(bare_forward(model, *common))
            runs["partial"].append(forward_to_layer(model, data, arguments.layer, *common[1:]))
            for engine in engines:
                runner = ray_engine if engine == "ray" else "local"
                runs[engine].append(
                    mining(model, data, arguments.layer, *common[1:], runner, arguments.shard_size)
                )
    finally:
        if ray_engine is not None:
            ray_engine.shutdown()
    best = {name: max(values) for name, values in runs.items()}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    command = (
        f"OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mining_speed.py "
        f"--images {arguments.images} --layer {arguments.layer} --batch {arguments.batch} "
        f"--workers {arguments.workers} --repeats {arguments.repeats} "
        f"--threads {arguments.threads} "
        + " ".join(f"--engine {engine}" for engine in engines)
        + f" --shard-size {arguments.shard_size}"
        + (" --merge" if arguments.merge else "")
    )

    def row(label: str, name: str) -> str:
        values = ", ".join(f"{v:.1f}" for v in runs[name])
        return f"| {label} | {best[name]:.1f} | {values} |"

    labels = {
        "local": f"mining stage 1, local engine ({arguments.workers} decoding worker(s), "
        f"{arguments.threads} torch thread(s))",
        "ray": f"mining stage 1, Ray engine (local instance, {os.cpu_count()} CPUs: decoding "
        "and model tasks, 1 torch thread each)",
    }
    lines = [
        "",
        f"## Mining speed (stage 1) by engine, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"
        " UTC",
        "",
        f"Machine: {os.cpu_count()}-core {platform.machine()} CPU container shared with other "
        f"jobs (load average {os.getloadavg()[0]:.1f} at the end), no GPU, torch "
        f"{torch.__version__}. Commit: {commit}.",
        f"Command: `{command}`",
        f"Data: {arguments.images} JPEGs (288x288 random resized crops and flips of the 8 "
        f"embedded photos), MobileNetV2 (embedded weights), 224 centre crops, all channels of "
        f"{arguments.layer}, shards of {arguments.shard_size} images.",
        "",
        "| run | images/s (best of repeats) | all repeats |",
        "|---|---|---|",
        row("decoding + 224 centre crop only, these JPEGs, 1 core", "decode"),
        row(
            "decoding + 224 centre crop only, 451x300-741x500 JPEGs (ImageNet-like), 1 core",
            "native",
        ),
        row("bare model forward (full network)", "bare"),
        row(f"forward up to {arguments.layer} (stop early), spatial max, no top-k", "partial"),
        *[row(labels[engine], engine) for engine in engines],
        "",
        "; ".join(
            f"{engine} / bare forward: {best[engine] / best['bare']:.2f}x" for engine in engines
        )
        + (f". Ray start-up (not in the rates): {ray_start:.1f} s." if ray_engine else "."),
    ]
    if arguments.merge:
        lines += ["", "Driver merge of one shard into full running lists (median of 3):", ""]
        lines += ["| units | kept per unit | shard | every unit merged | ~1 % above the floor |"]
        lines += ["|---|---|---|---|---|"]
        for units, capacity, shard in ((1280, 10_000, 1024), (2048, 10_000, 1024)):
            full, floored = merge_cost(units, capacity, shard)
            lines.append(f"| {units} | {capacity} | {shard} | {full:.2f} s | {floored:.2f} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    results = Path(__file__).parent / "RESULTS.md"
    if not results.exists():
        results.write_text("# Benchmark results\n")
    with results.open("a") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
