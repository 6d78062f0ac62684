"""How concentrated the weights of each tap are on a unit's own references (issue 20).

The loss of an inner unit weights each tap's features by their normalised relevance
(docs/method.md, "Inner units"); a signed unit's weights get a floor ``f`` under them ("Signed
units"). For the four channels :mod:`layer_kinds` chooses, on each one's twelve crops of its
photo, per tap: the spatial map of the weights, ``Σ_c importance_c · w_c(p)`` over the tap's
positions, and the share of its mass in its brightest quarter (flat: 0.25), with

- the floor as the library applies it, ``w = f + (1 − f) · r``;
- no floor, ``w = r``;
- the floor as a share of each channel's mass, ``w = f · mean_p(r) + (1 − f) · r``
  (``layer_kinds.py --floor-mass``);

and the concentration of the positive relevance itself. Mean over the twelve crops.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/tap_weights.py \\
        mobilenet_v2:features.12 efficientnet_lite0:blocks.4.1 mobilenet_v2:features.18
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vital import metrics
from vital.methods.vital_neuron import neuron_taps
from vital.objectives import (
    channel_importance,
    held,
    negative_shares,
    normalized_relevance,
    relevance_floor,
)
from vital.references import from_samples
from vital.relevance import get_backend
from vital.taps import list_layers, tapped
from vital.zoo import load_model

sys.path.insert(0, str(Path(__file__).parent))
from convergence import CHANNEL_PHOTOS, selective_channels  # noqa: E402


def spatial_concentration(weights: torch.Tensor, side: int) -> float:
    """Mean over images of the brightest quarter's share of (B, P) weight maps."""
    return float(np.mean([metrics.concentration(m.view(side, -1)) for m in weights]))


def unit_rows(model, layer: str, references: int) -> list[str]:
    """One line per chosen channel: its references' negative share and each tap's numbers."""
    layers = list_layers(model.module, 224)
    info = {i.name: i for i in layers}
    taps = [t.layer for t in neuron_taps(model, layers, layer, near=True)[0]]
    chosen = selective_channels(model, layer, list(CHANNEL_PHOTOS))
    backend, lines = get_backend("lrp"), []
    with (
        backend.attached(model.module, layers, taps, [layer]),
        tapped(model.module, [*taps, layer], stop_early=True) as tap,
    ):
        for photo, channel in chosen.items():
            views = torch.stack(list(from_samples([photo], references, seed=0).views(224)))
            x = model.preprocessing.normalize(views).requires_grad_(True)
            with torch.enable_grad():
                tap(x)
            direction = torch.zeros(len(views), info[layer].channels)
            direction[:, channel] = 1
            directions = {layer: direction}
            layouts = {name: tap.layout(name) for name in tap.layers}
            relevance = backend.relevance(tap.outputs, directions, taps, layouts)
            share = negative_shares(tap.outputs, directions, layouts)
            floor = (relevance_floor(share) * held(share.mean())).view(-1, 1, 1)
            line = [f"{model.name} {layer} ch {channel} negative share {float(share.mean()):.2f}"]
            for name in taps:
                r = relevance[name].detach()
                side = tap.outputs[name].shape[-1]
                importance = channel_importance(r).unsqueeze(-1)
                plain = normalized_relevance(r)
                weights = {
                    "floor": floor + (1 - floor) * plain,
                    "none": plain,
                    "mass": floor * plain.mean(dim=-1, keepdim=True) + (1 - floor) * plain,
                }
                values = [
                    spatial_concentration((importance * w).sum(dim=1), side)
                    for w in weights.values()
                ]
                values.append(spatial_concentration(r.clamp_min(0).sum(dim=1), side))
                line.append(f"{name}@{side}: " + "/".join(f"{v:.2f}" for v in values))
            lines.append(" | ".join(line))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("layers", nargs="+", help="MODEL:LAYER, e.g. mobilenet_v2:features.12")
    parser.add_argument("--references", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("per tap: floor / no floor / floor as a mass share / positive relevance")
    for item in args.layers:
        name, layer = item.split(":")
        for line in unit_rows(load_model(name), layer, args.references):
            print(line, flush=True)


if __name__ == "__main__":
    main()
