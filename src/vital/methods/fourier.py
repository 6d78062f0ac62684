"""Fourier feature visualisation (Olah et al. 2017, "Feature Visualization", Distill; lucid/lucent).

Activation maximisation of the target (class logit or channel mean) with the image
parametrised by its Fourier coefficients, scaled by 1/frequency so that Adam's steps are
spectrally whitened, colours decorrelated by ImageNet's colour covariance, a sigmoid to keep
pixels valid, and transformation robustness: every step the model sees the image jittered
(circular shift, by the loop), zoomed out into a grey frame, randomly scaled and rotated, and
shifted again (lucent's ``standard_transforms``: pad 12, jitter 8, scale 0.9–1.1, rotate
±10°, jitter 4).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from vital.methods.activation import (
    Activation,
    SeededViews,
    activation_objective,
    affine_views,
    grey,
    uniform,
)
from vital.methods.base import Method, check_settings_for, resolution_of, target_plan
from vital.optimize import Settings
from vital.parametrizations import FourierPixels
from vital.targets import Channel, ClassTarget, Direction
from vital.zoo import Model


class RobustViews(SeededViews):
    """lucent's standard transforms as one affine warp per view: frame, scale, rotate, shift.

    Parameters
    ----------
    seeds
        See :class:`~vital.methods.activation.SeededViews`.
    fill
        (3,) value of the frame (grey in the model's input space).
    resolution
        Image side, for the pad and shift in pixels.
    pad, scales, degrees, shift
        Grey frame width, scale range, rotation range and final jitter, in pixels / degrees.
    views
        Views of each image per step (their activations are averaged).
    """

    offset = 1_000_003

    def __init__(
        self,
        seeds: Sequence[int],
        fill: torch.Tensor,
        resolution: int,
        pad: int = 12,
        scales: tuple[float, float] = (0.9, 1.1),
        degrees: float = 10.0,
        shift: int = 4,
        views: int = 1,
    ):
        super().__init__(seeds)
        self.fill = fill
        self.frame = resolution / (resolution + 2 * pad)
        self.scales = scales
        self.degrees = degrees
        self.shift = 2 * shift / resolution
        self.views = views

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) → (B·views, 3, R, R), the views of image ``i`` next to each other."""
        scale, angle, shift = [], [], []
        for generator in self.generators:
            scale.append(self.frame * uniform(generator, self.views, *self.scales))
            angle.append(uniform(generator, self.views, -self.degrees, self.degrees))
            shift.append(uniform(generator, 2 * self.views, -self.shift, self.shift))
        return affine_views(
            x.repeat_interleave(self.views, dim=0),
            torch.cat(scale),
            torch.cat(angle) * math.pi / 180,
            torch.cat(shift).view(-1, 2),
            self.fill,
        )


@dataclass
class Fourier(Method):
    """Fourier FV: activation maximisation in a Fourier, colour-decorrelated parametrisation.

    Attributes
    ----------
    decay_power
        Exponent of the 1/f scaling of the coefficients.
    views
        Transformed views per image per step.
    pad, scale_low, scale_high, degrees, shift
        Transformation robustness (see :class:`RobustViews`).
    """

    decay_power: float = 1.0
    views: int = 1
    pad: int = 12
    scale_low: float = 0.9
    scale_high: float = 1.1
    degrees: float = 10.0
    shift: int = 4

    name = "fourier"
    targets = (ClassTarget, Channel, Direction)

    def default_settings(self, model: Model, setting: int | str | None = None) -> Settings:
        """Adam as in lucent (lr 0.05, default betas) with a short warm-up and cosine decay."""
        check_settings_for(self, setting)
        return Settings(steps=512, lr=0.05, betas=(0.9, 0.999), warmup=10, jitter=8, clamp=False)

    def parametrization(
        self, model: Model, seeds: Sequence[int], settings: Settings, plans: Sequence = ()
    ) -> FourierPixels:
        """Fourier coefficients of one image per seed, squashed by lucid's sigmoid."""
        resolution = resolution_of(model, settings)
        return FourierPixels(
            seeds,
            resolution,
            model.device,
            model.preprocessing,
            clamp=False,
            squash="sigmoid",
            decay_power=self.decay_power,
            dtype=model.dtype,
        )

    @contextlib.contextmanager
    def objective(
        self, model: Model, plans: Sequence, settings: Settings, seeds: Sequence[int]
    ) -> Iterator[Activation]:
        """The target's activation on robust views."""
        views = RobustViews(
            seeds,
            grey(model.preprocessing),
            resolution_of(model, settings),
            self.pad,
            (self.scale_low, self.scale_high),
            self.degrees,
            self.shift,
            self.views,
        )
        with activation_objective(model, target_plan(plans), views) as objective:
            yield objective
