"""Coarse stages: the images a half-resolution stage shows the model, made one way for all.

A coarse stage (setting 0's first stage, ``Settings.coarse_start``) low-passes what the model
sees: the synthetic image's jittered view and, for that stage's prototypes, every reference
view, so that picture and references are matched as equally coarse images. The low-pass is a
2×2 average pooling; ``"pooled"`` shows the model those pooled images (a quarter of the
pixels, a quarter of a step's cost; the model must take other input sizes), ``"blurred"``
upsamples them bilinearly back to the model's own input size (the same coarse content at the
size every model takes, at a full step's cost).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# How a coarse stage's images reach the model (Settings.coarse_view); "auto" is decided per
# model by vital.driver.fit_stages, and is the pooled view where no model decided it.
COARSE_VIEWS = ("pooled", "blurred", "auto")


def coarsen(x: torch.Tensor, factor: int, view: str = "pooled") -> torch.Tensor:
    """``x`` (B, 3, H, W) as a stage of downsample ``factor`` shows it to the model.

    Parameters
    ----------
    x
        Images in the model's normalised input space.
    factor
        The stage's downsample factor (1: ``x`` unchanged).
    view
        ``"pooled"`` (or an undecided ``"auto"``): ``factor``×``factor`` average pooling,
        (B, 3, H/f, W/f); ``"blurred"``: that, upsampled bilinearly back to (H, W).
    """
    if factor == 1:
        return x
    pooled = F.avg_pool2d(x, factor)
    if view != "blurred":
        return pooled
    return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


def coarse_key(factor: int, view: str) -> list[str]:
    """What a cache key adds for a coarse view.

    Nothing for the pooled one (the keys kept so far), the name of the blurred one.
    """
    return [view] if factor > 1 and view == "blurred" else []
