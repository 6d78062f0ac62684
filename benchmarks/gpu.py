"""Throughput on one device: class and neuron visualisations per minute, memory, mining images/s.

ResNet-50 with random weights (the architecture of the paper; weights do not change the cost) at
batch 1, 8, 32 and 64, each beside a bare forward + backward of the same batch; peak memory; and
mining (stage 1, every channel of ``layer4``) against a bare forward. Prepared for the first GPU
lent to the project (``benchmarks/gpu.sh``); ``--device cpu --quick`` is the smoke test that CI
runs.

    python benchmarks/gpu.py --device cuda --append          # writes benchmarks/RESULTS.md
    python benchmarks/gpu.py --device cpu --quick             # seconds, tiny sizes
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import vital
from vital.references import export_sample_photos, from_samples

HERE = Path(__file__).parent


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def bare_step_seconds(model, batch: int, resolution: int, repeats: int) -> float:
    """One forward + backward to the input of ``batch`` images, as an optimiser step needs."""
    device = model.device
    x = torch.randn(batch, 3, resolution, resolution, device=device, requires_grad=True)
    model.module(x).sum().backward()  # warm-up
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        x.grad = None
        model.module(x).sum().backward()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def bare_forward_images_per_second(model, batch: int, resolution: int, repeats: int) -> float:
    device = model.device
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    with torch.no_grad():
        model.module(x)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            model.module(x)
        synchronize(device)
    return batch * repeats / (time.perf_counter() - started)


def visualisation_step_seconds(
    model, targets, steps: int, resolution: int, execution: dict, **options
) -> float:
    """Seconds per optimiser step of one batch (after a warm-up run that caches prototypes)."""
    references = {target: from_samples(["coffee", "chelsea"], count=2) for target in targets}
    # The authors' setting 1 (pixels): the per-step cost this script has always reported.
    common = {"progress": False, "batch_size": len(targets), "setting": 1, **options}
    settings = {"resolution": resolution, **execution}
    vital.visualize(model, targets, references, settings={**settings, "steps": 2}, **common)
    synchronize(model.device)
    results = vital.visualize(
        model, targets, references, settings={**settings, "steps": steps}, **common
    )
    return results[0].record.seconds / steps


def mining_images_per_second(model, layer: str, count: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        photos = export_sample_photos(Path(folder) / "photos")
        data = Path(folder) / "data"
        data.mkdir()
        for i in range(count):  # copies: the decoding cost of real JPEGs
            (data / f"{i:05d}.jpg").write_bytes(photos[i % len(photos)].read_bytes())
        started = time.perf_counter()
        report = vital.mine(
            model, layer, data, Path(folder) / "mining", top_images=16, reference_count=4,
            patch_side=0, batch_size=batch, progress=False,
        )  # fmt: skip
        return report.images / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--layer", default="layer4.2", help="neuron targets' layer")
    parser.add_argument("--mine-layer", default="layer4")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--mining-images", type=int, default=512)
    parser.add_argument("--precision", default="float32", help="float32 or bfloat16 (autocast)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the objective")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: tiny sizes")
    parser.add_argument("--append", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.quick:
        args.model, args.layer, args.mine_layer = "resnet18", "layer4.1", "layer4"
        args.batches, args.steps, args.resolution, args.mining_images = "1,2", 2, 64, 8

    execution = {
        "precision": args.precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
    }
    model = vital.load_model(args.model, weights="random", device=args.device)
    device = model.device
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    lines = [
        f"## Throughput on {device.type} ({name or platform.machine()}), "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Command: `python benchmarks/gpu.py {' '.join(sys.argv[1:])}` (commit {commit}); "
        f"{args.model} with random weights, {args.resolution} px, {args.steps} timed steps "
        f"after a warm-up run; torch {torch.__version__}, {torch.get_num_threads()} CPU "
        f"thread(s); precision {args.precision}, channels-last {args.channels_last}, compile "
        f"{args.compile}. Per minute = images finished per minute at 2000 (setting 1) and 300 "
        "steps (fast).",
        "",
        "| batch | bare fwd+bwd (s) | class step (s) | ×bare | class/min @2000 | @300 | "
        "neuron step (s) | ×bare | neuron/min @2000 | @300 | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    channels = vital.list_layers(model.module, args.resolution)
    width = {info.name: info.channels for info in channels}[args.layer]
    for batch in [int(b) for b in args.batches.split(",")]:
        reset_peak(device)
        bare = bare_step_seconds(model, batch, args.resolution, max(args.steps, 3))
        classes = [vital.ClassTarget(i) for i in range(batch)]
        class_step = visualisation_step_seconds(
            model, classes, args.steps, args.resolution, execution
        )
        neurons = [vital.Channel(args.layer, i % width) for i in range(batch)]
        neuron_step = visualisation_step_seconds(
            model, neurons, args.steps, args.resolution, execution, relevance="lrp"
        )
        per_minute = lambda step, steps, b=batch: 60 * b / (step * steps)  # noqa: E731
        lines.append(
            f"| {batch} | {bare:.4f} | {class_step:.4f} | {class_step / bare:.2f} | "
            f"{per_minute(class_step, 2000):.2f} | {per_minute(class_step, 300):.1f} | "
            f"{neuron_step:.4f} | {neuron_step / bare:.2f} | "
            f"{per_minute(neuron_step, 2000):.2f} | {per_minute(neuron_step, 300):.1f} | "
            f"{peak_memory_mb(device):.0f} |"
        )
        print(lines[-1], flush=True)
    batch = 64 if not args.quick else 4
    bare_rate = statistics.median(
        bare_forward_images_per_second(model, batch, args.resolution, 3) for _ in range(3)
    )
    mining_rate = mining_images_per_second(model, args.mine_layer, args.mining_images, batch)
    lines += [
        "",
        f"Mining (stage 1, every channel of `{args.mine_layer}`, {args.mining_images} JPEGs, "
        f"batch {batch}, local engine): {mining_rate:.1f} images/s against a bare forward of "
        f"{bare_rate:.1f} images/s ({mining_rate / bare_rate:.2f}×; decoding, top-k and the "
        "index included).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.append:
        with open(HERE / "RESULTS.md", "a") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
