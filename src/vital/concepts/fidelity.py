"""Faithfulness of concepts, measured: deletion and insertion curves at the layer.

CRAFT's C-Deletion / C-Insertion (Fel et al. 2023), against the same curves for channels. The
layer's output on an image is changed and the rest of the network runs on it; the class logit
is read after each step:

- concept deletion: the top n concepts' reconstructions W_k H_k are subtracted from the
  layer's (non-negative) features, which are kept non-negative;
- concept insertion: only the top n concepts' reconstructions are kept (no residual);
- channel deletion / insertion: the top n channels (by relevance) are zeroed / kept alone.

n runs from 0 to the number of concepts; concepts are ranked by share, channels by relevance.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vital.concepts.discovery import ConceptBasis
from vital.taps import from_positions, tapped


@contextmanager
def replaced_output(
    module: nn.Module, layer: str, values: torch.Tensor, layout: str
) -> Iterator[None]:
    """Replace ``layer``'s output by ``values`` ((B, C, P), channels first) while the block runs."""
    target = dict(module.named_modules())[layer]

    def hook(_module, _inputs, output):
        return from_positions(values.to(output), output, layout)

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class Curves:
    """Class logits after removing (deletion) or keeping (insertion) the top n units, n = 0…N."""

    concepts_deletion: list[float]
    channels_deletion: list[float]
    concepts_insertion: list[float]
    channels_insertion: list[float]

    def as_dict(self) -> dict:
        """Plain data for records."""
        return {
            "concepts_deletion": self.concepts_deletion,
            "channels_deletion": self.channels_deletion,
            "concepts_insertion": self.concepts_insertion,
            "channels_insertion": self.channels_insertion,
        }


def _variants(
    basis: ConceptBasis,
    activation: torch.Tensor,
    coefficients: np.ndarray,
    concepts: Sequence[int],
    channels: Sequence[int],
) -> list[np.ndarray]:
    features = basis.features(activation).double().numpy()
    steps = len(concepts)
    out: list[np.ndarray] = []
    for n in range(steps + 1):  # concept deletion
        removed = basis.reconstruction(coefficients, concepts[:n])
        out.append(basis.to_activation(np.maximum(features - removed, 0)))
    for n in range(steps + 1):  # channel deletion
        kept = activation.double().numpy().copy()
        kept[list(channels[:n])] = 0
        out.append(kept)
    for n in range(steps + 1):  # concept insertion
        out.append(basis.to_activation(basis.reconstruction(coefficients, concepts[:n])))
    for n in range(steps + 1):  # channel insertion
        kept = np.zeros_like(activation.double().numpy())
        kept[list(channels[:n])] = activation.double().numpy()[list(channels[:n])]
        out.append(kept)
    return out


@torch.no_grad()
def fidelity_curves(
    model,
    layer: str,
    pixels: torch.Tensor,
    target: int,
    basis: ConceptBasis,
    activation: torch.Tensor,
    coefficients: np.ndarray,
    concepts: Sequence[int],
    channels: Sequence[int],
) -> Curves:
    """Deletion and insertion curves of one image (see the module).

    Parameters
    ----------
    model
        The classifier.
    layer
        The concepts' layer.
    pixels
        (3, H, W) the image in [0, 1].
    target
        The class whose logit is read.
    basis, activation, coefficients
        The concepts; (C, P) the layer's output on the image; (K, P) the concepts there.
    concepts, channels
        Concepts (by share) and channels (by relevance), best first, equally many.
    """
    x = model.preprocessing.normalize(pixels[None].to(model.device, model.dtype))
    with tapped(model.module, [layer], stop_early=True) as tap:
        tap(x)
        layout = tap.layout(layer)
    variants = torch.from_numpy(
        np.stack(_variants(basis, activation, coefficients, concepts, channels))
    )
    logits = []
    for chunk in variants.split(16):
        with replaced_output(model.module, layer, chunk.float(), layout):
            logits.append(
                model.module(x.expand(chunk.shape[0], -1, -1, -1))[:, target].float().cpu()
            )
    values = torch.cat(logits).tolist()
    size = len(concepts) + 1
    parts = [values[i * size : (i + 1) * size] for i in range(4)]
    return Curves(*parts)
