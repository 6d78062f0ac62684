"""Inner channels and concept directions: relevance-weighted VITAL (METHOD.md sections 3 and 4).

:func:`visualize_neurons` resolves each target (layer, direction, taps strictly below the
layer), finds its references (any :class:`ReferenceSet`, a folder, or the embedded photos;
whole images or the best patch of each), attaches the relevance backend once for the whole run,
and optimises the targets in batches (targets of different layers may share a batch). Each
result carries the transparency map formed from the gradients the optimiser already used, and
its record the target's activation on the final image against its references' mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vital.errors import VitalError
from vital.objectives import NeuronTarget, RelevanceSortMatching, neuron_prototypes
from vital.optimize import Settings, initial_images, optimize, transparency
from vital.references import (
    DEFAULT_REFERENCES,
    SAMPLE_PHOTOS,
    ReferenceSet,
    from_folder,
    from_samples,
    top_references,
)
from vital.relevance import RelevanceBackend, get_backend, target_activation
from vital.store import Result, ResultSink
from vital.taps import LayerInfo, Tap, check_layer, default_taps, list_layers, parse_taps, tapped
from vital.targets import Channel, Direction
from vital.zoo import Model, as_model

NeuronReferences = ReferenceSet | str | Path | Mapping[Channel | Direction, ReferenceSet] | None

# The authors' inner-neuron defaults (METHOD.md section 3).
STEM_WEIGHT = 0.1
NEURON_PRIOR = 3e-7


def neuron_settings(settings: Settings | None) -> Settings:
    """The authors' inner-neuron defaults (priors tv_l2 = l2 = 3e-7) unless given."""
    return settings if settings is not None else Settings(tv_l2=NEURON_PRIOR, l2=NEURON_PRIOR)


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


def direction_target(layer: str, path: str | Path) -> Direction:
    """A concept direction read from a ``.npy`` file holding one vector over the channels."""
    path = Path(path)
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise VitalError(f"cannot read the direction file {path}: {error}") from error
    if values.ndim != 1:
        raise VitalError(
            f"{path} holds an array of shape {values.shape}; a direction is one vector over "
            "the layer's channels."
        )
    return Direction(layer, tuple(float(v) for v in values), name=path.stem)


def neuron_taps(
    model: Model,
    layers: Sequence[LayerInfo],
    target_layer: str,
    taps: Sequence[str | Tap] | None = None,
) -> tuple[tuple[Tap, ...], str]:
    """Taps strictly below ``target_layer``: the user's, else the model's defaults.

    With the defaults the first (stem) tap weighs 0.1 and the others 1, as in the authors'
    inner-neuron setting.
    """
    info = {i.name: i for i in layers}
    below = lambda name: info[name].end < info[target_layer].start  # noqa: E731
    if taps:
        chosen = tuple(t if isinstance(t, Tap) else parse_taps([t])[0] for t in taps)
        for tap in chosen:
            check_layer(tap.layer, model.module)
            if tap.layer not in info or not below(tap.layer):
                raise VitalError(
                    f"tap {tap.layer!r} is not computed before the target layer "
                    f"{target_layer!r}; only layers below the target can be matched."
                )
        return chosen, "given by the user"
    defaults, source = default_taps(model.name, layers)
    stem = defaults[0].layer
    chosen = tuple(
        Tap(t.layer, STEM_WEIGHT if t.layer == stem else 1.0) for t in defaults if below(t.layer)
    )
    if not chosen:
        raise VitalError(
            f"no feature tap lies below {target_layer!r} (default taps: "
            f"{', '.join(t.layer for t in defaults)}); pick a deeper layer or name taps with "
            "--tap NAME=WEIGHT."
        )
    return chosen, f"{source}, below {target_layer} (stem weight {STEM_WEIGHT:g})"


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
                values.append(target_activation(output, directions).cpu())
        return torch.cat(values)

    return score


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
        return references[target]
    if references is None or str(references) == "samples":
        return from_samples(list(SAMPLE_PHOTOS), count, seed)
    return from_folder(references, count, seed)


def _record_target(target: Channel | Direction, direction: torch.Tensor) -> dict:
    record = {"kind": "channel" if isinstance(target, Channel) else "direction"}
    record["layer"] = target.layer
    if isinstance(target, Channel):
        record["index"] = target.index
    else:
        record["name"] = target.name
        record["direction"] = [float(v) for v in direction]
    return record


@torch.no_grad()
def _activations(model: Model, images: torch.Tensor, targets: Sequence[NeuronTarget]):
    layers = list(dict.fromkeys(t.layer for t in targets))
    with tapped(model.module, layers, stop_early=True) as tap:
        tap(images)
        return torch.stack(
            [
                target_activation(tap.outputs[t.layer][i : i + 1], t.direction.view(1, -1))[0]
                for i, t in enumerate(targets)
            ]
        ).cpu()


def _thinned(trace: torch.Tensor, points: int = 50) -> list[list[float]]:
    """About ``points`` [step, activation] pairs of a (steps,) trace, the last one included."""
    every = max(1, len(trace) // points)
    steps = sorted({*range(0, len(trace), every), len(trace) - 1}) if len(trace) else []
    return [[step + 1, round(float(trace[step]), 5)] for step in steps]


def visualize_neurons(
    model: Model | str,
    targets: Sequence[Channel | Direction],
    references: NeuronReferences = None,
    *,
    settings: Settings | None = None,
    taps: Sequence[str | Tap] | None = None,
    relevance: str | RelevanceBackend = "lrp",
    patch_side: int | None = None,
    rank: bool = False,
    out: str | Path | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    reference_count: int = DEFAULT_REFERENCES,
    progress: bool = True,
    cache_dir: Path | None = None,
    on_result: Callable[[Result], None] | None = None,
    seeds: Sequence[int] | None = None,
    reference_seed: int = 0,
) -> list[Result]:
    """Visualise inner channels and concept directions with relevance-weighted VITAL.

    Parameters
    ----------
    model
        A model name or :class:`vital.Model`.
    targets
        :class:`Channel` and :class:`Direction` targets, of any layers; optimised together in
        batches of ``batch_size``.
    references
        Per target (see :func:`neuron_references`): ``None`` (the embedded photos), a folder, a
        :class:`ReferenceSet` (e.g. mined top-activating images) or a mapping target → set.
    settings
        Optimisation settings (default: setting 1 with the inner-neuron priors 3e-7).
    taps
        Taps to match (must lie below every target); default: the model's default taps below
        each target, stem weight 0.1.
    relevance
        Relevance backend name (``lrp``, ``lrp-restricted``, ``guided-backprop``,
        ``grad-x-act``, or a zennit composite such as ``epsilon-plus-flat``).
    patch_side
        ``None``: whole images as references; 32 or 64: the best patch of each image (by the
        target's mean activation), resized to the input size, and the top ``reference_count``
        images by that score.
    rank
        With whole images, keep the ``reference_count`` images that activate the target most
        (instead of the set as given).
    out, batch_size, device, reference_count, progress, cache_dir, on_result, seeds,
    reference_seed
        As for :func:`vital.api.visualize`.

    Returns
    -------
    list of Result
        One per target, in order, each with its transparency map (``alpha``); its record holds
        the target's final activation against its references' and the starting noise's
        (``evaluation``) and about 50 ``[step, activation]`` points of the run
        (``activation_trace``, on each step's jittered input).
    """
    from vital.api import _batches, _record

    model = as_model(model, device)
    targets = list(targets)
    if not targets:
        raise VitalError("no targets given; name at least one channel (--channel K).")
    if batch_size < 1:
        raise VitalError("the batch size must be at least 1 (--batch B).")
    backend = get_backend(relevance)
    settings = neuron_settings(settings)
    settings.validate()
    resolution = settings.resolution or model.preprocessing.input_size
    layers = list_layers(model.module, model.preprocessing.input_size)
    info = {i.name: i for i in layers}
    resolved: list[NeuronTarget] = []
    sources: list[str] = []
    for target in targets:
        check_layer(target.layer, model.module)
        if target.layer not in info or len(info[target.layer].shape) != 3:
            raise VitalError(
                f"layer {target.layer!r} has no spatial (C, H, W) output; choose a "
                "convolutional layer (run `vital layers MODEL`)."
            )
        chosen, source = neuron_taps(model, layers, target.layer, taps)
        resolved.append(
            NeuronTarget(target.layer, direction_of(target, info[target.layer]), chosen)
        )
        sources.append(source)

    seeds = list(seeds) if seeds is not None else [settings.seed + i for i in range(len(targets))]
    if len(seeds) != len(targets):
        raise VitalError(f"{len(seeds)} seeds were given for {len(targets)} targets.")
    reference_sets, reference_scores = [], []
    for target, neuron in zip(targets, resolved, strict=True):
        candidates = neuron_references(target, references, reference_count, reference_seed)
        if patch_side is not None or rank:
            score = target_score(model, neuron.layer, neuron.direction)
            candidates, scores = top_references(
                candidates, score, resolution, reference_count, patch_side
            )
            reference_scores.append(scores)
        else:
            reference_scores.append(None)
        reference_sets.append(candidates)

    all_taps = list(dict.fromkeys(t.layer for n in resolved for t in n.taps))
    target_layers = list(dict.fromkeys(n.layer for n in resolved))
    sink = ResultSink(out, on_result)
    batch_count = -(-len(resolved) // batch_size)
    # The backend may fold BatchNorms into convolutions while attached: fingerprint before.
    model.fingerprint  # noqa: B018
    with backend.attached(model.module, layers, all_taps, target_layers):
        summaries = {
            factor: [
                neuron_prototypes(model, backend, n, r, resolution, factor, cache_dir=cache_dir)
                for n, r in zip(resolved, reference_sets, strict=True)
            ]
            for _, factor in settings.stages()
        }
        for number, (start, batch) in enumerate(_batches(resolved, batch_size), 1):
            batch_seeds = seeds[start : start + len(batch)]
            batch_summaries = {f: s[start : start + len(batch)] for f, s in summaries.items()}
            batch_taps = list(dict.fromkeys(t.layer for n in batch for t in n.taps))
            batch_layers = list(dict.fromkeys(n.layer for n in batch))
            label = f"batch {number}/{batch_count}" if batch_count > 1 else "optimising"
            with tapped(model.module, batch_taps + batch_layers, stop_early=True) as tap:
                objective = RelevanceSortMatching(tap, backend, batch, batch_summaries)
                run = optimize(
                    objective,
                    len(batch),
                    model.preprocessing,
                    settings,
                    model.device,
                    progress=label if progress else False,
                    dtype=model.dtype,
                    seeds=batch_seeds,
                )
            final = _activations(model, run.images, batch)
            noise = initial_images(batch_seeds, resolution, model.device, model.dtype)
            initial = _activations(model, noise, batch)
            alpha = transparency(run.gradient_magnitude).cpu()
            trace = torch.stack(objective.trace).cpu()  # (steps, batch)
            for item, neuron in enumerate(batch):
                index = start + item
                target = targets[index]
                record = _record(
                    model,
                    _record_target(target, neuron.direction),
                    reference_sets[index],
                    neuron.taps,
                    sources[index],
                    settings,
                    run,
                    item,
                    len(batch),
                )
                reference_activation = (
                    float(summaries[1][index]["activation"]) if (1 in summaries) else None
                )
                record["relevance"] = backend.name
                record["references"]["mode"] = (
                    f"best {patch_side}px patch per image" if patch_side else "whole images"
                )
                if reference_scores[index] is not None:
                    record["references"]["scores"] = [round(v, 6) for v in reference_scores[index]]
                record["evaluation"] = {
                    "activation": float(final[item]),
                    "reference_activation": reference_activation,
                    "initial_activation": float(initial[item]),
                }
                record["activation_trace"] = _thinned(trace[:, item])
                result = Result(target, run.pixels[item].cpu(), record, alpha=alpha[item])
                sink(result)
    return sink.results


__all__ = ["direction_target", "neuron_settings", "neuron_taps", "visualize_neurons"]
