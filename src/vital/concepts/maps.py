"""Where a concept sits on an image: its coefficient at every position, as a picture.

A concept's map is its non-negative least-squares coefficient at each position of the layer's
output (:meth:`~vital.concepts.discovery.ConceptBasis.position_coefficients`): exactly zero
where the activations there need none of it. Maps are upsampled to the image (bilinear) and
drawn over a greyed copy of it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vital.explanation.images import heatmap_image


def grid_of(coefficients: np.ndarray) -> np.ndarray:
    """(K, P) → (K, h, w) square maps.

    A transformer's leading extra tokens (a class token) are dropped to leave the patch grid.
    """
    positions = coefficients.shape[1]
    side = math.isqrt(positions)
    return coefficients[:, positions - side * side :].reshape(-1, side, side)


def upsampled(grid: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) map → (H, W) bilinear; zero wherever the map and its neighbours are zero."""
    tensor = torch.as_tensor(grid, dtype=torch.float32)[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].clamp_min(0)


def map_image(grid: np.ndarray, pixels: torch.Tensor, scale: float | None = None) -> Image.Image:
    """One concept's map over the image (red where it sits, the greyed image where it does not).

    ``scale``: the coefficient shown at full strength (default: the map's largest).
    """
    values = upsampled(grid, tuple(pixels.shape[-2:]))
    return heatmap_image(values, pixels, scale)
