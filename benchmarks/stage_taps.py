"""Inner units of a stage of blocks: which layers are matched, and how far the pictures get.

A stage (timm's ``blocks.N``, torchvision's ``layerN``) returns its last block's output as it
is, and vital matches a unit of the stage as a unit of that block (docs/method.md, "A stage of
blocks"). Two measurements, run once with the tree before the change and once after
(``PYTHONPATH=<tree>/src``):

- ``taps OUT.json``: for every layer of five models (MobileNetV2 and EfficientNet-Lite0 with
  their embedded weights, ResNet-50, ViT-B/16 and ConvNeXt-Tiny with random ones) the layers
  ``fast`` matches for an inner unit of it (``neuron_taps(..., near=True)``), to compare two
  trees' files;
- ``channels LAYER STEPS OUT``: on EfficientNet-Lite0, the channel of LAYER most selective for
  each of four photos (``convergence.selective_channels``), 20 views of its photo as references,
  ``fast`` for STEPS steps in one batch; prints each channel's activation over its references'.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/stage_taps.py taps after.json
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/stage_taps.py channels blocks.5 300 OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import vital
from vital.methods.vital_neuron import neuron_taps
from vital.references import from_samples
from vital.taps import list_layers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convergence import selective_channels  # noqa: E402  (benchmarks/ is not a package)

MODELS = {
    "mobilenet_v2": {},
    "efficientnet_lite0": {},
    "resnet50": {"weights": "random"},
    "vit_b_16": {"weights": "random"},
    "convnext_tiny": {"weights": "random"},
}
PHOTOS = ("coffee", "chelsea", "motorcycle", "daisy")


def every_layers_taps() -> dict[str, list[str] | str]:
    """``model:layer`` → the layers matched for an inner unit of it (or the error's class)."""
    found: dict[str, list[str] | str] = {}
    for name, options in MODELS.items():
        model = vital.load_model(name, **options)
        layers = list_layers(model.module, model.preprocessing.input_size)
        for info in layers:
            if info.calls != 1 or len(info.shape) not in (2, 3):
                continue
            try:
                taps, _ = neuron_taps(model, layers, info.name, near=True)
                found[f"{name}:{info.name}"] = [t.layer for t in taps]
            except vital.VitalError as error:
                found[f"{name}:{info.name}"] = f"refused: {type(error).__name__}"
    return found


def stage_channels(layer: str, steps: int, out: Path) -> dict:
    """Lite0's most selective channel of ``layer`` for each photo, pictured with ``fast``."""
    model = vital.load_model("efficientnet_lite0")
    chosen = selective_channels(model, layer, PHOTOS)
    targets = [vital.Channel(layer, chosen[photo]) for photo in PHOTOS]
    references = {t: from_samples([p], 20, seed=0) for t, p in zip(targets, PHOTOS, strict=True)}
    started = time.perf_counter()
    results = vital.visualize(
        model, targets, references, settings={"steps": steps}, out=out, progress=False,
        batch_size=len(targets),
    )  # fmt: skip
    rows = []
    for photo, result in zip(PHOTOS, results, strict=True):
        evaluation = result.record.evaluation
        ratio = evaluation["activation"] / evaluation["reference_activation"]
        taps = [t["layer"] for t in result.record.taps]
        rows.append({"photo": photo, "channel": result.target.index, "ratio": ratio, "taps": taps})
    return {"layer": layer, "steps": steps, "seconds": time.perf_counter() - started, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    taps = commands.add_parser("taps", help="every layer's matched layers, as JSON")
    taps.add_argument("out", type=Path)
    channels = commands.add_parser("channels", help="Lite0 stage channels pictured")
    channels.add_argument("layer")
    channels.add_argument("steps", type=int)
    channels.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "taps":
        found = every_layers_taps()
        args.out.write_text(json.dumps(found, indent=0))
        print(f"{len(found)} layers -> {args.out}")
    else:
        print(json.dumps(stage_channels(args.layer, args.steps, args.out)))


if __name__ == "__main__":
    main()
