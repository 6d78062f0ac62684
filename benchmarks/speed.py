"""Seconds per VITAL class step against a bare forward + backward-to-input, and peak memory.

Each configuration runs in its own subprocess so that peak RSS belongs to it alone.

    python benchmarks/speed.py                      # all configurations, prints a Markdown table
    python benchmarks/speed.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch


def measure(model_name: str, batch: int, steps: int, device: str) -> dict:
    from vital.objectives import SortMatching
    from vital.optimize import Settings, optimize, resolved
    from vital.taps import default_taps, list_layers, tapped
    from vital.zoo import load_model

    weights = None if model_name == "mobilenet_v2" else "random"
    model = load_model(model_name, weights=weights, device=device)
    device = model.device
    size = model.preprocessing.input_size
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # Bare pass: what any gradient-based visualisation pays per step.
    x = torch.randn(batch, 3, size, size, device=device, requires_grad=True)
    for _ in range(2):
        model.module(x).sum().backward()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        x.grad = None
        model.module(x).sum().backward()
    sync()
    bare = (time.perf_counter() - started) / steps
    bare_peak = torch.cuda.max_memory_allocated() if cuda else None

    # VITAL step: same batch, prototypes of random "references" (content does not change cost).
    taps, _ = default_taps(model_name, list_layers(model.module, size))
    layers = [t.layer for t in taps]
    with tapped(model.module, layers) as tap, torch.no_grad():
        features = tap(torch.randn(1, 3, size, size, device=device))
    prototypes = {layer: value[0].sort(-1).values for layer, value in features.items()}
    with tapped(model.module, layers, stop_early=True) as tap:
        objective = SortMatching(tap, taps, {1: [prototypes] * batch})
        # Two untimed steps warm up allocators and kernels, as for the bare pass.
        optimize(objective, batch, model.preprocessing, resolved(Settings(steps=2)), device, False)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run = optimize(
            objective, batch, model.preprocessing, resolved(Settings(steps=steps)), device, False
        )
        sync()
    vital_step = run.seconds / steps
    return {
        "model": model_name,
        "batch": batch,
        "bare_s": bare,
        "vital_s": vital_step,
        "ratio": vital_step / bare,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bare_peak_gpu_mb": bare_peak / 2**20 if bare_peak else None,
        "vital_peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def reference_memory(device: str, count: int) -> dict:
    """Bytes ``count`` ResNet-50 references would hold at conv1, against their prototype."""
    from PIL import Image

    from vital.references import ImageSource, ReferenceSet, compute_prototypes
    from vital.zoo import load_model

    model = load_model("resnet50", weights="random", device=device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    source = ImageSource("bench:noise", lambda: Image.effect_noise((256, 256), 64).convert("RGB"))
    references = ReferenceSet((source,), count=count, description="noise")
    prototypes = compute_prototypes(
        model, ["conv1", "layer1", "layer2", "layer3", "layer4"], references, 224, cache_dir=""
    )
    all_features = count * prototypes["conv1"].numel() * 4
    return {
        "count": count,
        "conv1_features_of_all_refs_mb": all_features / 1e6,
        "conv1_prototype_mb": prototypes["conv1"].numel() * 4 / 1e6,
        "all_prototypes_mb": sum(p.numel() * 4 for p in prototypes.values()) / 1e6,
        "peak_rss_growth_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        - rss_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "BATCH"))
    parser.add_argument("--references", type=int, default=0, help="measure N references")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.steps, args.device)))
        return
    if args.references:
        print(json.dumps(reference_memory(args.device, args.references)))
        return
    rows = []
    for model_name in ("mobilenet_v2", "resnet50"):
        for batch in (1, 8):
            command = [sys.executable, __file__, "--one", model_name, str(batch)]
            command += ["--steps", str(args.steps), "--device", args.device]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    memory = []
    for count in (16, 50, 100):
        command = [sys.executable, __file__, "--references", str(count), "--device", args.device]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        memory.append(json.loads(output))
    threads = torch.get_num_threads()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {threads} torch threads, "
        f"device {args.device}; {args.steps} timed steps per cell.\n"
    )
    print("| model | batch | bare fwd+bwd s/step | VITAL s/step | ratio | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['batch']} | {row['bare_s']:.3f} | {row['vital_s']:.3f} "
            f"| {row['ratio']:.2f} | {row['peak_rss_mb']:.0f} |"
            + (f" GPU peak {row['vital_peak_gpu_mb']:.0f} MB" if row["vital_peak_gpu_mb"] else "")
        )
    print(
        "\nResNet-50 references at 224 px, prototypes of all five taps streamed in batches of "
        "16 (one process per row; growth = peak RSS after minus before):\n"
    )
    print(
        "| references N | conv1 features of all N would be | conv1 prototype | all prototypes "
        "| peak RSS growth |"
    )
    print("|---|---|---|---|---|")
    for row in memory:
        print(
            f"| {row['count']} | {row['conv1_features_of_all_refs_mb']:.0f} MB "
            f"| {row['conv1_prototype_mb']:.1f} MB | {row['all_prototypes_mb']:.1f} MB "
            f"| {row['peak_rss_growth_mb']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
