"""Which model families work: taps found (and from where), a class run, a neuron run.

Random weights (no pretrained weights are needed to check the plumbing), 2 steps, 4 reference
views of the embedded espresso photo. Prints a Markdown table for docs/models.md.

    PYTHONPATH=src python benchmarks/model_families.py [--only NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path

import torch
from typer.testing import CliRunner

from vital.cli import app
from vital.methods.vital_class import resolve_taps
from vital.zoo import load_model

FAMILIES = [
    ("ResNet", "torchvision", "resnet50"),
    ("MobileNet", "torchvision", "mobilenet_v3_large"),
    ("EfficientNet", "torchvision", "efficientnet_b0"),
    ("ConvNeXt", "torchvision", "convnext_tiny"),
    ("RegNet", "torchvision", "regnet_y_400mf"),
    ("ViT", "torchvision", "vit_b_16"),
    ("Swin", "torchvision", "swin_t"),
    ("ResNet", "timm", "timm/resnet50"),
    ("MobileNet", "timm", "mobilenetv3_large_100"),
    ("EfficientNet", "timm", "timm/efficientnet_b0"),
    ("ConvNeXt", "timm", "timm/convnext_tiny"),
    ("RegNet", "timm", "regnety_004"),
    ("ViT", "timm", "vit_base_patch16_224"),
    ("DeiT", "timm", "deit_small_patch16_224"),
    ("Swin", "timm", "swin_tiny_patch4_window7_224"),
]


def _run(args: list[str]) -> tuple[bool, str, float]:
    start = time.perf_counter()
    result = CliRunner().invoke(app, args, catch_exceptions=True)
    seconds = time.perf_counter() - start
    if result.exit_code == 0:
        return True, "", seconds
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        lines = traceback.format_exception(result.exception)
        return False, lines[-1].strip()[:160], seconds
    return False, (result.output.strip().splitlines() or ["?"])[-1][:160], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="Model names to try (default: all).")
    parser.add_argument("--out", type=Path, default=None, help="Output folder (default: temp).")
    options = parser.parse_args()
    torch.set_num_threads(2)
    out = options.out or Path(tempfile.mkdtemp(prefix="vital-families-"))
    print(
        "| family | library | name | taps (source) | class run | neuron run (grad-x-act) | "
        "neuron run (lrp) |"
    )
    print("|---|---|---|---|---|---|---|")
    for family, library, name in FAMILIES:
        if options.only and name not in options.only:
            continue
        model = load_model(name, weights="random")
        taps, source = resolve_taps(model, None)
        source = source.split(" (")[0].replace(
            "the library's feature metadata", "timm feature_info"
        )
        common = ["--model", name, "--weights", "random", "--steps", "2", "--ref-count", "4"]
        common += ["--out", str(out / name.replace("/", "-"))]
        ok_class, why_class, t_class = _run(["class", "--class", "espresso", *common])
        layer = taps[-1].layer
        neuron = ["neuron", "--layer", layer, "--channel", "0", "--refs", "samples"]
        neurons = []
        for relevance in ("grad-x-act", "lrp"):
            ok, why, seconds = _run([*neuron, "--relevance", relevance, *common])
            neurons.append(f"yes, {layer} ch 0 ({seconds:.0f} s)" if ok else f"no: {why}")
        tap_text = ", ".join(t.layer for t in taps)
        class_text = f"yes ({t_class:.0f} s)" if ok_class else f"no: {why_class}"
        print(
            f"| {family} | {library} | `{name}` | {tap_text} ({source}) | {class_text} | "
            f"{neurons[0]} | {neurons[1]} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
