"""Objectives: what a batch of synthetic images is optimised to match.

An objective is called with model input (B, 3, h, w) and the stage's downsample factor and
returns named (B,) loss terms; :func:`vital.optimize.optimize` adds the image priors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch

from vital.losses import (
    core_free,
    sort_matching_loss,
    sort_targets_ahead,
    sort_targets_shared,
)
from vital.optimize import MAP_TERM
from vital.references import Prototypes, ReferenceSet, average_over_views, cached
from vital.relevance import RelevanceBackend, target_activation
from vital.relevance.seeds import negative_share
from vital.scales import coarse_key
from vital.taps import FeatureTap, Tap, tapped, to_positions


class SortMatching:
    """VITAL's class objective: Σ_l w_l · SM(features_l, prototype_l) over the taps.

    Parameters
    ----------
    tap
        An attached :class:`vital.taps.FeatureTap` reading ``taps``.
    taps
        Tap names and weights.
    prototypes
        Per downsample factor, one prototype dict per image of the batch.
    """

    def __init__(
        self,
        tap: FeatureTap,
        taps: Sequence[Tap],
        prototypes: dict[int, Sequence[Prototypes]],
    ):
        self.tap = tap
        self.taps = tuple(taps)
        self._stacked: dict[int, dict[str, torch.Tensor]] = {}
        self._prototypes = prototypes
        # Targets started during the forward pass: tap → (targets, the output's version then),
        # against the prototypes of the pass under way.
        self._ahead: dict[str, tuple[Future[torch.Tensor], int]] = {}
        self._matching: dict[str, torch.Tensor] = {}
        self._matched = {t.layer for t in self.taps if t.weight}
        tap.notify(self._sort_ahead)

    def _sort_ahead(self, name: str, output: torch.Tensor) -> None:
        # Runs inside the forward pass, as each tap is read: the early taps' sorts (the stem's
        # is the largest) overlap the rest of the pass instead of following it.
        if name not in self._matching or output.dim() not in (3, 4):
            return
        # Checked before the features are brought to (B, C, P) as float32: a GPU run (whose
        # bfloat16 output that would copy) or a busy CPU sorts after the pass anyway.
        if output.device.type != "cpu" or not core_free() or _compiling():
            return
        layout = self.tap.known_layout(name)
        if layout is None:
            return
        values = to_positions(output.detach(), layout).float()
        targets = sort_targets_ahead(values, self._matching[name])
        if targets is not None:
            self._ahead[name] = (targets, output._version)

    def _targets(self, name: str) -> torch.Tensor | None:
        # The targets started ahead, unless the output was written to since (an in-place op
        # after the tap): then the loss sorts what the output holds now, as it would have anyway.
        if name not in self._ahead:
            return None
        targets, version = self._ahead.pop(name)
        found = targets.result()
        return found if self.tap.outputs[name]._version == version else None

    def _stack(self, factor: int, device: torch.device) -> dict[str, torch.Tensor]:
        # Stacked once per stage: (B, C, P) per tap, one prototype per image.
        if factor not in self._stacked:
            per_image = self._prototypes[factor]
            self._stacked[factor] = {
                t.layer: torch.stack([p[t.layer] for p in per_image]).to(device) for t in self.taps
            }
        return self._stacked[factor]

    def __call__(self, model_input: torch.Tensor, factor: int) -> dict[str, torch.Tensor]:
        """Per-tap weighted sort-matching losses, each (B,)."""
        prototypes = self._stack(factor, model_input.device)
        self._ahead.clear()
        self._matching = {name: prototypes[name] for name in self._matched}
        try:
            features = self.tap(model_input)
        finally:
            self._matching = {}
        terms = {}
        for t in self.taps:
            if not t.weight:
                continue
            # float32 sorts and losses, whatever precision the model ran in
            values = features[t.layer].float()
            targets = self._targets(t.layer)
            if targets is None:  # not started during the pass: the free cores share it now
                targets = sort_targets_shared(values, prototypes[t.layer])
            terms[t.layer] = t.weight * sort_matching_loss(
                values, prototypes[t.layer], targets=targets
            )
        return terms


def _compiling() -> bool:
    # A traced forward pass (compile=True) starts no threads; torch.compiler has the
    # question from torch 2.3 on, torch._dynamo before.
    check = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    return bool(check())


# --- inner neurons: relevance-weighted sort matching (METHOD.md section 3) --------------------


def normalized_relevance(
    relevance: torch.Tensor, floor: torch.Tensor | None = None
) -> torch.Tensor:
    """Min-max normalise each channel's positive relevance over positions, per image.

    Negative relevance (evidence against the target, which signed backends such as
    ``grad-x-act`` or the epsilon composites give) counts as none: the weights say where the
    features drive the target up (docs/method.md, "Signed units"). For the non-negative
    relevance of ``lrp`` this is the authors' min-max normalisation.

    Parameters
    ----------
    relevance
        (B, C, P) relevance.
    floor
        Optional (B,) weights in [0, 1] every position keeps (:func:`relevance_floor`): the
        normalised relevance ``r`` becomes ``floor + (1 − floor) · r``. A zero floor leaves
        ``r`` exactly as it is.

    Returns
    -------
    torch.Tensor
        (B, C, P) in [0, 1]; channels with constant relevance become 0 (the floor with one).
    """
    relevance = relevance.clamp_min(0)
    low = relevance.amin(dim=-1, keepdim=True)
    span = relevance.amax(dim=-1, keepdim=True) - low
    normalized = torch.where(span > 0, (relevance - low) / span.clamp_min(1e-12), 0.0)
    if floor is None:
        return normalized
    floor = floor.to(normalized.dtype).view(-1, *([1] * (normalized.dim() - 1)))
    return floor + (1 - floor) * normalized


def channel_importance(relevance: torch.Tensor) -> torch.Tensor:
    """Each channel's largest relevance, min-max normalised across channels, per image: (B, C).

    As in :func:`normalized_relevance`, negative relevance counts as none.
    """
    peak = relevance.clamp_min(0).amax(dim=-1)
    low = peak.amin(dim=-1, keepdim=True)
    span = peak.amax(dim=-1, keepdim=True) - low
    return torch.where(span > 0, (peak - low) / span.clamp_min(1e-12), 0.0)


def weighted_features(
    features: torch.Tensor, relevance: torch.Tensor, floor: torch.Tensor | None = None
) -> torch.Tensor:
    """Features (B, C, P) times their normalised relevance, which carries no gradient."""
    return features * normalized_relevance(relevance.detach(), floor)


# Key prefix of a held target's prototypes with the authors' weights, for the map's loss.
MAP_PROTOTYPE = "map-prototype:"

# The most a position the unit's relevance does not reach weighs, against 1 for its most
# relevant one: the relevance keeps shaping the weights where a unit is negative nearly
# everywhere (a floor of 1 would weigh every position alike).
FLOOR_CAP = 0.5


def negative_shares(
    outputs: Mapping[str, torch.Tensor],
    directions: Mapping[str, torch.Tensor],
    layouts: Mapping[str, str],
) -> torch.Tensor:
    """Each image's share of its target's map that is negative, (B,) in [0, 1].

    :func:`vital.relevance.seeds.negative_share` at each image's target layer (rows of
    images whose target is at another layer count 0 there).

    Parameters
    ----------
    outputs
        Layer outputs of one forward pass (the target layers among them).
    directions
        Target layer → (B, C) directions, zero rows for images whose target is elsewhere.
    layouts
        Layer → layout of its output where the shape does not tell.
    """
    return sum(
        negative_share(outputs[layer].detach(), direction, layouts.get(layer))
        for layer, direction in directions.items()
    )


def held(reference_share: float | torch.Tensor) -> bool | torch.Tensor:
    """Whether a target is matched with a floor under its relevance, from its references.

    Signed targets whose references' maps are negative somewhere but mostly positive (a
    negative share below :data:`FLOOR_CAP`): the unit fires on part of its references and the
    rest is held. A ReLU output is never negative; a unit its references drive down over most
    of the image has nothing it fires on to set apart from the rest, and the floor would weigh
    every position nearly alike: both keep the authors' weights.
    """
    return (reference_share > 0) & (reference_share < FLOOR_CAP)


def relevance_floor(share: torch.Tensor) -> torch.Tensor:
    """The floor under each image's normalised relevance: its target's negative share, capped.

    The seed starts only where a target fires (:func:`vital.relevance.seeds.upward`), so the
    features of the rest of the image get no weight and nothing holds them: on signed units
    those areas drifted to white or black. Every position keeps, as a floor, the share of the
    target's map that is negative (:func:`negative_shares`), at most :data:`FLOOR_CAP`: high
    while the unit is negative over most of the image (the image is then held close to the
    references' feature statistics), fading as the unit comes to fire; 0, and so the
    authors' weights exactly, where the target is never negative (a ReLU output).
    """
    return share.clamp_max(FLOOR_CAP)


@dataclass(frozen=True)
class NeuronTarget:
    """What one image of a batch is optimised for: a direction at a layer, read at some taps.

    Attributes
    ----------
    layer
        The target layer.
    direction
        (C,) direction over its channels (one-hot for a channel).
    taps
        Taps strictly below ``layer`` with their weights.
    floor
        A floor every position keeps under the normalised relevance, ``f + (1 − f) · r``
        (:func:`normalized_relevance`), whatever the target's sign; 0 (the default) keeps the
        authors' weights. Concept pictures use one (docs/concepts.md, "Pictures").
    """

    layer: str
    direction: torch.Tensor
    taps: tuple[Tap, ...]
    floor: float = 0.0


def neuron_prototypes(
    model,
    backend: RelevanceBackend,
    target: NeuronTarget,
    references: ReferenceSet,
    resolution: int,
    downsample: int = 1,
    batch_size: int = 8,
    cache_dir: Path | None = None,
    coarse_view: str = "pooled",
) -> dict[str, torch.Tensor]:
    """Relevance-weighted prototypes, channel importance and activation of a target's references.

    Must run while ``backend`` is attached to ``model`` (see
    :meth:`vital.relevance.RelevanceBackend.attached`).

    Returns
    -------
    dict
        ``prototype:TAP`` → (C, P) mean sorted ``A ⊙ R̂``; ``importance:TAP`` → (C,) mean channel
        importance; ``activation`` → the references' mean target activation (scalar);
        ``negative_share`` → the mean share of the target's map that is negative on them
        (:func:`negative_shares`; 0 for a ReLU output), which decides whether the prototypes
        are weighted with a floor (:func:`held`); for a target held so,
        ``map-prototype:TAP`` → (C, P) the same with the authors' weights (no signed floor),
        for the transparency map (:class:`RelevanceSortMatching`).
    """
    taps = [t.layer for t in target.taps]

    def compute() -> dict[str, torch.Tensor]:
        with tapped(model.module, [*taps, target.layer], stop_early=True) as tap:

            def read(x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
                directions = {target.layer: target.direction.to(x.device).expand(x.shape[0], -1)}
                return directions, {name: tap.layout(name) for name in tap.layers}

            def shares(x: torch.Tensor) -> dict[str, torch.Tensor]:
                with torch.no_grad():
                    tap(x)
                return {"negative_share": negative_shares(tap.outputs, *read(x))}

            # Whether the floor applies is the target's, from all its references: one pass first
            # (kept a tensor: no read of its value here).
            overall = average_over_views(
                model, references, resolution, shares, downsample, batch_size, coarse_view
            )
            hold = held(overall["negative_share"])
            # read once per target: whether the map needs prototypes of its own
            held_target = bool(hold)

            def summarize(x: torch.Tensor) -> dict[str, torch.Tensor]:
                with torch.enable_grad():
                    features = tap(x.requires_grad_(True))
                directions, layouts = read(x)
                relevance = backend.relevance(tap.outputs, directions, taps, layouts)
                share = negative_shares(tap.outputs, directions, layouts)
                floor = relevance_floor(share) * hold.to(share.device, share.dtype)
                floor = floor.clamp_min(target.floor)
                # the map's weights: the target's own floor only (on the share's device)
                own_floor = torch.full_like(share, target.floor) if target.floor else None
                summary = {
                    "activation": target_activation(
                        tap.outputs[target.layer].detach(),
                        directions[target.layer],
                        layouts[target.layer],
                    ),
                    "negative_share": share,
                }
                for name in taps:
                    weighted = weighted_features(features[name].detach(), relevance[name], floor)
                    summary[f"prototype:{name}"] = weighted.sort(dim=-1).values
                    summary[f"importance:{name}"] = channel_importance(relevance[name])
                    if held_target:
                        # the authors' weights (the target's own floor only): the map's loss
                        unheld = weighted_features(
                            features[name].detach(), relevance[name], own_floor
                        )
                        summary[f"{MAP_PROTOTYPE}{name}"] = unheld.sort(dim=-1).values
                return summary

            return average_over_views(
                model, references, resolution, summarize, downsample, batch_size, coarse_view
            )

    key = [
        "neuron-v3",  # v2: upward seed, signed floor; v3: the map's prototypes
        model.fingerprint,
        taps,
        target.layer,
        [round(float(v), 7) for v in target.direction],
        backend.name,
        references.identity(),
        resolution,
        downsample,
        *([target.floor] if target.floor else []),  # without one: the keys kept so far
        *coarse_key(downsample, coarse_view),
    ]
    return cached("neuron-prototypes", key, compute, cache_dir)


class RelevanceSortMatching:
    """VITAL's inner-neuron objective: relevance-weighted sort matching with channel importance.

    Each image of the batch has its own target (a direction at a layer, possibly a different
    layer per image) and its own taps below it. One forward pass reads every tap and target
    layer; one relevance pass (the backend's, no gradient to the image) gives each tap's
    relevance for each image's target; the loss of tap ``l`` for image ``b`` is
    ``w_bl · mean((A ⊙ R̂ − target)² · importance)``.

    After each call, :attr:`trace` holds one (B,) tensor more: each image's target activation
    on the input of that call.

    Signed targets that their references drive up (:func:`held`) weight their features with a
    floor under the relevance (:func:`relevance_floor`), which holds the areas the unit does
    not fire on; other targets keep the authors' weights exactly. The floor weighs every
    position, so its gradient spreads over the whole image; while :attr:`map_terms` is set
    (by the loop, while the transparency map accumulates) a batch with a held target also
    returns, under ``map:TAP``, the loss with the authors' weights against prototypes made
    with them, and the map is made from that loss's gradient (the picture still follows the
    held loss).

    Parameters
    ----------
    tap
        An attached :class:`vital.taps.FeatureTap` reading ``taps`` and the target layers; it
        must have been attached after ``backend``.
    backend
        The attached relevance backend.
    targets
        One :class:`NeuronTarget` per image.
    prototypes
        Per downsample factor, the :func:`neuron_prototypes` of each image's target.
    """

    def __init__(
        self,
        tap: FeatureTap,
        backend: RelevanceBackend,
        targets: Sequence[NeuronTarget],
        prototypes: dict[int, Sequence[dict[str, torch.Tensor]]],
    ):
        self.tap = tap
        self.backend = backend
        self.targets = tuple(targets)
        self.taps = tuple(dict.fromkeys(t.layer for target in targets for t in target.taps))
        self.weights = torch.tensor(
            [[_weight(target, name) for name in self.taps] for target in targets]
        )
        self._prototypes = prototypes
        self._stacked: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.trace: list[torch.Tensor] = []
        # Read once here, not per step (a read of a device value waits for it).
        any_factor = next(iter(prototypes.values()))
        chosen = [bool(held(float(summary.get("negative_share", 0.0)))) for summary in any_factor]
        self.held = torch.tensor(chosen) if any(chosen) else None
        floors = [target.floor for target in targets]
        self.floors = torch.tensor(floors) if any(floors) else None
        self.map_terms = False

    def directions(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Target layer → (B, C) directions, zero rows for images targeting another layer."""
        directions: dict[str, torch.Tensor] = {}
        for row, target in enumerate(self.targets):
            if target.layer not in directions:
                directions[target.layer] = torch.zeros(
                    len(self.targets), target.direction.numel(), device=device
                )
            directions[target.layer][row] = target.direction.to(device)
        return directions

    def _stack(self, factor: int, like: dict[str, torch.Tensor]):
        # (B, C, P) prototypes, (B, C, 1) importance and (B, C, P) prototypes for the map (a
        # held target's own, the others' the same) per tap; zeros where a tap is unused.
        if factor not in self._stacked:
            stacked = {}
            for name in self.taps:
                shape = like[name].shape[1:]
                prototypes, importance, for_map = [], [], []
                for summary in self._prototypes[factor]:
                    prototypes.append(summary.get(f"prototype:{name}", torch.zeros(shape)))
                    importance.append(summary.get(f"importance:{name}", torch.zeros(shape[0])))
                    for_map.append(summary.get(f"{MAP_PROTOTYPE}{name}", prototypes[-1]))
                device = like[name].device
                stacked[name] = (
                    torch.stack(prototypes).to(device),
                    torch.stack(importance).unsqueeze(-1).to(device),
                    torch.stack(for_map).to(device) if self.held is not None else None,
                )
            self._stacked[factor] = stacked
        return self._stacked[factor]

    def __call__(self, model_input: torch.Tensor, factor: int) -> dict[str, torch.Tensor]:
        """Per-tap weighted losses, each (B,)."""
        if not model_input.requires_grad:
            # Relevance needs a graph from the taps to the target even for a constant input.
            model_input = model_input.detach().requires_grad_(True)
        features = self.tap(model_input)
        directions = self.directions(model_input.device)
        layouts = {name: self.tap.layout(name) for name in self.tap.layers}
        relevance = self.backend.relevance(self.tap.outputs, directions, self.taps, layouts)
        with torch.no_grad():
            # Each image's target activation on its (jittered) input: free, the target layers
            # ran anyway; it shows how a long run got where it ended.
            # (kept on the device: reading it each step would wait for the GPU)
            self.trace.append(
                sum(
                    target_activation(self.tap.outputs[layer], direction, layouts[layer])
                    for layer, direction in directions.items()
                )
            )
        floor = None
        if self.held is not None:
            floor = relevance_floor(negative_shares(self.tap.outputs, directions, layouts))
            floor = floor * self.held.to(model_input.device)
        if self.floors is not None:
            floors = self.floors.to(model_input.device)
            floor = floors if floor is None else torch.maximum(floor, floors)
        stacked = self._stack(factor, features)
        weights = self.weights.to(model_input.device)
        # the map's weights: the targets' own floors only (the authors' weights without one)
        own = self.floors.to(model_input.device) if self.floors is not None else None
        matches = {}  # term → (weighted features, prototype, importance, column)
        for column, name in enumerate(self.taps):
            prototype, importance, for_map = stacked[name]
            weighted = weighted_features(features[name].float(), relevance[name].float(), floor)
            matches[name] = (weighted, prototype, importance, column)
            if self.map_terms and for_map is not None:
                weighted = weighted_features(features[name].float(), relevance[name].float(), own)
                matches[f"{MAP_TERM}{name}"] = (weighted, for_map, importance, column)
        # The weighted features exist only after the relevance pass, so their sorts cannot
        # overlap the forward pass as the class loss's do; torch waits meanwhile, so a free core
        # sorts a share of each tap's channels.
        terms = {}
        for term, (weighted, prototype, importance, column) in matches.items():
            targets = sort_targets_shared(weighted, prototype)
            terms[term] = weights[:, column] * sort_matching_loss(
                weighted, prototype, importance, targets=targets
            )
        return terms


def _weight(target: NeuronTarget, layer: str) -> float:
    return next((t.weight for t in target.taps if t.layer == layer), 0.0)
