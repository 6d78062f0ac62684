"""A neuron step's passes at several image sides: how much of each is a fixed cost per layer.

For MobileNetV2 ``features.16`` channel 5 (batch 1, the relevance rules attached, taps as a
neuron step has them), each side times the forward pass to the target, the
relevance pass and the backward pass from the taps, and beside them a bare forward and
backward of the whole model. At 16 px the arithmetic is nearly nothing, so what is left is the
cost of running the layers at all (benchmarks/RESULTS.md, "Where a relevance pass's time
goes"). The bare passes run after the others, with the rules taken off::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/relevance_cost.py [--sides 16,224]
"""

from __future__ import annotations

import argparse
import time

import torch

from vital import load_model
from vital.methods.vital_neuron import neuron_taps
from vital.optimize import MAX_RESOLUTION
from vital.relevance import get_backend
from vital.taps import list_layers, tapped
from vital.zoo import frozen

LAYER, CHANNEL = "features.16", 5


def sides(text: str) -> list[int]:
    """``--sides 16,224``: whole numbers of pixels from 16 to the largest resolution."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(not 16 <= v <= MAX_RESOLUTION for v in values):
        raise argparse.ArgumentTypeError(
            f"image sides from 16 to {MAX_RESOLUTION} px, comma-separated, not {text!r}"
        )
    return values


def low_end(times: list[float]) -> float:
    """The 10th percentile in ms: on a shared machine interference only adds time."""
    return sorted(times)[len(times) // 10] * 1e3


def row(model, side: int, rounds: int) -> str:
    layers = list_layers(model.module, side)
    taps = [t.layer for t in neuron_taps(model, layers, LAYER, None, near=False)[0]]
    channels = next(i.channels for i in layers if i.name == LAYER)
    direction = torch.zeros(1, channels)
    direction[0, CHANNEL] = 1.0
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    backend = get_backend("lrp")
    forward, relevance, backward, bare = [], [], [], []
    with frozen(model.module):
        # Attached once, as a run attaches them: the rules keep their clamped weights for it.
        with (
            backend.attached(model.module, layers, taps, [LAYER]),
            tapped(model.module, [*taps, LAYER], stop_early=True) as tap,
        ):
            for _ in range(rounds + 3):  # the first three warm up
                started = time.perf_counter()
                features = tap(x)
                layouts = {layer: tap.layout(layer) for layer in tap.layers}
                after_forward = time.perf_counter()
                weights = backend.relevance(tap.outputs, {LAYER: direction}, taps, layouts)
                after_relevance = time.perf_counter()
                sum((features[t] * weights[t]).sum() for t in taps).backward()
                ended = time.perf_counter()
                x.grad = None
                forward.append(after_forward - started)
                relevance.append(after_relevance - after_forward)
                backward.append(ended - after_relevance)
        for _ in range(rounds + 3):  # the rules off: the model as the user has it
            started = time.perf_counter()
            model.module(x).sum().backward()
            bare.append(time.perf_counter() - started)
            x.grad = None
    parts = [low_end(times[3:]) for times in (forward, relevance, backward, bare)]
    return f"| {side} px | " + " | ".join(f"{part:.1f} ms" for part in parts) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sides", type=sides, default=[16, 224], help="image sides in pixels")
    parser.add_argument("--rounds", type=int, default=40, help="timed rounds per side (≥ 10)")
    arguments = parser.parse_args()
    if arguments.rounds < 10:
        parser.error(f"--rounds keeps the 10th percentile: use 10 or more, not {arguments.rounds}")
    model = load_model("mobilenet_v2")
    print(f"MobileNetV2 {LAYER} channel {CHANNEL}, {torch.get_num_threads()} thread(s), "
          f"10th percentiles of {arguments.rounds} rounds\n")  # fmt: skip
    print("| image side | forward to the target, rules attached | relevance pass "
          "| backward from the taps | bare forward + backward |")  # fmt: skip
    print("|---|---|---|---|---|")
    for side in arguments.sides:
        print(row(model, side, arguments.rounds), flush=True)


if __name__ == "__main__":
    main()
