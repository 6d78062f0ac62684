"""VITAL for inner channels and concept directions (METHOD.md sections 3 and 4).

Each target (a channel, or a direction over a layer's channels) is matched only at the taps
strictly below its layer, on features weighted by their relevance for the target (an LRP
backend by default), with each channel's squared errors weighted by its importance. The
backend is attached once for the whole run; the references' relevance-weighted prototypes are
computed while it is attached. Targets of different layers may share a batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vital.errors import VitalError
from vital.files import load_vectors
from vital.methods.base import Method, resolution_of
from vital.methods.vital_class import reference_fields
from vital.objectives import NeuronTarget, RelevanceSortMatching, neuron_prototypes
from vital.optimize import DEFAULT_SETTING, Settings
from vital.presets import (
    NEURON_PRIOR,
    NEURON_STEM_WEIGHT,
    RESIDUAL_BRANCHES,
    RESIDUAL_FLAGS,
    classes_named,
)
from vital.references import (
    DEFAULT_REFERENCES,
    SAMPLE_PHOTOS,
    ReferenceSet,
    best_patches,
    from_folder,
    from_samples,
    one_targets_references,
    smallest_patch_side,
    top_references,
)
from vital.relevance import RelevanceBackend, get_backend, target_activation
from vital.taps import (
    LayerInfo,
    Tap,
    check_layer,
    check_positions,
    check_runs_once,
    check_target_layer,
    computes,
    default_taps,
    list_layers,
    same_tensor,
    tapped,
    to_positions,
    user_taps,
)
from vital.targets import Channel, Direction
from vital.zoo import Model

NeuronReferences = (
    ReferenceSet | str | Path | Mapping[Channel | Direction, ReferenceSet | str | Path] | None
)


def direction_of(target: Channel | Direction, info: LayerInfo) -> torch.Tensor:
    """The target's (C,) direction at its layer, checked against the layer's channels."""
    if isinstance(target, Channel) and not 0 <= target.index < info.channels:
        raise VitalError(
            f"channel {target.index} does not exist in {target.layer!r}, which has "
            f"{info.channels} channels (0 to {info.channels - 1})."
        )
    vector = target.vector(info.channels)
    if vector.shape != (info.channels,):
        raise VitalError(
            f"the direction {target.describe()!r} has {vector.size} values but layer "
            f"{target.layer!r} has {info.channels} channels."
        )
    if not np.isfinite(vector).all() or not np.any(vector):
        raise VitalError(f"the direction {target.describe()!r} is zero or not finite.")
    return torch.from_numpy(vector.astype(np.float32))


# Modules whose output is never negative, by what they compute: a direction with no positive
# component at such a layer is highest at 0 and cannot be driven up.
NON_NEGATIVE_KINDS = frozenset({"ReLU", "ReLU6", "Sigmoid", "Softmax", "Softplus", "Hardsigmoid"})

# Noise images a layer of another kind is probed on: a signed layer (a linear bottleneck, a
# residual stream) has negative values among the thousands of values these give; a post-ReLU
# one (a block ending in its ReLU) has none.
SIGN_PROBES = 4


def never_negative(model: Model, info: LayerInfo) -> str | None:
    """Why ``info``'s outputs are never negative (a phrase), or ``None`` where they can be.

    Known non-negative modules (``NON_NEGATIVE_KINDS``) answer by their kind; other layers by a
    probe: a forward pass on ``SIGN_PROBES`` noise images (as :func:`receptive_field` uses),
    in which no value below 0 marks a post-ReLU output.
    """
    if info.kind in NON_NEGATIVE_KINDS:
        return f"a {info.kind}'s output"
    side = model.preprocessing.input_size
    noise = torch.randn(SIGN_PROBES, 3, side, side, generator=torch.Generator().manual_seed(0)).to(
        model.device, model.dtype
    )
    with tapped(model.module, [info.name], stop_early=True) as tap, torch.no_grad():
        tap(noise)
        lowest = float(tap.outputs[info.name].min())
    if lowest < 0:
        return None
    return f"post-ReLU: none of its values on {SIGN_PROBES} noise images is below 0"


def check_drivable(
    model: Model, target: Channel | Direction, direction: torch.Tensor, info: LayerInfo
) -> None:
    """Refuse a direction with no positive component at a layer that is never negative.

    Its value, the weighted sum of non-negative outputs, is at most 0 and highest where the
    layer is silent: the optimisation would run all its steps and end below its start.
    """
    if isinstance(target, Channel) or float(direction.max()) > 0:
        return
    why = never_negative(model, info)
    if why is None:  # a signed layer: its negative values drive the direction up
        return
    raise VitalError(
        f"the direction {target.describe()!r} has no positive component, but the outputs of "
        f"{target.layer!r} are never negative ({why}), so it is highest where the layer is "
        "silent and cannot be driven up; flip its sign (e.g. numpy.save('d.npy', "
        "-numpy.load(FILE))) or give it at a layer with signed outputs (before its ReLU)."
    )


def direction_target(layer: str, path: str | Path) -> Direction:
    """A concept direction read from a ``.npy`` file holding one vector over the channels."""
    path = Path(path)
    values = load_vectors(path)
    if values.ndim > 1 and sum(side > 1 for side in values.shape) <= 1:
        values = values.reshape(-1)  # a (1, C) row or (C, 1) column is still one vector
    if values.ndim != 1:
        rows = (
            f" (a file of {values.shape[0]} directions, as `vital concepts` writes: save the one "
            "you want, e.g. numpy.save('d.npy', numpy.load(FILE)[K]))"
            if values.ndim == 2
            else ""
        )
        raise VitalError(
            f"{path} holds an array of shape {values.shape}; a direction is one vector over "
            f"the layer's channels{rows}."
        )
    return Direction(layer, tuple(float(v) for v in values), name=path.stem)


def neuron_taps(
    model: Model,
    layers: Sequence[LayerInfo],
    target_layer: str,
    taps: Sequence[str | Tap] | None = None,
    near: bool = False,
) -> tuple[tuple[Tap, ...], str]:
    """Taps strictly below ``target_layer``: the user's, else the model's defaults.

    With the defaults the first (stem) tap weighs 0.1 and the others 1, as in the authors'
    inner-neuron setting; ``near`` adds the module just below the target (weight 1), the
    deepest one with positions that finishes before the target starts and whose output is laid
    out as the target's (tokens below a token layer: not the per-head queries and keys inside
    an attention block; maps below a map).
    """
    info = {i.name: i for i in layers}
    # A stage of blocks returns its last block's output as it is: the taps may come from the
    # stage's earlier blocks, as for that block (else the nearest tap is the stage's input,
    # several blocks and a downsampling below the target).
    matched = target_layer
    while info[matched].passes_on in info:
        matched = info[matched].passes_on
    below = lambda name: info[name].end < info[matched].start  # noqa: E731
    if taps:
        chosen = user_taps(taps)
        for tap in chosen:
            check_layer(tap.layer, model.module, model.zoo_name)
            check_runs_once(tap.layer, layers, "tap", model.zoo_name)
            if tap.layer not in info or not below(tap.layer):
                raise VitalError(
                    f"tap {tap.layer!r} is not computed before the target layer "
                    f"{target_layer!r}; only layers below the target can be matched."
                )
        return chosen, "given by the user"
    defaults, source = default_taps(model.name, layers)
    stem = defaults[0].layer
    chosen = tuple(
        Tap(t.layer, NEURON_STEM_WEIGHT if t.layer == stem else 1.0)
        for t in defaults
        if below(t.layer)
    )
    if not chosen:
        inside = [
            i.name for i in layers
            if i.name.startswith(f"{target_layer}.") and i.calls == 1 and len(i.shape) in (2, 3)
        ]  # fmt: skip
        # a container that holds the taps themselves (torchvision's "features"): a layer in it
        if inside and any(t.layer.startswith(f"{target_layer}.") for t in defaults):
            raise VitalError(
                f"{target_layer!r} holds the layers its features would be matched at (it starts "
                f"before any of them); pick a layer inside it, e.g. its last, {inside[-1]!r}."
            )
        raise VitalError(
            f"no feature tap lies below {target_layer!r} (default taps: "
            f"{', '.join(t.layer for t in defaults)}); pick a deeper layer or name taps with "
            "--tap NAME=WEIGHT."
        )
    source = f"{source}, below {target_layer} (stem weight {NEURON_STEM_WEIGHT:g})"
    if near:
        # A unit of a normalisation or activation is its convolution's unit, transformed channel
        # by channel: just below it lies that convolution's input, not the unit's own values
        # before normalising (a near tap there gave less readable pictures: RESULTS, "the module
        # just below a unit"), and a unit asked for by either name gets the same taps.
        unit = computed_at(model.module, info, matched)
        candidates = [
            i for i in layers
            if i.end < info[unit].start and i.calls == 1 and len(i.shape) in (2, 3)
            and i.positions > 1 and i.layout == info[target_layer].layout
        ]  # fmt: skip
        nearest = max(candidates, key=lambda i: i.end, default=None)
        # one tensor matched under two names would weigh twice: timm's and ConvNeXt's last
        # stage is a default tap and, as the whole `blocks`, the module below the head
        if nearest is not None and same_tensor(info, nearest.name) not in {
            same_tensor(info, t.layer) for t in chosen
        }:
            chosen = (*chosen, Tap(nearest.name))
            inside = "" if matched == target_layer else f" (its last block, {matched})"
            if unit != matched:
                inside = f" (below {unit}, whose output it transforms)"
            source += f", and {nearest.name} just below it{inside}"
        branch = residual_branch(model.module, matched)
        if branch is not None and branch in info and info[branch].calls == 1:
            chosen = (*chosen, Tap(branch))
            source += f", and {branch}, the branch its residual sum adds"
    return chosen, source


def computed_at(module: torch.nn.Module, info: Mapping[str, LayerInfo], layer: str) -> str:
    """The layer whose output ``layer`` transforms channel by channel, else ``layer`` itself.

    A module that computes nothing of its own (:func:`vital.taps.computes`: a normalisation, an
    activation, a dropout) and keeps the shape of the module that finished just before it is
    that module's output transformed; followed down to a module that computes. A chain that
    meets a module changing the shape first (a permute, a pool) leaves ``layer`` as it is: its
    unit is not one of a convolution's.
    """
    modules = dict(module.named_modules())
    found = layer
    while found in modules and not computes(modules[found]):
        before = [i for i in info.values() if i.end < info[found].start and i.calls == 1]
        producer = max(before, key=lambda i: i.end, default=None)
        if producer is None or producer.shape != info[found].shape:
            return layer
        found = producer.name
    return found


def residual_branch(module: torch.nn.Module, layer: str) -> str | None:
    """The branch a residual block adds to its input, when ``layer`` is such a block.

    Which blocks and branches is data (:data:`vital.presets.RESIDUAL_BRANCHES`); a block whose
    skip is switched off (:data:`vital.presets.RESIDUAL_FLAGS`) adds nothing.
    """
    block = dict(module.named_modules()).get(layer)
    for path, child in RESIDUAL_BRANCHES.items():
        if type(block) in classes_named([path]) and hasattr(block, child):
            flag = RESIDUAL_FLAGS.get(path)
            return f"{layer}.{child}" if flag is None or getattr(block, flag) else None
    return None


def target_score(
    model: Model, layer: str, direction: torch.Tensor, batch_size: int = 32
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Score pixels (N, 3, r, r) in [0, 1] by the target's spatially averaged activation."""

    def score(pixels: torch.Tensor) -> torch.Tensor:
        values = []
        with tapped(model.module, [layer], stop_early=True) as tap, torch.no_grad():
            for chunk in pixels.split(batch_size):
                tap(model.preprocessing.normalize(chunk.to(model.device)))
                output = tap.outputs[layer]
                directions = direction.to(output.device).expand(output.shape[0], -1)
                values.append(target_activation(output, directions, tap.layout(layer)).cpu())
        return torch.cat(values)

    return score


# A unit whose receptive field covers more than this share of the image side sees whole
# images; with ``patch_side="auto"`` a smaller one is shown the best patches of its references.
WHOLE_IMAGE_FIELD = 0.6


def receptive_field(model: Model, info: LayerInfo, resolution: int, share: float = 0.9) -> int:
    """Side in pixels of the centred square that holds ``share`` of a centre unit's evidence.

    The effective receptive field (Luo et al. 2016): the gradient of the layer's centre
    position (all channels) with respect to a few noise images, summed over colours and
    images; the side of the smallest square around the position's centre that holds
    ``share`` of its magnitude. Token layers (transformers) mix every token: the whole image.
    """
    if info.layout not in ("NCHW", "NHWC") or len(info.spatial) != 2:
        return resolution
    noise = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    x = noise.to(model.device, model.dtype).requires_grad_(True)
    with tapped(model.module, [info.name], stop_early=True) as tap, torch.enable_grad():
        tap(x)
        output, layout = tap.outputs[info.name], tap.layout(info.name)
        positions = to_positions(output, layout)
        height, width = output.shape[1:3] if layout == "NHWC" else output.shape[-2:]
        centre = (height // 2) * width + width // 2
        (gradient,) = torch.autograd.grad(positions[:, :, centre].sum(), x)
    mass = gradient.abs().sum(dim=(0, 1)).float()
    cy, cx = resolution * (height // 2 + 0.5) / height, resolution * (width // 2 + 0.5) / width
    total = float(mass.sum())
    step = max(1, resolution // 56)  # 4 px at 224
    for side in range(step, 2 * resolution + 1, step):
        top, left = max(0, round(cy - side / 2)), max(0, round(cx - side / 2))
        if float(mass[top : top + side, left : left + side].sum()) >= share * total:
            return min(side, resolution)
    return resolution


def auto_patch_side(field: int, resolution: int) -> int | None:
    """The patch side that matches a receptive field of ``field`` px; ``None``: whole images."""
    if field > WHOLE_IMAGE_FIELD * resolution:
        return None
    # at least 32 px of 224 (the authors' smaller side), at most half the image
    return min(max(resolution // 7, field, smallest_patch_side(resolution)), resolution // 2)


def check_relevance_floor(floor: object) -> float:
    """The floor under the relevance weights, refused unless a number in [0, 1)."""
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1:
        raise VitalError(f"relevance_floor=F is a number in [0, 1), not {floor!r}.")
    return floor


def neuron_references(
    target: Channel | Direction,
    references: NeuronReferences,
    count: int = DEFAULT_REFERENCES,
    seed: int = 0,
) -> ReferenceSet:
    """The candidate references of one target (before patch selection).

    ``None`` or ``"samples"``: every embedded photo; a folder: its images; a mapping: the set
    given for that target; a :class:`ReferenceSet` (e.g. mined top-k images) as it is.
    """
    if isinstance(references, ReferenceSet):
        return references
    if isinstance(references, Mapping):
        if target not in references:
            raise VitalError(f"no references were given for {target.describe()}.")
        given = one_targets_references(references[target], target.describe())
        return neuron_references(target, given, count, seed)
    if references is None or str(references) == "samples":
        return from_samples(list(SAMPLE_PHOTOS), count, seed)
    if not isinstance(references, (str, Path)):
        raise VitalError(
            f"references must be a folder, a ReferenceSet or a mapping of them, not "
            f"{type(references).__name__}."
        )
    return from_folder(references, count, seed)


def _thinned(trace: torch.Tensor, points: int = 50) -> list[list[float]]:
    """About ``points`` [step, activation] pairs of a (steps,) trace, the last one included."""
    every = max(1, len(trace) // points)
    steps = sorted({*range(0, len(trace), every), len(trace) - 1}) if len(trace) else []
    values = trace.tolist()
    return [[step + 1, round(values[step], 5)] for step in steps]


@dataclass(frozen=True)
class NeuronPlan:
    """An inner target with its direction, taps, references and their relevance summaries."""

    target: Channel | Direction
    backend: RelevanceBackend
    neuron: NeuronTarget
    taps_source: str
    references: ReferenceSet
    scores: list[float] | None
    reference_mode: str
    given: ReferenceSet
    summaries: dict[int, dict[str, torch.Tensor]]


# The transparency map accumulates |∂L/∂x| over the last fifth of the steps only (where the
# learning rate has fallen below about an eighth of its peak and the picture has settled), not
# over all of them as METHOD.md says: while the picture still moves its layout the gradient
# moves with it and sums to a flat map, flatter than the evidence the finished picture carries
# (on 14×14 units 0.34 of the mass in the brightest quarter against 0.41 over the last fifth;
# docs/method.md, "Signed units"; benchmarks/RESULTS.md, "The transparency of the finished
# picture").
TRANSPARENCY_FROM = 0.8


@dataclass
class VitalNeuron(Method):
    """VITAL for inner channels and concept directions.

    Attributes
    ----------
    taps
        Taps to match (must lie below every target); default: the model's default taps below
        each target, stem weight 0.1.
    relevance
        Relevance backend name (``lrp``, ``lrp-restricted``, ``guided-backprop``,
        ``grad-x-act``, or a zennit composite such as ``epsilon-plus-flat``) or a backend.
    patch_side
        ``None`` or 0 (default): whole images; ``"auto"``: the best patches when the unit's
        receptive field is smaller than the image (:func:`auto_patch_side`: a mid-level unit of
        a 14×14 or 28×28 map), else whole images; a side in pixels (32 or 64 as the authors
        mine): the best patch of each image (by the target's mean activation), resized to the
        input size. Whole images are the default because, measured with a few photos' crops as
        references, the pictures made from patches were no further from the other channels'
        references than those made from the crops, judged against the patches they matched as
        well as against the photos, and their transparency maps no more concentrated
        (docs/method.md, "Mid-level units and residual sums"). With patches, from a folder of
        at least ``reference_count`` images the top ``reference_count`` images by that score
        are kept; a set of fewer images, expanded to views (crops), gives the best patch of
        each view.
    rank
        With whole images, keep the ``reference_count`` images that activate the target most
        (instead of the set as given).
    reference_count, reference_seed, cache_dir
        As for :class:`vital.methods.vital_class.VitalClass`.
    relevance_floor
        A floor in [0, 1) under every target's normalised relevance at every position:
        ``f + (1 − f) · r`` (:class:`vital.objectives.NeuronTarget`). 0 (the default): the
        authors' weights (signed targets keep their own floor, docs/method.md). Concept
        pictures use one (docs/concepts.md).
    """

    taps: Sequence[str | Tap] | None = None
    relevance: str | RelevanceBackend = "lrp"
    patch_side: int | str | None = None
    rank: bool = False
    relevance_floor: float = 0.0
    reference_count: int = DEFAULT_REFERENCES
    reference_seed: int = 0
    cache_dir: Path | None = None

    name = "vital"
    targets = (Channel, Direction)
    uses_references = True
    named_settings = True
    has_transparency = True
    transparency_from = TRANSPARENCY_FROM

    def default_settings(self, model: Model, setting: int | str | None = None) -> Settings:
        """The named setting (``fast`` unless named) with the inner-neuron priors 3e-7."""
        settings = Settings.setting(DEFAULT_SETTING if setting is None else setting)
        return dataclasses.replace(settings, tv_l2=NEURON_PRIOR, l2=NEURON_PRIOR)

    @contextlib.contextmanager
    def prepare(
        self,
        model: Model,
        targets: Sequence[Channel | Direction],
        references: NeuronReferences,
        settings: Settings,
    ) -> Iterator[list[NeuronPlan]]:
        """Resolve each target, choose its references, attach the backend, summarise them."""
        floor = check_relevance_floor(self.relevance_floor)
        backend = get_backend(self.relevance)
        if settings.compile and backend.composite is not None:
            # Dynamo traces the rules' hooks into the compiled graph and breaks them (a weak
            # reference comes back as its object): the run failed inside torch at its first step.
            raise VitalError(
                f"compile=True cannot run inner units with the {backend.name!r} relevance "
                "backend: its rules are hooks that torch.compile does not trace. Leave compile "
                "off, or use relevance='grad-x-act'."
            )
        resolution = resolution_of(model, settings)
        layers = list_layers(model.module, model.preprocessing.input_size)
        info = {i.name: i for i in layers}
        resolved: list[
            tuple[NeuronTarget, str, ReferenceSet, list[float] | None, str, ReferenceSet]
        ] = []
        directions = []
        for target in targets:  # every target checked before any target's references are read
            check_target_layer(
                target.layer, model.module, model.preprocessing.input_size, layers, model.zoo_name
            )
            if target.layer not in info:  # it runs, but returns no tensor
                raise VitalError(
                    f"layer {target.layer!r} returns no tensor, so it has no unit to picture; "
                    "choose another layer."
                )
            check_positions(info[target.layer], model.zoo_name, "so it has no maps to weigh")
            directions.append(direction_of(target, info[target.layer]))
            check_drivable(model, target, directions[-1], info[target.layer])
        for target, direction in zip(targets, directions, strict=True):
            chosen, source = neuron_taps(
                model, layers, target.layer, self.taps, near=settings.near_tap
            )
            neuron = NeuronTarget(target.layer, direction, chosen, float(floor))
            candidates = neuron_references(
                target, references, self.reference_count, self.reference_seed
            ).readable(self.cache_dir)
            chosen_references, scores, mode = self._choose_references(
                model, info[target.layer], neuron, candidates, resolution
            )
            resolved.append((neuron, source, chosen_references, scores, mode, candidates))
        all_taps = list(dict.fromkeys(t.layer for n, *_ in resolved for t in n.taps))
        target_layers = list(dict.fromkeys(n.layer for n, *_ in resolved))
        # The backend may fold BatchNorms into convolutions while attached: fingerprint before.
        model.fingerprint  # noqa: B018
        with backend.attached(model.module, layers, all_taps, target_layers):
            yield [
                NeuronPlan(
                    target,
                    backend,
                    neuron,
                    source,
                    candidates,
                    scores,
                    mode,
                    given,
                    {
                        factor: neuron_prototypes(
                            model,
                            backend,
                            neuron,
                            candidates,
                            resolution,
                            factor,
                            cache_dir=self.cache_dir,
                            coarse_view=settings.coarse_view,
                        )
                        for _, factor in settings.stages()
                    },
                )
                for target, (neuron, source, candidates, scores, mode, given) in zip(
                    targets, resolved, strict=True
                )
            ]

    def _choose_references(
        self,
        model: Model,
        info: LayerInfo,
        neuron: NeuronTarget,
        candidates: ReferenceSet,
        resolution: int,
    ) -> tuple[ReferenceSet, list[float] | None, str]:
        """The references a target matches, their scores, and how they were chosen.

        The last is the record's ``references.mode``.
        """
        side, why = self.patch_side, ""
        if side == "auto":
            field = receptive_field(model, info, resolution)
            side = auto_patch_side(field, resolution)
            why = f" (auto: the unit's receptive field is about {field}px of {resolution})"
        elif side is not None and (isinstance(side, bool) or not isinstance(side, int)):
            raise VitalError(f"patch_side is 'auto', 0 (whole images) or pixels, not {side!r}.")
        if not side and not self.rank:
            return candidates, None, "whole images" + why
        score = target_score(model, neuron.layer, neuron.direction)
        if side and candidates.expanded:
            preprocessing = model.preprocessing
            chosen, scores = best_patches(
                candidates, score, resolution, side, preprocessing.crop_pct,
                preprocessing.interpolation,
            )  # fmt: skip
            return chosen, scores, f"best {side}px patch of each view{why}"
        chosen, scores = top_references(
            candidates, score, resolution, self.reference_count, side or None
        )
        mode = f"best {side}px patch per image" if side else "whole images, ranked"
        return chosen, scores, mode + why

    @contextlib.contextmanager
    def objective(
        self, model: Model, plans: Sequence[NeuronPlan], settings: Settings, seeds: Sequence[int]
    ) -> Iterator[RelevanceSortMatching]:
        """Relevance-weighted sort matching; the taps attach after the backend, as it needs."""
        batch = [plan.neuron for plan in plans]
        taps = list(dict.fromkeys(t.layer for n in batch for t in n.taps))
        layers = list(dict.fromkeys(n.layer for n in batch))
        summaries = {
            factor: [plan.summaries[factor] for plan in plans] for _, factor in settings.stages()
        }
        with tapped(model.module, taps + layers, stop_early=True) as tap:
            yield RelevanceSortMatching(tap, plans[0].backend, batch, summaries)

    def identifying_references(self, plan: NeuronPlan) -> ReferenceSet:
        """The references as given (the patches matched follow from them and the options)."""
        return plan.given

    def record_fields(self, plan: NeuronPlan, objective: RelevanceSortMatching, item: int) -> dict:
        """Taps, relevance, references (with their scores) and the activation over the run."""
        # The given references identify the picture (the patches follow from them, the model
        # and the options); what was matched is described beside them.
        references = reference_fields(plan.given)
        references["mode"] = plan.reference_mode
        if plan.references is not plan.given:
            references["matched"] = reference_fields(plan.references)
        if plan.scores is not None:
            references["scores"] = [round(v, 6) for v in plan.scores]
        full = plan.summaries.get(1)
        trace = torch.stack(objective.trace).cpu()[:, item]
        return {
            "taps": [{"layer": t.layer, "weight": t.weight} for t in plan.neuron.taps],
            "taps_source": plan.taps_source,
            "relevance": plan.backend.name,
            "references": references,
            "evaluation": {
                "reference_activation": float(full["activation"]) if full is not None else None,
                # > 0: a signed target, matched with a floor under its relevance (the share of
                # its map that is negative; docs/method.md, "Signed units")
                "reference_negative_share": round(float(full["negative_share"]), 4)
                if full is not None
                else None,
                # the transparency map's |∂L/∂x| is summed from this share of the steps on
                "transparency_from": self.transparency_from,
                # a target matched with the floor has its map from the loss without it
                "transparency_without_floor": objective.held is not None
                and bool(objective.held[item]),
            },
            "activation_trace": _thinned(trace),
            "options": self.options(plan.given),
        }
