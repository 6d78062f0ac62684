"""What the baselines share: targets, activation objectives, robustness views, the run driver.

A baseline is a :class:`Baseline`: default :class:`~vital.optimize.Settings`, an optional
parametrisation (what the loop optimises) and an objective (what the images are scored by),
built inside a context manager so that any hooks it needs are always removed. The driver
:func:`run_baseline` batches targets, runs :func:`vital.optimize.optimize`, and turns each image
into a :class:`vital.store.Result` with the same record layout as VITAL's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.optimize import Objective, Parametrization, Settings, optimize, transparency
from vital.store import Result, ResultSink, record_header
from vital.taps import check_layer, tapped
from vital.targets import Channel, ClassTarget
from vital.zoo import Model, Preprocessing

BaselineTarget = ClassTarget | Channel

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


def resolve_targets(model: Model, targets: Sequence[BaselineTarget | int | str]) -> list:
    """Classes by index, name or WordNet id (or :class:`Channel` objects), checked."""
    resolved: list[BaselineTarget] = []
    for target in targets:
        if isinstance(target, Channel):
            check_layer(target.layer, model.module)
            resolved.append(target)
        elif isinstance(target, ClassTarget):
            resolved.append(target)
        else:
            if model.labels is None:
                raise VitalError("this model has no classifier output; visualise channels.")
            index = model.labels.resolve(target)
            resolved.append(ClassTarget(index, model.labels.name(index)))
    return resolved


# --- objectives -------------------------------------------------------------------------------


class Activation:
    """Minus the target's activation: the class logit, or a channel's mean activation.

    Parameters
    ----------
    model
        The explained model.
    targets
        One target per image of the batch.
    tap
        An attached feature tap reading every channel target's layer (``None`` when all
        targets are classes).
    views
        Views made from each image before the model sees them (robustness transforms); each
        image's activation is averaged over its views.
    """

    def __init__(self, model: Model, targets: Sequence[BaselineTarget], tap=None, views=None):
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
                [features[t.layer][i, t.index].mean() for i, t in enumerate(targets)]
            )
        return values.view(batch, per_image).mean(dim=1)

    def __call__(self, model_input: torch.Tensor, factor: int) -> dict[str, torch.Tensor]:
        """``{"activation": -activation}`` per image (the loop minimises)."""
        return {"activation": -self.activation(model_input)}


@contextlib.contextmanager
def activation_objective(
    model: Model, targets: Sequence[BaselineTarget], views=None
) -> Iterator[Activation]:
    """An :class:`Activation` objective with the taps its channel targets need attached."""
    layers = sorted({t.layer for t in targets if isinstance(t, Channel)})
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


# --- the driver -------------------------------------------------------------------------------


class Baseline(Protocol):
    """A comparison method for :func:`run_baseline`."""

    name: str
    channel_targets: bool  # whether the method is defined for inner channels
    has_transparency: bool  # whether results carry an alpha map

    def settings(self, model: Model) -> Settings:
        """The method's published defaults for ``model``."""
        ...

    def parametrization(self, model: Model, count: int, settings: Settings) -> Parametrization:
        """What to optimise, initialised from ``settings.seed``."""
        ...

    def objective(
        self, model: Model, targets: Sequence[BaselineTarget], settings: Settings
    ) -> contextlib.AbstractContextManager[Objective]:
        """The objective for a batch, with its hooks attached while the block runs."""
        ...

    def options(self) -> dict:
        """Method-specific options for records."""
        ...


def target_record(target: BaselineTarget) -> dict:
    """The ``target`` entry of a record."""
    if isinstance(target, Channel):
        return {"kind": "channel", "layer": target.layer, "index": target.index}
    return {"kind": "class", "index": target.index, "name": target.name}


@torch.no_grad()
def evaluate(model: Model, targets: Sequence[BaselineTarget], images: torch.Tensor) -> list[dict]:
    """Target probability, rank and top-5 (classes), or the channel's mean activation.

    Images of another size than the model's input (MaCo's canvas) are resized first.
    """
    from vital.metrics import model_input, target_scores

    pixels = model.preprocessing.denormalize(images).clamp(0, 1)
    if isinstance(targets[0], Channel):
        with activation_objective(model, targets) as objective:
            activations = objective.activation(model_input(model, pixels))
        return [{"activation": float(a)} for a in activations]
    return target_scores(model, pixels, [t.index for t in targets])


def _initial_value(evaluation: dict) -> dict:
    key = "activation" if "activation" in evaluation else "probability"
    return {f"initial_{key}": evaluation[key]}


def run_baseline(
    baseline: Baseline,
    model: Model,
    targets: Sequence[BaselineTarget | int | str] | BaselineTarget | int | str,
    *,
    settings: Settings | None = None,
    out=None,
    batch_size: int = 8,
    progress: bool = True,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Visualise ``targets`` with ``baseline``, in batches; write results when ``out`` is set.

    Each record has VITAL's layout (``method``, ``model``, ``target``, ``settings``, ``seed``,
    ``final_loss``, ``loss_history``, ``evaluation`` ...) plus the method's ``options``.
    """
    if isinstance(targets, (str, int, ClassTarget, Channel)):
        targets = [targets]
    resolved = resolve_targets(model, targets)
    if not resolved:
        raise VitalError("no targets given; name at least one class (--class C).")
    if batch_size < 1:
        raise VitalError("the batch size must be at least 1 (--batch B).")
    if not baseline.channel_targets and any(isinstance(t, Channel) for t in resolved):
        raise VitalError(f"{baseline.name} is defined for class targets only, not channels.")
    settings = settings or baseline.settings(model)
    settings.validate()
    sink = ResultSink(out, on_result)
    for start in range(0, len(resolved), batch_size):
        batch = resolved[start : start + batch_size]
        batch_settings = dataclasses.replace(settings, seed=settings.seed + start)
        parametrization = baseline.parametrization(model, len(batch), batch_settings)
        with torch.no_grad():
            initial = evaluate(model, batch, parametrization.images())
        with baseline.objective(model, batch, batch_settings) as objective:
            run = optimize(
                objective,
                len(batch),
                model.preprocessing,
                batch_settings,
                model.device,
                progress=baseline.name if progress else False,
                parametrization=parametrization,
            )
        final = evaluate(model, batch, run.images)
        alphas = transparency(run.gradient_magnitude) if baseline.has_transparency else None
        for item, target in enumerate(batch):
            history = run.history[:, item]
            record = {
                **record_header(baseline.name, model),
                "target": target_record(target),
                "settings": {**dataclasses.asdict(batch_settings), "seed": run.seeds[item]},
                "options": baseline.options(),
                "seed": run.seeds[item],
                "final_loss": {k: float(v[item]) for k, v in run.final_terms.items()},
                "final_total": float(history[-1]),
                "loss_history": [round(float(v), 6) for v in history],
                "seconds": run.seconds,
                "batch_size": len(batch),
                "device": str(run.images.device),
                "evaluation": {**final[item], **_initial_value(initial[item])},
            }
            alpha = alphas[item].cpu() if alphas is not None else None
            result = Result(target, run.pixels[item].cpu(), record, alpha)
            sink(result)
    return sink.results
