"""Heatmaps as pictures: signed relevance over a greyed copy of the image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

POSITIVE = np.array([220, 20, 20], dtype=np.float32)
NEGATIVE = np.array([30, 80, 230], dtype=np.float32)


def heatmap_image(heatmap: torch.Tensor, pixels: torch.Tensor, scale: float | None = None):
    """Relevance as colour over the image: red for positive, blue for negative.

    Parameters
    ----------
    heatmap
        (H, W) signed relevance.
    pixels
        (3, H, W) image in [0, 1], shown in grey underneath.
    scale
        Relevance shown at full strength (default: the heatmap's largest absolute value).

    Returns
    -------
    PIL.Image.Image
        RGB, the image's size.
    """
    values = heatmap.detach().float().cpu().numpy()
    scale = float(np.abs(values).max()) if scale is None else scale
    strength = np.clip(np.abs(values) / scale, 0, 1) if scale > 0 else np.zeros_like(values)
    grey = pixels.detach().float().cpu().mean(dim=0).numpy() * 255
    base = np.repeat((0.35 * grey + 0.65 * 255)[..., None], 3, axis=2)
    colour = np.where(values[..., None] >= 0, POSITIVE, NEGATIVE)
    alpha = strength[..., None] ** 0.7  # lift faint relevance so that it stays visible
    mixed = (1 - alpha) * base + alpha * colour
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))
