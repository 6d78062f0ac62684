"""MaCo (Fel et al. 2023): optimise only the Fourier phase of the image.

"Unlocking feature visualization for deeper networks with MAgnitude Constrained Optimization".

The magnitude of the (colour-decorrelated) image spectrum is fixed to the average magnitude of
natural images, so the result keeps natural-image power statistics whatever the phase does.
That spectrum is computed here from local images: the embedded photos by default, or any
images the user gives (:func:`natural_spectrum`); nothing is downloaded. Each step the
objective is averaged over random crops of the image (box size shrinking linearly over the
run) with added noise, and |∂L/∂image| accumulated over the run gives the transparency map.

As in the reference implementation (Xplique), the image is a 512 px canvas and the crops,
resized to the model's input size, shrink from 50 % to 5 % of its side; the final image is
scored and shown resized to the model's input. Differences: fewer crops per step (4, not 32:
CPU cost), and Adam with the loop's schedule instead of Nadam at a constant rate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vital.errors import VitalError
from vital.methods.activation import (
    Activation,
    SeededViews,
    activation_objective,
    affine_views,
    grey,
    squashed,
    uniform,
)
from vital.methods.base import Method, check_settings_for, resolution_of, target_plan
from vital.optimize import Settings
from vital.parametrizations import decorrelate_colors
from vital.references import SAMPLE_PHOTOS, ReferenceSet, from_folder, sample_photo
from vital.targets import Channel, ClassTarget, Direction
from vital.zoo import Model, Preprocessing


def natural_spectrum(images: Iterable[torch.Tensor], resolution: int) -> torch.Tensor:
    """Mean magnitude of the real FFT of colour-decorrelated images.

    Parameters
    ----------
    images
        (3, R, R) pixel tensors in [0, 1].
    resolution
        Their side R.

    Returns
    -------
    torch.Tensor
        (3, R, R//2+1) average magnitudes.
    """
    total, count = None, 0
    for image in images:
        if image.shape != (3, resolution, resolution):
            raise VitalError(
                f"spectrum images must be (3, {resolution}, {resolution}), got "
                f"{tuple(image.shape)}."
            )
        decorrelated = decorrelate_colors(image[None].double() - 0.5)[0]
        decorrelated = decorrelated - decorrelated.mean(dim=(1, 2), keepdim=True)
        magnitude = torch.fft.rfft2(decorrelated).abs()
        total = magnitude if total is None else total + magnitude
        count += 1
    if total is None:
        raise VitalError("no images to compute the natural-image spectrum from.")
    return (total / count).float()


def spectrum_images(source: str | Path | ReferenceSet | None, count: int = 32) -> ReferenceSet:
    """Images for the spectrum: a folder, a reference set, or (``None``) the embedded photos."""
    if isinstance(source, ReferenceSet):
        return source
    if source is None:
        photos = tuple(sample_photo(name) for name in SAMPLE_PHOTOS)
        return ReferenceSet(photos, max(count, len(photos)), 0, "all embedded photos")
    return from_folder(source, count)


def _self_conjugate_columns(width: int) -> list[int]:
    """Columns of a real FFT whose coefficients pair with others in the same column."""
    return [0, width // 2] if width % 2 == 0 else [0]


class MagnitudeConstrainedImage:
    """Images whose decorrelated spectrum has a fixed magnitude; only the phase is trainable.

    The magnitude is made Hermitian-consistent (symmetric along the self-conjugate columns, no
    DC term) and scaled so that every image has zero mean and unit variance over its three
    decorrelated channels (Parseval); the phase is standardised per image (as in MaCo) and
    made odd along the self-conjugate columns. Together these make the inverse FFT exact: the
    real image's spectrum has exactly the fixed magnitude.

    Parameters
    ----------
    magnitude
        (3, R, R//2+1) natural-image magnitudes (see :func:`natural_spectrum`).
    seeds
        One seed per image: its phase starts from N(0, 1) with that seed.
    device
        Where to optimise.
    preprocessing
        The model's normalisation.
    dtype
        Floating-point type (the model's).
    """

    def __init__(
        self,
        magnitude: torch.Tensor,
        seeds: Sequence[int],
        device: torch.device,
        preprocessing: Preprocessing,
        dtype: torch.dtype = torch.float32,
    ):
        channels, height, half = magnitude.shape
        self.side = (height, (half - 1) * 2)
        self.preprocessing = preprocessing
        self._mirror = (-torch.arange(height)) % height
        self._columns = _self_conjugate_columns(self.side[1])
        magnitude = magnitude.double().clone()
        for column in self._columns:
            magnitude[:, :, column] = (
                magnitude[:, :, column] + magnitude[:, self._mirror, column]
            ) / 2
        magnitude[:, 0, 0] = 0.0
        weights = torch.full((half,), 2.0, dtype=torch.float64)
        weights[self._columns] = 1.0
        pixels = height * self.side[1]
        variance = (weights * magnitude**2).sum() / (channels * pixels * pixels)
        self.magnitude = (magnitude / variance.sqrt()).to(device, dtype)
        phases = [
            torch.randn(magnitude.shape, generator=torch.Generator().manual_seed(seed))
            for seed in seeds
        ]
        self.phase = torch.stack(phases).to(device, dtype).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        """The phase."""
        return [self.phase]

    def spectrum(self) -> torch.Tensor:
        """(B, 3, R, R//2+1) complex spectra with the fixed magnitude."""
        phase = self.phase - self.phase.mean(dim=(1, 2, 3), keepdim=True)
        phase = phase / (phase.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        odd = torch.zeros_like(phase)
        for column in self._columns:
            values = phase[..., column]
            odd[..., column] = (values - values[..., self._mirror]) / 2 - values
        phase = phase + odd  # replaces the self-conjugate columns by their odd part
        return torch.polar(self.magnitude.expand_as(phase), phase)

    def decorrelated(self) -> torch.Tensor:
        """The images before colour recorrelation and sigmoid, (B, 3, R, R)."""
        return torch.fft.irfft2(self.spectrum(), s=self.side)

    def images(self) -> torch.Tensor:
        """(B, 3, R, R) images in the model's input space."""
        return squashed(self.decorrelated(), self.preprocessing)

    def project(self) -> None:
        """Nothing to do: the magnitude is fixed by construction."""


class RandomCrops(SeededViews):
    """MaCo's views: square crops around a jittered centre, upsampled, with added noise.

    Parameters
    ----------
    seeds
        See :class:`~vital.methods.activation.SeededViews`.
    steps
        Length of the run (the box size shrinks linearly over it).
    crops
        Crops per image per step.
    box
        Crop side as a fraction of the image side at the first and last step.
    noise
        Noise strength in pixel units (Gaussian of this std plus uniform of this width).
    preprocessing
        The model's normalisation (noise is scaled into its input space); the crops are
        resized to its input size.
    """

    offset = 2_000_003

    def __init__(
        self,
        seeds: Sequence[int],
        steps: int,
        crops: int,
        box: tuple[float, float],
        noise: float,
        preprocessing: Preprocessing,
    ):
        super().__init__(seeds)
        self.steps = steps
        self.crops = crops
        self.box = box
        self.noise = noise
        self.fill = grey(preprocessing)
        self.std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
        self.size = preprocessing.input_size
        self.step = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) → (B·crops, 3, R, R)."""
        progress = min(self.step / max(self.steps - 1, 1), 1.0)
        mean_box = self.box[0] + (self.box[1] - self.box[0]) * progress
        self.step += 1
        side, shift, noise = [], [], []
        for generator in self.generators:
            box = mean_box + 0.05 * torch.randn(self.crops, generator=generator)
            side.append(box.clamp(0.05, 1.0))
            shift.append(0.3 * torch.randn(self.crops, 2, generator=generator))
            gaussian = torch.randn((self.crops, 3, self.size, self.size), generator=generator)
            flat = uniform(generator, gaussian.numel(), -0.5, 0.5).view_as(gaussian)
            noise.append(gaussian + flat)
        crops = affine_views(
            x.repeat_interleave(self.crops, dim=0),
            1.0 / torch.cat(side),
            torch.zeros(x.shape[0] * self.crops),
            torch.cat(shift),
            self.fill,
            self.size,
        )
        return crops + torch.cat(noise).to(x) * self.noise / self.std.to(x)


@dataclass
class Maco(Method):
    """MaCo: activation maximisation of the Fourier phase under a natural-image magnitude.

    Attributes
    ----------
    spectrum_source
        Images for the natural-image magnitude: a folder, a :class:`ReferenceSet`, or ``None``
        for all embedded photos (centre crops plus random crops, 32 views).
    canvas
        Side of the optimised image (Xplique: 512); ``None`` for the model's input size.
    crops
        Crops per image per step (Xplique: 32).
    box_start, box_end
        Crop side as a fraction of the canvas at the first and last step (Xplique: 0.5, 0.05).
    noise
        Noise strength in pixels (Xplique: 0.08 on a [-1, 1] range, i.e. 0.04 here).
    """

    spectrum_source: str | Path | ReferenceSet | None = None
    canvas: int | None = 512
    crops: int = 4
    box_start: float = 0.5
    box_end: float = 0.05
    noise: float = 0.04
    _spectra: dict = field(default_factory=dict, repr=False)

    name = "maco"
    targets = (ClassTarget, Channel, Direction)
    has_transparency = True

    def default_settings(self, model: Model, setting: int | str | None = None) -> Settings:
        """Adam at lr 1.0 on the phase (Xplique: Nadam 1.0), 256 steps, no jitter."""
        check_settings_for(self, setting)
        return Settings(
            steps=256,
            lr=1.0,
            betas=(0.9, 0.999),
            warmup=10,
            jitter=0,
            clamp=False,
            resolution=self.canvas,
        )

    def spectrum(self, resolution: int) -> torch.Tensor:
        """The natural-image magnitude at ``resolution`` (computed once per resolution)."""
        if resolution not in self._spectra:
            images = spectrum_images(self.spectrum_source)
            self._spectra[resolution] = natural_spectrum(images.views(resolution), resolution)
        return self._spectra[resolution]

    def parametrization(
        self, model: Model, seeds: Sequence[int], settings: Settings, plans: Sequence = ()
    ) -> MagnitudeConstrainedImage:
        """Phases of one image per seed, with the natural magnitude."""
        resolution = resolution_of(model, settings)
        return MagnitudeConstrainedImage(
            self.spectrum(resolution), seeds, model.device, model.preprocessing, model.dtype
        )

    @contextlib.contextmanager
    def objective(
        self, model: Model, plans: Sequence, settings: Settings, seeds: Sequence[int]
    ) -> Iterator[Activation]:
        """The target's activation averaged over random noisy crops."""
        views = RandomCrops(
            seeds,
            settings.steps,
            self.crops,
            (self.box_start, self.box_end),
            self.noise,
            model.preprocessing,
        )
        with activation_objective(model, target_plan(plans), views) as objective:
            yield objective

    def options(self, references: ReferenceSet | None = None) -> dict:
        """The options, for records (MACO takes no reference set: ``references`` is unused)."""
        source = self.spectrum_source
        description = source.summary() if isinstance(source, ReferenceSet) else source
        return {
            "spectrum_source": str(description or "all embedded photos (32 views)"),
            "canvas": self.canvas,
            "crops": self.crops,
            "box_start": self.box_start,
            "box_end": self.box_end,
            "noise": self.noise,
        }
