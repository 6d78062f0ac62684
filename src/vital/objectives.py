"""Objectives: what a batch of synthetic images is optimised to match.

An objective is called with model input (B, 3, h, w) and the stage's downsample factor and
returns named (B,) loss terms; :func:`vital.optimize.optimize` adds the image priors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vital.losses import sort_matching_loss
from vital.references import Prototypes
from vital.taps import FeatureTap, Tap


class SortMatching:
    """VITAL's class objective: Σ_l w_l · SM(features_l, prototype_l) over the taps.

    Parameters
    ----------
    tap
        An attached :class:`vital.taps.FeatureTap` reading ``taps``.
    taps
        Tap names and weights.
    prototypes
        Per downsample factor, one prototype dict per image of the batch.
    """

    def __init__(
        self,
        tap: FeatureTap,
        taps: Sequence[Tap],
        prototypes: dict[int, Sequence[Prototypes]],
    ):
        self.tap = tap
        self.taps = tuple(taps)
        self._stacked: dict[int, dict[str, torch.Tensor]] = {}
        self._prototypes = prototypes

    def _stack(self, factor: int, device: torch.device) -> dict[str, torch.Tensor]:
        # Stacked once per stage: (B, C, P) per tap, one prototype per image.
        if factor not in self._stacked:
            per_image = self._prototypes[factor]
            self._stacked[factor] = {
                t.layer: torch.stack([p[t.layer] for p in per_image]).to(device) for t in self.taps
            }
        return self._stacked[factor]

    def __call__(self, model_input: torch.Tensor, factor: int) -> dict[str, torch.Tensor]:
        """Per-tap weighted sort-matching losses, each (B,)."""
        prototypes = self._stack(factor, model_input.device)
        features = self.tap(model_input)
        return {
            t.layer: t.weight * sort_matching_loss(features[t.layer], prototypes[t.layer])
            for t in self.taps
            if t.weight
        }
