"""What the loop optimises: parametrisations of the synthetic images, registered by name.

The sort-matching loss does not care how an image is parametrised; the optimiser does. Adam on
raw pixels (``"pixels"``, the authors' setting) gives every pixel the same step size, so high
frequencies, to which a CNN's early features are most sensitive, change as fast as the layout
and a short run ends full of pixel noise. A *decorrelated* parametrisation (Olah et al. 2017,
"Feature Visualization"; lucid/lucent, MaCo) writes the image as Fourier coefficients scaled by
1/frequency and colours decorrelated by ImageNet's colour covariance: Adam's steps are then
roughly whitened for natural images, and coarse structure forms first.

``"fourier"`` keeps the parametrisation *linear* (no sigmoid) and keeps pixels valid the way
the authors' loop does, by clamping: :meth:`FourierPixels.project` clamps the image to [0, 1]
and writes the clamped image back into the coefficients (the map is a bijection on real
images). ``"fourier-sigmoid"`` is the lucid original (a sigmoid squashes the image); it is kept
to compare with: its saturating sigmoid over-contrasts VITAL's images.

``"pixels"`` (:class:`Pixels`) is the image itself, from N(0, 1), clamped after every step: the
authors' setting. The colour decorrelation and the 1/f frequencies are lucid's; the Fourier FV
and MaCo baselines (:mod:`vital.methods`) use them too.

Every parametrisation is built by a factory ``(seeds, resolution, device, preprocessing,
settings, dtype)``; image ``i`` depends only on ``seeds[i]``, so a batch gives each image what
it would get alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from vital.errors import VitalError
from vital.zoo import Preprocessing


class Parametrization(Protocol):
    """What the loop optimises: trainable tensors and the images they make.

    The default is :class:`Pixels` (the image itself); the baselines use Fourier
    parametrisations (:mod:`vital.parametrizations`).
    """

    def parameters(self) -> list[torch.Tensor]:
        """The tensors Adam updates."""
        ...

    def images(self) -> torch.Tensor:
        """The current images, (B, 3, R, R) in the model's normalised input space."""
        ...

    def project(self) -> None:
        """Called after every step (e.g. to clamp); may do nothing."""
        ...


Factory = Callable[..., Parametrization]

# Standard deviation of the initial coefficients (lucid's): a near-grey start with a faint
# 1/f texture, so the first steps set the layout rather than fight initial noise.
INITIAL_STD = 0.01
# Pixels per unit of decorrelated signal: 1/16 is the slope of lucid's sigmoid(z / 4) at 0,
# so a learning rate means the same for "fourier" as for "fourier-sigmoid" near grey.
GAIN = 1.0 / 16.0


# --- colours and frequencies (lucid's, also the baselines') ------------------------------------

# The square root of ImageNet's colour covariance (Olah et al. 2017; lucid), each column
# scaled by the largest column norm: decorrelated colours times this matrix give RGB.
_COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
)
COLOR_CORRELATION = (
    _COLOR_CORRELATION_SVD_SQRT / _COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()
).T.contiguous()


def recorrelate_colors(decorrelated: torch.Tensor) -> torch.Tensor:
    """Map (B, 3, H, W) decorrelated colours to RGB (before the sigmoid)."""
    matrix = COLOR_CORRELATION.to(decorrelated)
    return torch.einsum("bchw,cd->bdhw", decorrelated, matrix)


def decorrelate_colors(rgb: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`recorrelate_colors`."""
    inverse = torch.linalg.inv(COLOR_CORRELATION.double()).to(rgb)
    return torch.einsum("bchw,cd->bdhw", rgb, inverse)


def frequencies(height: int, width: int) -> torch.Tensor:
    """|f| of every coefficient of a real 2-D FFT of a (height, width) image, (H, W//2+1)."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


# --- pixels (the authors') ---------------------------------------------------------------------


def initial_images(
    seeds: Sequence[int],
    resolution: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, 1) images in the normalised space, one per seed.

    Drawn on the CPU, so a seed gives the same start on every device.
    """
    images = [
        torch.randn(3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
        for seed in seeds
    ]
    return torch.stack(images).to(device=device, dtype=dtype)


class Pixels:
    """The image itself, initialised from N(0, 1) and clamped to valid pixels after each step."""

    def __init__(
        self,
        seeds: Sequence[int],
        resolution: int,
        device: torch.device,
        preprocessing: Preprocessing,
        clamp: bool = True,
        dtype: torch.dtype = torch.float32,
    ):
        self.x = initial_images(seeds, resolution, device, dtype).requires_grad_(True)
        self.low, self.high = preprocessing.bounds(self.x)
        self.clamp = clamp

    def parameters(self) -> list[torch.Tensor]:
        """The pixels."""
        return [self.x]

    def images(self) -> torch.Tensor:
        """The pixels (a leaf tensor)."""
        return self.x

    def project(self) -> None:
        """Clamp every colour channel to the range that maps to [0, 1] pixels."""
        if self.clamp:
            with torch.no_grad():
                self.x.copy_(torch.maximum(torch.minimum(self.x, self.high), self.low))


# --- Fourier ------------------------------------------------------------------------------------


def spectrum_scale(resolution: int, decay_power: float = 1.0) -> torch.Tensor:
    """1/|f|^decay_power for every coefficient of a real 2-D FFT, (R, R//2+1).

    Frequencies below one cycle per image are counted as one cycle (lucid's convention), so
    the constant term is scaled like the lowest frequency.
    """
    return 1.0 / frequencies(resolution, resolution).clamp_min(1.0 / resolution) ** decay_power


class FourierPixels:
    """Images as 1/f-scaled Fourier coefficients of decorrelated colours, clamped like pixels.

    ``pixels = 0.5 + GAIN · recorrelate(irfft2(c · scale))``, then normalised for the model.
    After every step :meth:`project` clamps the pixels to [0, 1] (or, without ``clamp``,
    nothing) and writes the clamped image back into ``c``.

    Parameters
    ----------
    seeds
        Image ``i``'s coefficients are drawn from N(0, INITIAL_STD²) with ``seeds[i]``.
    resolution
        Side of the images.
    device
        Where the coefficients live.
    preprocessing
        The model's normalisation (images are returned in its input space).
    clamp
        Keep pixels in [0, 1] after every step.
    squash
        ``"clamp"`` (the linear map above) or ``"sigmoid"`` (lucid's
        ``sigmoid(recorrelate(irfft2(c · scale)) / 4)``; nothing to project).
    decay_power
        Exponent of the 1/f scaling.
    dtype
        Floating-point type of the images (the model's); coefficients stay float32.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        resolution: int,
        device: torch.device,
        preprocessing: Preprocessing,
        clamp: bool = True,
        squash: str = "clamp",
        decay_power: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ):
        if squash not in ("clamp", "sigmoid"):
            raise VitalError(f"unknown squashing {squash!r}; choose 'clamp' or 'sigmoid'.")
        self.resolution = resolution
        self.preprocessing = preprocessing
        self.clamp = clamp
        self.squash = squash
        self.dtype = dtype
        self.scale = spectrum_scale(resolution, decay_power).to(device)
        shape = (3, resolution, resolution // 2 + 1, 2)
        coefficients = [
            torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * INITIAL_STD
            for seed in seeds
        ]
        self.coefficients = torch.stack(coefficients).to(device).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        """The real and imaginary parts of the coefficients, (B, 3, R, R//2+1, 2)."""
        return [self.coefficients]

    def _signal(self, coefficients: torch.Tensor) -> torch.Tensor:
        spectrum = torch.view_as_complex(coefficients) * self.scale
        side = (self.resolution, self.resolution)
        return recorrelate_colors(torch.fft.irfft2(spectrum, s=side, norm="ortho"))

    def pixels(self) -> torch.Tensor:
        """(B, 3, R, R) pixels (in [0, 1] after :meth:`project`)."""
        signal = self._signal(self.coefficients)
        if self.squash == "sigmoid":
            return torch.sigmoid(signal / 4.0)
        return 0.5 + GAIN * signal

    def images(self) -> torch.Tensor:
        """(B, 3, R, R) images in the model's input space."""
        return self.preprocessing.normalize(self.pixels().to(self.dtype))

    @torch.no_grad()
    def project(self) -> None:
        """Clamp the pixels to [0, 1] and store the clamped image's coefficients."""
        if self.squash == "sigmoid" or not self.clamp:
            return
        pixels = self.pixels()
        # On the CPU looking first saves the FFT round trip; on a GPU the look would wait for it.
        if pixels.device.type == "cpu" and bool(((pixels >= 0) & (pixels <= 1)).all()):
            return
        signal = decorrelate_colors(pixels.clamp(0, 1) - 0.5) / GAIN
        spectrum = torch.fft.rfft2(signal, norm="ortho") / self.scale
        self.coefficients.copy_(torch.view_as_real(spectrum))


def _pixels(seeds, resolution, device, preprocessing, clamp, dtype) -> Parametrization:
    return Pixels(seeds, resolution, device, preprocessing, clamp, dtype)


def _fourier(seeds, resolution, device, preprocessing, clamp, dtype) -> FourierPixels:
    return FourierPixels(seeds, resolution, device, preprocessing, clamp, dtype=dtype)


def _fourier_sigmoid(seeds, resolution, device, preprocessing, clamp, dtype) -> FourierPixels:
    return FourierPixels(seeds, resolution, device, preprocessing, clamp, "sigmoid", dtype=dtype)


PARAMETRIZATIONS: dict[str, Factory] = {
    "pixels": _pixels,
    "fourier": _fourier,
    "fourier-sigmoid": _fourier_sigmoid,
}


def check_parametrization(name: str) -> None:
    """Raise a :class:`VitalError` unless ``name`` is a registered parametrisation."""
    if name not in PARAMETRIZATIONS:
        raise VitalError(
            f"unknown parametrization {name!r}; choose one of {', '.join(PARAMETRIZATIONS)}."
        )


def create(
    name: str,
    seeds: Sequence[int],
    resolution: int,
    device: torch.device,
    preprocessing: Preprocessing,
    *,
    clamp: bool,
    dtype: torch.dtype = torch.float32,
) -> Parametrization:
    """The parametrisation registered as ``name``, one image per seed."""
    check_parametrization(name)
    factory = PARAMETRIZATIONS[name]
    return factory(seeds, resolution, device, preprocessing, clamp, dtype)
