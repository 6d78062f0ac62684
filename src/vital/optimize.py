"""The optimisation loop shared by every VITAL target (METHOD.md section 1, "Optimisation").

The loop knows images, schedules, jitter and priors; what the image should match comes from an
*objective*: a callable that maps a batch of model inputs to per-image loss terms. Each image in
the batch is an independent problem with its own seed, so a batch of targets gives each target
the result it would get alone (up to floating-point summation order).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import gc
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from vital import losses
from vital.errors import VitalError, is_number, plain
from vital.parametrizations import Parametrization, check_parametrization, create
from vital.progress import progress_bar
from vital.scales import COARSE_VIEWS, coarsen
from vital.zoo import Preprocessing

# An objective maps (model input (B, 3, h, w), downsample factor) to named (B,) loss terms.
Objective = Callable[[torch.Tensor, int], dict[str, torch.Tensor]]

# A term ``map:NAME`` stands in for the objective's term NAME in the transparency map and is
# not part of the picture's loss. An objective returns such terms only while its ``map_terms``
# attribute is set, which the loop does (where it exists) while the map accumulates.
MAP_TERM = "map:"


@dataclass(frozen=True)
class Settings:
    """Optimisation settings; defaults are the authors' "setting 1" (METHOD.md section 1).

    Attributes
    ----------
    steps
        Steps at full resolution.
    half_resolution_steps
        Steps before those at half resolution (2×2 average pooling, jitter halved); setting 0.
    coarse_start
        Share of ``steps`` run first as a coarse stage (coarse to fine: the layout forms on
        low-passed images, then the details): 0.3 of 100 steps is 30 coarse steps, then 70.
        The picture and, for that stage's prototypes, the references are 2×2 average-pooled
        (jitter halved), as in setting 0's first stage; ``coarse_view`` says how the pooled
        images reach the model.
    coarse_view
        ``"pooled"``: the model sees the pooled images (a quarter of the pixels, about a
        quarter of a step's cost; the model must take other input sizes); ``"blurred"``: they
        are upsampled bilinearly back to the model's input size (any model takes them, at a
        full step's cost); ``"auto"``: pooled where the model takes them, else blurred (one
        probe pass decides, :func:`vital.driver.fit_stages`; pooled where no model decides).
    lr, betas, eps
        Adam's parameters; ``lr`` is the peak of the schedule.
    warmup
        Steps of linear warm-up before the half-cosine decay (at most a quarter of a stage).
    jitter
        Largest random circular shift in pixels, both axes.
    views
        Jittered (and flipped, warped) views of each image per step; the loss is their mean,
        the same loss with a less noisy estimate of its expectation over the jitter. Each
        view costs a forward and backward pass (1 in the authors' settings).
    flip
        Random horizontal flips (p = 0.5).
    clamp
        Keep every pixel in [0, 1] after each step.
    tv_l2, tv_l1, l2
        Strengths of the image priors.
    feature_weight
        Overall factor on the sum of the feature terms.
    resolution
        Side of the synthetic image; ``None`` for the model's input size.
    seed
        Seed of the first image; image ``i`` of a batch uses ``seed + i``.
    parametrization
        What Adam optimises, by name (:data:`vital.parametrizations.PARAMETRIZATIONS`):
        ``"pixels"`` (the authors'), ``"fourier"`` (1/f-scaled decorrelated spectrum, clamped),
        ``"pyramid"`` (a Laplacian pyramid of decorrelated colours, clamped).
    zoom
        (low, high) range of a random zoom of each step's jittered image (1 = none); with
        ``rotate``, one bilinear warp with mirrored borders.
    rotate
        Largest random rotation of each step's jittered image, in degrees (0 = none).
    rotate_falls
        Let the rotation's range fall linearly from ``rotate`` to 0 over the full-resolution
        steps (it stays ``rotate`` in a coarse stage): robust to rotation while the layout
        forms, matched unrotated at the end, where the picture is scored. On in ``fast``.
    precision
        ``"float32"``, or ``"bfloat16"``: the model's forward (and so its backward) under
        autocast, for GPUs; sorts, losses and the image stay float32.
    channels_last
        Run the model in the channels-last memory format (faster convolutions on GPUs).
    compile
        Compile the objective with ``torch.compile`` (the first steps pay the compilation).
        Inner units only with the ``grad-x-act`` relevance backend: the others' rules are hooks
        that ``torch.compile`` cannot trace (refused).
    near_tap
        Inner units only: besides the default taps below the target, also match the module just
        below it (the deepest one that finishes before the target starts). Off in the authors'
        settings; on in ``fast``, where the target otherwise fires at a fraction of its
        references' activation (benchmarks/RESULTS.md, "Inner units in 300 steps").
    color_start
        Start each picture at its references' mean colour (the parametrisation's constant
        term; the rest of the start is the seed's as usual): three numbers per picture,
        nothing of the references' layout. Off in the authors' settings; on in ``fast``, whose
        short run otherwise ends near its grey start (benchmarks/RESULTS.md, "`fast` in 100
        steps").
    """

    steps: int = 2000
    half_resolution_steps: int = 0
    coarse_start: float = 0.0
    coarse_view: str = "pooled"
    lr: float = 1.0
    betas: tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-8
    warmup: int = 100
    jitter: int = 30
    views: int = 1
    flip: bool = False
    clamp: bool = True
    tv_l2: float = 0.0
    tv_l1: float = 0.0
    l2: float = 0.0
    feature_weight: float = 1.0
    resolution: int | None = None
    seed: int = 0
    parametrization: str = "pixels"
    zoom: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0
    rotate_falls: bool = False
    precision: str = "float32"
    channels_last: bool = False
    compile: bool = False
    near_tap: bool = False
    color_start: bool = False

    @classmethod
    def setting(cls, number: int | str, **overrides) -> Settings:
        """The authors' settings 0, 1 and 2, or ``"fast"``, with overrides.

        ``"fast"`` reaches in 300 steps more than setting 1 reaches in 2000 (benchmarks/
        RESULTS.md, "Convergence"): the same loss, optimised through :class:`~vital.
        parametrizations.FourierPixels` with a smaller learning rate, its first 30 % as a
        coarse stage (``coarse_start``), each view rotated by up to 10° while the layout forms
        (``rotate_falls``).
        """
        presets = {
            0: cls(steps=1000, half_resolution_steps=2000),
            1: cls(),
            2: cls(steps=20000, betas=(0.9, 0.999), clamp=False),
            "fast": FAST,
        }
        key = setting_key(number)
        if not isinstance(key, (int, str)) or key not in presets:
            raise VitalError(
                f"setting {number} does not exist; choose 0, 1 or 2 (the authors') or fast."
            )
        return replace(presets[key], **overrides)

    def stages(self) -> list[tuple[int, int]]:
        """(steps, downsample factor) per stage, in order, skipping empty ones."""
        coarse = round(self.steps * self.coarse_start)
        stages = [(self.half_resolution_steps + coarse, 2), (self.steps - coarse, 1)]
        return [(steps, factor) for steps, factor in stages if steps > 0]

    def validate(self) -> None:
        """Raise a :class:`VitalError` for settings that cannot run (wrong types included)."""
        _whole(self.half_resolution_steps, "the number of half-resolution steps", "setting 0", 0)
        # Only setting 0 (a half-resolution stage first) may skip the full-resolution one.
        _whole(self.steps, "the number of steps", "steps=N", 0 if self.half_resolution_steps else 1)
        _whole(self.warmup, "the warm-up", "warmup", 0)
        _whole(self.jitter, "jitter", "pixels, jitter=J", 0)
        _whole(self.views, "the number of views per step", "views=V", 1, 64)
        _whole(self.seed, "the seed", "seed=S", 0, MAX_SEED)
        if self.resolution is not None:
            # Memory grows with the square of the side: at 2048 px one MobileNetV2 picture's
            # graph takes several GB, at 8192 px more than 20 GB (the process was killed).
            _whole(self.resolution, "the resolution", "resolution=R", 16, MAX_RESOLUTION)
        _number(self.lr, "the learning rate", "lr=LR", positive=True, high=MAX_STEP_SIZE)
        _number(self.eps, "Adam's eps", "eps", positive=True, high=MAX_STEP_SIZE)
        for name in ("tv_l2", "tv_l1", "l2", "feature_weight"):
            _number(getattr(self, name), f"the weight {name}", name)
        if not (
            isinstance(self.betas, (tuple, list))
            and len(self.betas) == 2
            and all(is_number(b) and 0 <= b < 1 for b in self.betas)
        ):
            raise VitalError(f"Adam's betas are two numbers in [0, 1), not {self.betas!r}.")
        if self.precision not in PRECISIONS:
            raise VitalError(
                f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)} "
                "(float16 would need loss scaling; bfloat16 has float32's range)."
            )
        for name in (
            "flip",
            "clamp",
            "channels_last",
            "compile",
            "near_tap",
            "color_start",
            "rotate_falls",
        ):
            if not isinstance(getattr(self, name), bool):
                raise VitalError(f"{name} is True or False, not {getattr(self, name)!r}.")
        if not (
            isinstance(self.zoom, (tuple, list))
            and len(self.zoom) == 2
            and all(is_number(z) for z in self.zoom)
            and 0 < self.zoom[0] <= self.zoom[1]
        ):
            raise VitalError(
                f"the zoom range is (low, high) with 0 < low <= high (e.g. 1.0, 1.2), not "
                f"{self.zoom!r}."
            )
        _number(self.rotate, "the rotation", "degrees")
        if not (is_number(self.coarse_start) and 0 <= self.coarse_start < 1):
            raise VitalError(
                f"coarse_start is the share of the steps run at half resolution first, in "
                f"[0, 1), not {self.coarse_start!r}."
            )
        if self.coarse_view not in COARSE_VIEWS:
            raise VitalError(
                f"coarse_view is one of {', '.join(COARSE_VIEWS)}, not {self.coarse_view!r}."
            )
        check_parametrization(self.parametrization)


class UnknownSettingError(VitalError, TypeError):
    """A setting that :class:`Settings` does not have (a ``TypeError`` too, as Python's own)."""


def check_setting_names(names: Iterable[str]) -> None:
    """Refuse names that are no :class:`Settings` field, naming the nearest real one of each.

    Raises
    ------
    UnknownSettingError
        For the first call with a name that does not exist.
    """
    known = sorted(f.name for f in dataclasses.fields(Settings))
    unknown = sorted(set(names) - set(known), key=str)
    if not unknown:
        return
    hints = []
    for name in unknown:
        near = difflib.get_close_matches(str(name), known, n=1)
        hints.append(f"{name} (did you mean {near[0]}?)" if near else str(name))
    raise UnknownSettingError(
        f"unknown setting(s) {', '.join(hints)}; settings have {', '.join(known)}."
    )


_dataclass_init = Settings.__init__


@functools.wraps(_dataclass_init)
def _settings_init(self: Settings, *args: object, **fields: object) -> None:
    # Names are checked before the dataclass sees them: Python's own TypeError would not say
    # which names exist (``Settings(stepz=1)``, ``Settings.setting("fast", stepz=1)``).
    check_setting_names(fields)
    _dataclass_init(self, *args, **fields)


Settings.__init__ = _settings_init  # type: ignore[method-assign]


def setting_key(setting: int | str | None) -> int | str | None:
    """A setting's name as :meth:`Settings.setting` knows it (``" 1"`` → 1, ``"FAST"`` → fast).

    A numpy or torch integer is the number it holds (``np.int64(1)`` was "setting 1 does not
    exist"). Anything else comes back unchanged, to be refused there by name.
    """
    setting = plain(setting)
    if not isinstance(setting, str):
        return setting
    key = setting.strip().lower()  # typed by people, like the class names that are also found
    return int(key) if key.isdigit() else key


def _whole(value: object, what: str, option: str, low: int, high: int = 10**9) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VitalError(f"{what} must be a whole number from {low} to {high} ({option}), not "
                         f"{value!r}.")  # fmt: skip


def _number(
    value: object, what: str, option: str, positive: bool = False, high: float | None = None
) -> None:
    if (
        not is_number(value)
        or (value <= 0 if positive else value < 0)
        or (high is not None and value > high)
    ):
        kind = "a positive" if positive else "a non-negative"
        most = "" if high is None else f" of at most {high:,.0f}"
        raise VitalError(f"{what} must be {kind} finite number{most} ({option}), not {value!r}.")


# The largest learning rate and Adam eps: torch's Adam takes lr / (1 - beta1**t) as a float32
# (lr=1e300 ended in "value cannot be converted to type float without overflow"); the
# methods use 0.05 to 1.
MAX_STEP_SIZE = 1e6


def first_seed(seed: object, settings: dict) -> int:
    """The seed of a run's first picture, from ``seed=`` or ``settings["seed"]`` (popped).

    A run that plans many pictures (a comparison, an atlas) takes its seed either way; the two
    must agree where both are given. Checked as :class:`Settings` checks its own.
    """
    given = settings.pop("seed", None)
    seed, given = (None if s is None else check_seed(s) for s in (seed, given))
    if seed is not None and given is not None and given != seed:
        raise VitalError(f"seed={seed!r} and settings={{'seed': {given!r}}} disagree: give one.")
    return next((s for s in (seed, given) if s is not None), 0)


def picture_seeds(first: int, count: int, seeds: object = None) -> list[int]:
    """One seed per picture: ``seeds`` as given (checked), or ``first + i`` for the ``i``-th.

    Refused before any work where they would pass :data:`MAX_SEED`, not picture by picture.
    """
    if seeds is None:
        if first + count - 1 > MAX_SEED:
            raise VitalError(
                f"seed {first} with {count} targets would use seeds past 2**63 - 1 (picture i "
                f"takes seed + i): choose a seed of at most {MAX_SEED - count + 1}."
            )
        return [first + i for i in range(count)]
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise VitalError(f"seeds are one whole number per target (a list), not {seeds!r}.")
    chosen = [check_seed(seed) for seed in seeds]
    if len(chosen) != count:
        raise VitalError(f"{len(chosen)} seeds were given for {count} targets.")
    return chosen


def check_seed(seed: object) -> int:
    """A seed as a Python ``int``, refused as :class:`Settings` refuses its own (0 … 2**63 - 1).

    numpy's integers and 0-d tensors are the seeds they hold. Runs that hand the seed to other
    libraries (the concepts' crops and factorisation) check it here where it enters, before
    any work, so a seed is refused in the same words everywhere.
    """
    chosen = plain(seed)
    _whole(chosen, "the seed", "seed=S", 0, MAX_SEED)
    return chosen


# The largest seed (torch's generators take 64 bits; Settings.seed and check_seed).
MAX_SEED = 2**63 - 1

# The largest side of a synthetic picture (Settings.resolution).
MAX_RESOLUTION = 2048

# Floating-point types of the model's forward and backward (autocast).
PRECISIONS: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# The "fast" setting (issues 11, 21), chosen on the dev classes: benchmarks/RESULTS.md,
# "Convergence", "A coarse start for every model" and "`fast` with a falling rotation" (robust
# to small rotations while the layout forms, exact at the end). Its coarse start is pooled where the
# model takes the smaller images and blurred at the model's own size where it does not (a
# ViT): on MobileNetV2 the pooled one scores as well or higher, at about 3/4 of the cost.
FAST = Settings(
    steps=300,
    coarse_start=0.3,
    coarse_view="auto",
    parametrization="fourier",
    lr=0.1,
    warmup=30,
    near_tap=True,
    color_start=True,
    rotate=10.0,
    rotate_falls=True,
)

# The setting a run uses unless one is named: as good in 300 steps as setting 1 in 2000.
DEFAULT_SETTING = "fast"


def learning_rate(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up over ``warmup`` steps, then a half cosine to 0 at the end.

    ``lr·(t+1)/warmup`` for ``t < warmup``, then ``lr·½(1 + cos(π(t − warmup)/(T − warmup)))``.
    """
    for value, name, low in ((step, "step", 0), (total, "total", 1), (warmup, "warmup", 1)):
        if isinstance(value, bool) or not isinstance(plain(value), int) or value < low:
            raise VitalError(f"{name} is a whole number of at least {low}, not {value!r}.")
    if not is_number(plain(peak)):
        raise VitalError(f"peak is the largest learning rate, a finite number, not {peak!r}.")
    if step < warmup:
        return peak * (step + 1) / warmup
    remaining = max(total - warmup, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / remaining))


def effective_warmup(settings: Settings) -> int:
    """The warm-up the loop runs: at most a quarter of the shortest stage, at least one step.

    Short runs (tests, previews) keep the paper's shape instead of warming up for their
    whole length.
    """
    shortest = min(steps for steps, _ in settings.stages())
    return max(1, min(settings.warmup, shortest // 4))


def resolved(settings: Settings) -> Settings:
    """Validated settings with the warm-up the loop runs (:func:`effective_warmup`).

    The one place a run's warm-up is decided; :func:`vital.driver.resolve_settings` ends here.
    """
    settings.validate()
    return replace(settings, warmup=effective_warmup(settings))


@dataclass
class Run:
    """What the loop returns for a batch.

    Attributes
    ----------
    images
        Final images in the model's normalised input space, (B, 3, R, R).
    pixels
        Final images as pixels in [0, 1].
    history
        Total loss of each image at every step, (steps, B).
    final_terms
        Each loss term of each image at the last step.
    gradient_magnitude
        Sum of |∂L/∂x| over the steps (from ``transparency_from`` of them on), (B, 3, R, R),
        for transparency maps.
    seconds
        Wall time of the loop.
    seeds
        Seed of each image.
    """

    images: torch.Tensor
    pixels: torch.Tensor
    history: torch.Tensor
    final_terms: dict[str, torch.Tensor]
    gradient_magnitude: torch.Tensor
    seconds: float
    seeds: list[int] = field(default_factory=list)


def _jitter(
    x: torch.Tensor, generators: list[torch.Generator], reach: int, flip: bool
) -> torch.Tensor:
    """Roll each image by its own random offset in [-reach, reach]², optionally flip it."""
    moved = []
    for image, generator in zip(x, generators, strict=True):
        # .tolist() on the CPU generator's draw: no scalar read of a device tensor
        dy, dx = (
            torch.randint(-reach, reach + 1, (2,), generator=generator).tolist()
            if reach
            else (0, 0)
        )
        image = torch.roll(image, shifts=(dy, dx), dims=(-2, -1))
        if flip and torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        moved.append(image)
    return torch.stack(moved)


def _warp(
    x: torch.Tensor, generators: list[torch.Generator], zoom: tuple[float, float], degrees: float
) -> torch.Tensor:
    """Zoom and rotate each image about its centre by its own random draw; mirrored borders."""
    low, high = zoom
    if low == high == 1.0 and degrees == 0:
        return x
    scales, angles = [], []
    for generator in generators:
        draw = torch.rand(2, generator=generator, dtype=torch.float64)
        scales.append(low + (high - low) * float(draw[0]))
        angles.append(math.radians(degrees * (2 * float(draw[1]) - 1)))
    scale = torch.tensor(scales, dtype=torch.float64)
    angle = torch.tensor(angles, dtype=torch.float64)
    cos, sin, zero = torch.cos(angle) / scale, torch.sin(angle) / scale, torch.zeros_like(scale)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="reflection")


def priors(x: torch.Tensor, settings: Settings) -> dict[str, torch.Tensor]:
    """The enabled image priors of ``settings``, each (B,)."""
    terms = {}
    if settings.tv_l2:
        terms["tv_l2"] = settings.tv_l2 * losses.tv_l2(x)
    if settings.tv_l1:
        terms["tv_l1"] = settings.tv_l1 * losses.tv_l1(x)
    if settings.l2:
        terms["l2"] = settings.l2 * losses.l2(x)
    return terms


def _view_terms(
    x: torch.Tensor,
    objective: Objective,
    generators: list[torch.Generator],
    factor: int,
    settings: Settings,
    autocast: torch.autocast,
    degrees: float,
) -> dict[str, torch.Tensor]:
    """The loss terms of one jittered (warped up to ``degrees``, pooled) view, each (B,)."""
    jittered = _jitter(x, generators, settings.jitter // factor, settings.flip)
    warped = _warp(jittered, generators, settings.zoom, degrees)
    model_input = coarsen(warped, factor, settings.coarse_view)
    if settings.channels_last:
        model_input = model_input.contiguous(memory_format=torch.channels_last)
    with autocast:
        raw = objective(model_input, factor)
    terms = {name: settings.feature_weight * value.float() for name, value in raw.items()}
    terms.update(priors(jittered, settings))
    return terms


def _map_gradient(
    image: torch.Tensor, view: dict[str, torch.Tensor], views: int
) -> torch.Tensor | None:
    """∂/∂image of the view's loss with its ``map:`` terms in place of the terms they name.

    Removes the ``map:`` terms from ``view``; None where there are none. The graph is kept for
    the picture's own backward pass.
    """
    stand_ins = {
        name[len(MAP_TERM) :]: view.pop(name) for name in list(view) if name.startswith(MAP_TERM)
    }
    if not stand_ins:
        return None
    loss = torch.stack(list({**view, **stand_ins}.values())).sum() / views
    (gradient,) = torch.autograd.grad(loss, image, retain_graph=True)
    return gradient


def _freeze_heap() -> bool:
    """Leave the objects alive before the loop out of the cyclic collector's scans; True if done.

    A step makes and frees thousands of small Python objects (the autograd graph's hooks, the
    relevance rules' closures). Every 10 to 30 steps of a neuron run that sets off a full
    collection, which scans every object the process holds (torch's, the model's: about 400,000)
    for about 0.1 s on one core: 3–10 ms of a MobileNetV2 neuron step of about 100 ms, on average
    (benchmarks/RESULTS.md, "Step cost: the collector, the targets on the worker, and the neuron
    step's floor"). Frozen (:func:`gc.freeze`) they are not scanned; what the run itself
    leaves in cycles is still collected. Not done where the caller froze objects already: the
    unfreezing at the end would undo theirs.
    """
    if gc.get_freeze_count():
        return False
    gc.freeze()
    return True


def optimize(
    objective: Objective,
    count: int,
    preprocessing: Preprocessing,
    settings: Settings,
    device: torch.device,
    progress: bool | str = True,
    *,
    dtype: torch.dtype = torch.float32,
    seeds: Sequence[int] | None = None,
    parametrization: Parametrization | None = None,
    transparency_from: float = 0.0,
) -> Run:
    """Optimise ``count`` images against ``objective``.

    Each step: jitter, compute the objective's terms on the (pooled, in setting 0's first
    stage) jittered images plus the priors, one backward pass, an Adam step, clamping; with
    ``settings.views`` > 1 the terms are averaged over that many jittered views, each view's
    backward pass ending at the images so that only one view's activations are held at a time.
    Adam and the schedule start afresh for each stage.

    Parameters
    ----------
    objective
        Maps model input and downsample factor to named per-image loss terms.
    count
        Number of images (B).
    preprocessing
        The model's normalisation (for clamping and the output pixels).
    settings
        Resolved settings (:func:`vital.driver.resolve_settings`, or :func:`resolved`): the
        loop runs them as they are, the warm-up included.
    device
        Where to optimise.
    progress
        Show a progress bar; a string is used as its label.
    dtype
        Floating-point type of the images (the model's).
    seeds
        One seed per image (initial noise and jitter); default ``settings.seed + i``.
    parametrization
        What is optimised (default: the one ``settings.parametrization`` names, made from
        the seeds, e.g. :class:`Pixels`, clamped when ``settings.clamp``). Its images must
        be ``count`` images at the settings' resolution; ``gradient_magnitude`` then
        accumulates |∂L/∂image| of those images.
    transparency_from
        The share of all steps after which |∂L/∂x| accumulates into ``gradient_magnitude``;
        0 (the default): every step, as METHOD.md's transparency map. While it accumulates,
        an objective's ``map:`` terms (:data:`MAP_TERM`) stand in for the terms they name in
        that gradient (one more backward pass through the model per view).
    """
    settings.validate()
    resolution = settings.resolution or preprocessing.input_size
    seeds = list(seeds) if seeds is not None else [settings.seed + i for i in range(count)]
    if len(seeds) != count:
        raise VitalError(f"{len(seeds)} seeds were given for {count} images.")
    if parametrization is None:
        parametrization = create(
            settings.parametrization,
            seeds,
            resolution,
            device,
            preprocessing,
            clamp=settings.clamp,
            dtype=dtype,
        )
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    history: list[torch.Tensor] = []
    gradient_magnitude = torch.zeros(count, 3, resolution, resolution, device=device, dtype=dtype)
    with torch.no_grad():
        shape = tuple(parametrization.images().shape)
    if shape != tuple(gradient_magnitude.shape):
        raise VitalError(
            f"the parametrisation makes images of shape {shape}, expected "
            f"{tuple(gradient_magnitude.shape)} (count, 3, resolution, resolution)."
        )
    terms: dict[str, torch.Tensor] = {}
    total_steps = sum(steps for steps, _ in settings.stages())
    first_accumulated = math.floor(transparency_from * total_steps)
    done = 0
    device = torch.device(device)
    autocast = torch.autocast(
        device.type if device.type in ("cpu", "cuda") else "cpu",
        dtype=PRECISIONS[settings.precision],
        enabled=settings.precision != "float32",
    )
    source = objective  # the compiled one forwards calls, not attributes
    if settings.compile:
        objective = torch.compile(objective)
    bar = progress_bar(
        total_steps,
        "optimising" + (f" {progress}" if isinstance(progress, str) else ""),
        desc=progress if isinstance(progress, str) else "optimising",
        disable=not progress,
        unit="step",
        leave=False,
    )
    started = time.perf_counter()
    frozen = _freeze_heap()
    try:
        for steps, factor in settings.stages():
            optimizer = torch.optim.Adam(
                parametrization.parameters(), lr=settings.lr, betas=settings.betas, eps=settings.eps
            )
            for step in range(steps):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, steps, settings.lr, settings.warmup)
                degrees = settings.rotate
                if settings.rotate_falls and factor == 1:
                    degrees *= 1 - step / steps
                optimizer.zero_grad(set_to_none=True)
                x = parametrization.images()
                # With several views, each view's graph ends at a detached copy of the images
                # (freed after its backward), and the summed gradient flows once through the
                # parametrisation; with one view the graph is the plain one.
                image = x.detach().requires_grad_(True) if settings.views > 1 else x
                if not image.is_leaf:
                    image.retain_grad()  # for the transparency map
                terms = {}
                accumulating = done >= first_accumulated
                if hasattr(source, "map_terms"):
                    source.map_terms = accumulating
                map_gradient = None
                for _ in range(settings.views):
                    view = _view_terms(
                        image, objective, generators, factor, settings, autocast, degrees
                    )
                    stand_in = _map_gradient(image, view, settings.views)
                    if stand_in is not None:
                        map_gradient = stand_in if map_gradient is None else map_gradient + stand_in
                    total = torch.stack(list(view.values())).sum(dim=0) / settings.views
                    total.sum().backward()
                    for name, value in view.items():
                        terms[name] = terms.get(name, 0) + value.detach() / settings.views
                total = torch.stack(list(terms.values())).sum(dim=0)
                if accumulating:
                    gradient_magnitude += (
                        image.grad if map_gradient is None else map_gradient
                    ).abs()
                done += 1
                if image is not x:
                    x.backward(image.grad)
                optimizer.step()
                parametrization.project()
                history.append(total.detach())
                if step % 10 == 0 or step == steps - 1:  # .item() waits for the GPU: not each step
                    mean = total.mean().item()
                    if not math.isfinite(mean):
                        raise VitalError(
                            f"the loss became {mean} at step {step + 1}: the model or the "
                            "settings produce non-finite values (check the weights for NaN, "
                            "lower lr=LR)."
                        )
                    bar.set_postfix(loss=f"{mean:.4g}", refresh=False)
                bar.update()
    finally:
        bar.close()
        if frozen:
            gc.unfreeze()
        if hasattr(source, "map_terms"):
            source.map_terms = False  # an objective used again starts as a fresh one does
    with torch.no_grad():
        images = parametrization.images().detach()
    return Run(
        images=images,
        pixels=preprocessing.denormalize(images).clamp(0, 1),
        history=torch.stack(history).cpu(),
        final_terms={name: value.detach().cpu() for name, value in terms.items()},
        gradient_magnitude=gradient_magnitude.detach(),
        seconds=time.perf_counter() - started,
        seeds=seeds,
    )


def transparency(gradient_magnitude: torch.Tensor, percentile: float = 98.0) -> torch.Tensor:
    """Alpha maps from accumulated |∂L/∂x| (METHOD.md section 3), (B, H, W) in [0, 1].

    Averaged over colour channels, clipped at the ``percentile`` of each image, divided by the
    maximum.
    """
    if not isinstance(gradient_magnitude, torch.Tensor) or gradient_magnitude.dim() != 4:
        shape = getattr(gradient_magnitude, "shape", type(gradient_magnitude).__name__)
        raise VitalError(
            f"transparency takes accumulated |gradients| as a (B, C, H, W) tensor, not {shape}."
        )
    if not is_number(percentile) or not 0 <= percentile <= 100:
        raise VitalError(f"the percentile is a number from 0 to 100, not {percentile!r}.")
    mean = gradient_magnitude.mean(dim=1)
    limit = torch.quantile(mean.flatten(1).float(), percentile / 100, dim=1).view(-1, 1, 1)
    clipped = torch.minimum(mean, limit)
    peak = clipped.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return clipped / peak
