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

``"pyramid"`` (:class:`PyramidPixels`) is lucid's Laplacian pyramid over the same decorrelated
colours, clamped the same way: coarse levels move large regions at the rate the finest level
moves pixels.

``"pixels"`` (:class:`Pixels`) is the image itself, from N(0, 1), clamped after every step: the
authors' setting. The colour decorrelation and the 1/f frequencies are lucid's; the Fourier FV
and MaCo baselines (:mod:`vital.methods`) use them too.

Every parametrisation is built by a factory ``(seeds, resolution, device, preprocessing,
clamp, dtype, colors)``; image ``i`` depends only on ``seeds[i]`` (and ``colors[i]``), so a
batch gives each image what it would get alone. ``colors`` (``Settings.color_start``) moves
each start's mean colour to its references' mean colour: three numbers per image, nothing of
the references' layout; the rest of the start is the seed's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

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


def _as_images(colors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, 3) or (3,) colours as constant images shaped and typed like ``like``."""
    colors = colors.to(like).reshape(-1, 3, 1, 1)
    return colors.expand(like.shape[0], 3, *like.shape[-2:])


class Pixels:
    """The image itself, initialised from N(0, 1) and clamped to valid pixels after each step.

    With ``colors`` ((B, 3) pixel colours), the noise is centred on those colours instead of
    on the normalisation's mean.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        resolution: int,
        device: torch.device,
        preprocessing: Preprocessing,
        clamp: bool = True,
        dtype: torch.dtype = torch.float32,
        colors: torch.Tensor | None = None,
    ):
        self.x = initial_images(seeds, resolution, device, dtype)
        if colors is not None:  # N(0, 1) is noise around the normalisation's mean (input 0)
            self.x += preprocessing.normalize(_as_images(colors, self.x))
        self.x.requires_grad_(True)
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


def _valid_on_cpu(pixels: torch.Tensor) -> bool:
    """True when every pixel is in [0, 1], asked on the CPU only.

    There looking first saves a projection's round trip; on a GPU the look would wait for it.
    """
    return pixels.device.type == "cpu" and bool(((pixels >= 0) & (pixels <= 1)).all())


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
    colors
        (B, 3) pixel colours in [0, 1]: each image's constant term starts at its colour
        instead of grey (the other coefficients as drawn).
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
        colors: torch.Tensor | None = None,
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
        self.coefficients = torch.stack(coefficients).to(device)
        if colors is not None:  # only the constant term: nothing of a layout
            flat = torch.zeros(len(seeds), 3, resolution, resolution, device=device)
            constant = self._coefficients_of(_as_images(colors, flat))
            self.coefficients[:, :, 0, 0] = constant[:, :, 0, 0]
        self.coefficients.requires_grad_(True)

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
        if _valid_on_cpu(pixels):
            return
        self.coefficients.copy_(self._coefficients_of(pixels.clamp(0, 1)))

    def _coefficients_of(self, pixels: torch.Tensor) -> torch.Tensor:
        """The coefficients whose :meth:`pixels` are ``pixels`` (in [0, 1]; the inverse map)."""
        if self.squash == "sigmoid":
            signal = decorrelate_colors(4.0 * torch.logit(pixels, eps=1e-4))
        else:
            signal = decorrelate_colors(pixels - 0.5) / GAIN
        spectrum = torch.fft.rfft2(signal, norm="ortho") / self.scale
        return torch.view_as_real(spectrum)


# --- Laplacian pyramid -----------------------------------------------------------------------

# Pixels per unit of a pyramid level: 1/4 is the slope of lucid's sigmoid at 0, which its
# pyramid is squashed with (lucid's ``laplacian_pyramid`` + ``to_valid_rgb``).
PYRAMID_GAIN = 0.25
# Levels of lucid's pyramid: the full side, a half, a quarter and an eighth of it.
PYRAMID_LEVELS = 4


class PyramidPixels:
    """Images as a Laplacian pyramid of decorrelated colours, clamped like pixels.

    ``pixels = 0.5 + PYRAMID_GAIN · recorrelate(Σ_k upsample(level_k))``, level ``k`` a
    (B, 3, ⌈R/2^k⌉, ⌈R/2^k⌉) tensor upsampled bilinearly to R (lucid's ``laplacian_pyramid``,
    linear and clamped instead of squashed by a sigmoid). Adam moves every level's values at
    about the same rate, so a coarse level's value, shared by a 2^k-pixel block, moves large
    regions as fast as the finest level moves single pixels: coarse structure forms first, as
    with the 1/f spectrum of :class:`FourierPixels`, but local in space. :meth:`project`
    clamps the pixels to [0, 1] and puts the clamp's correction into the finest level (the
    pyramid is overcomplete: that is one of the coefficient sets that make the clamped image).

    Parameters
    ----------
    seeds
        Image ``i``'s levels are drawn from N(0, INITIAL_STD²) with ``seeds[i]``.
    resolution, device, preprocessing, clamp, dtype
        As for :class:`FourierPixels`.
    levels
        Number of levels (the full side, then halved each level).
    colors
        (B, 3) pixel colours in [0, 1]: each image's coarsest level starts at its colour
        (added to the drawn values) instead of grey.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        resolution: int,
        device: torch.device,
        preprocessing: Preprocessing,
        clamp: bool = True,
        levels: int = PYRAMID_LEVELS,
        dtype: torch.dtype = torch.float32,
        colors: torch.Tensor | None = None,
    ):
        self.resolution = resolution
        self.preprocessing = preprocessing
        self.clamp = clamp
        self.dtype = dtype
        sides = [max(1, -(-resolution // 2**k)) for k in range(levels)]
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.levels = [
            torch.stack(
                [torch.randn(3, side, side, generator=g) * INITIAL_STD for g in generators]
            ).to(device)
            for side in sides
        ]
        if colors is not None:  # a constant on the coarsest level: nothing of a layout
            flat = torch.zeros(len(seeds), 3, 1, 1, device=device)
            self.levels[-1] += self._signal_of(_as_images(colors, flat) - 0.5)
        for level in self.levels:
            level.requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        """The levels, finest first."""
        return self.levels

    def pixels(self) -> torch.Tensor:
        """(B, 3, R, R) pixels (in [0, 1] after :meth:`project`)."""
        side = (self.resolution, self.resolution)
        signal = self.levels[0]
        for level in self.levels[1:]:
            signal = signal + F.interpolate(level, side, mode="bilinear", align_corners=False)
        return 0.5 + PYRAMID_GAIN * recorrelate_colors(signal)

    def images(self) -> torch.Tensor:
        """(B, 3, R, R) images in the model's input space."""
        return self.preprocessing.normalize(self.pixels().to(self.dtype))

    @staticmethod
    def _signal_of(pixels_offset: torch.Tensor) -> torch.Tensor:
        """The level values that add ``pixels_offset`` (pixels, not shifted by 0.5)."""
        return decorrelate_colors(pixels_offset) / PYRAMID_GAIN

    @torch.no_grad()
    def project(self) -> None:
        """Clamp the pixels to [0, 1]; the finest level takes the correction."""
        if not self.clamp:
            return
        pixels = self.pixels()
        if _valid_on_cpu(pixels):
            return
        self.levels[0] += self._signal_of(pixels.clamp(0, 1) - pixels)


def _pixels(seeds, resolution, device, preprocessing, clamp, dtype, colors) -> Parametrization:
    return Pixels(seeds, resolution, device, preprocessing, clamp, dtype, colors)


def _fourier(seeds, resolution, device, preprocessing, clamp, dtype, colors) -> FourierPixels:
    return FourierPixels(
        seeds, resolution, device, preprocessing, clamp, dtype=dtype, colors=colors
    )


def _fourier_sigmoid(
    seeds, resolution, device, preprocessing, clamp, dtype, colors
) -> FourierPixels:
    return FourierPixels(
        seeds, resolution, device, preprocessing, clamp, "sigmoid", dtype=dtype, colors=colors
    )


def _pyramid(seeds, resolution, device, preprocessing, clamp, dtype, colors) -> PyramidPixels:
    return PyramidPixels(
        seeds, resolution, device, preprocessing, clamp, dtype=dtype, colors=colors
    )


PARAMETRIZATIONS: dict[str, Factory] = {
    "pixels": _pixels,
    "fourier": _fourier,
    "fourier-sigmoid": _fourier_sigmoid,
    "pyramid": _pyramid,
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
    colors: torch.Tensor | None = None,
) -> Parametrization:
    """The parametrisation registered as ``name``, one image per seed.

    ``colors`` ((B, 3) pixel colours in [0, 1]) moves each image's starting mean colour there.
    """
    check_parametrization(name)
    factory = PARAMETRIZATIONS[name]
    return factory(seeds, resolution, device, preprocessing, clamp, dtype, colors)
