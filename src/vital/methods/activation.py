"""What the activation-maximisation baselines share: their objective, robustness views, colours.

Fourier FV, MaCo and DeepInversion maximise the target's activation (the class logit, or a
channel's or direction's mean activation at its layer) on transformed views of the image; VITAL
matches feature distributions instead. The baselines run through the same driver as VITAL
(:mod:`vital.driver`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.parametrizations import recorrelate_colors
from vital.taps import tapped
from vital.targets import Channel, ClassTarget, Direction
from vital.zoo import Model, Preprocessing

ActivationTarget = ClassTarget | Channel | Direction


def squashed(decorrelated: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Decorrelated colours → RGB → sigmoid (valid pixels) → the model's input space."""
    return preprocessing.normalize(torch.sigmoid(recorrelate_colors(decorrelated)))


class SeededViews:
    """Transformed views of each image, drawn from the image's own random stream.

    Subclasses take ``seeds`` (one per image of the batch) first and set ``offset``, which keeps
    their streams apart from the others a seed starts: so a batch gives each image the views it
    would get alone.
    """

    offset: ClassVar[int] = 0

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(self.offset + seed) for seed in seeds]


# --- objectives -------------------------------------------------------------------------------


class Activation:
    """Minus the target's activation: the class logit, or a channel's (direction's) mean activation.

    Parameters
    ----------
    model
        The explained model.
    targets
        One target per image of the batch.
    tap
        An attached feature tap reading every channel or direction target's layer (``None``
        when all targets are classes).
    views
        Views made from each image before the model sees them (robustness transforms); each
        image's activation is averaged over its views.
    """

    def __init__(self, model: Model, targets: Sequence[ActivationTarget], tap=None, views=None):
        self.model = model
        self.targets = tuple(targets)
        self.tap = tap
        self.views = views

    def activation(self, model_input: torch.Tensor) -> torch.Tensor:
        """Each image's target activation (B,) (averaged over its views)."""
        batch = model_input.shape[0]
        x = self.views(model_input) if self.views is not None else model_input
        per_image = x.shape[0] // batch
        targets = [t for t in self.targets for _ in range(per_image)]
        if self.tap is None:
            logits = self.model.module(x)
            indices = torch.tensor([t.index for t in targets], device=x.device)
            values = logits.gather(1, indices[:, None])[:, 0]
        else:
            features = self.tap(x)
            values = torch.stack(
                [_mean_activation(features[t.layer][i], t) for i, t in enumerate(targets)]
            )
        return values.view(batch, per_image).mean(dim=1)

    def __call__(self, model_input: torch.Tensor, factor: int) -> dict[str, torch.Tensor]:
        """``{"activation": -activation}`` per image (the loop minimises)."""
        return {"activation": -self.activation(model_input)}


def _mean_activation(features: torch.Tensor, target: Channel | Direction) -> torch.Tensor:
    """A channel's (or a direction's projection's) mean over the positions of (C, P) features."""
    if isinstance(target, Channel):
        return features[target.index].mean()
    direction = torch.as_tensor(target.vector(features.shape[0])).to(features)
    return (direction @ features).mean()


@contextlib.contextmanager
def activation_objective(
    model: Model, targets: Sequence[ActivationTarget], views=None
) -> Iterator[Activation]:
    """An :class:`Activation` objective with the taps its inner targets need attached."""
    layers = sorted({t.layer for t in targets if not isinstance(t, ClassTarget)})
    if not layers:
        yield Activation(model, targets, None, views)
        return
    if any(isinstance(t, ClassTarget) for t in targets):
        raise VitalError("mix of class and channel targets in one batch; run them separately.")
    with tapped(model.module, layers, stop_early=True) as tap:
        yield Activation(model, targets, tap, views)


# --- robustness views -------------------------------------------------------------------------


def affine_views(
    x: torch.Tensor,
    scale: torch.Tensor,
    angle: torch.Tensor,
    shift: torch.Tensor,
    fill: torch.Tensor,
    size: int | None = None,
) -> torch.Tensor:
    """Zoom, rotate and shift each image about its centre; what falls outside is ``fill``.

    Parameters
    ----------
    x
        (N, 3, H, W) images.
    scale
        (N,) zoom factors: 2 shows the central half magnified, 0.5 shrinks the image in a frame.
    angle
        (N,) rotations in radians.
    shift
        (N, 2) offsets of the view's centre in units of the image's half side.
    fill
        (3,) value shown outside the image (e.g. grey in the model's input space).
    size
        Side of the views (default: the images' side).
    """
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], 1
    ).to(x)
    side = size or x.shape[-1]
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], side, side], align_corners=False)
    fill = fill.to(x).view(1, 3, 1, 1)
    return F.grid_sample(x - fill, grid, align_corners=False, padding_mode="zeros") + fill


def grey(preprocessing: Preprocessing) -> torch.Tensor:
    """Pixel value 0.5 in the model's input space, (3,)."""
    return preprocessing.normalize(torch.full((1, 3, 1, 1), 0.5)).view(3)


def uniform(generator: torch.Generator, count: int, low: float, high: float) -> torch.Tensor:
    """``count`` draws from U(low, high)."""
    return low + (high - low) * torch.rand(count, generator=generator)
