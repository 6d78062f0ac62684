"""A VITAL picture of every concept, and how much of the concept it holds.

A concept is visualised as a :class:`~vital.targets.Direction` target (METHOD.md section 4):
its direction in the layer's channel space is the starting relevance and scores the
references, and its references are the crops where its coefficient is highest, matched on
relevance-weighted features exactly as a channel's are (:mod:`vital.methods.vital_neuron`).
The picture's record then keeps the concept's coefficient on the picture next to its
references' mean coefficient, the same non-negative least-squares fit of position-averaged
features that ranked the crops (as neuron records keep activations).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vital.concepts.discovery import ConceptBasis, layer_features
from vital.driver import resolve_settings, run_setting
from vital.methods import get_method
from vital.references import ReferenceSet
from vital.store import Result, ResultSink
from vital.targets import Channel, Direction
from vital.zoo import Model

# The floor under a concept picture's normalised relevance (f + (1 − f)·r at every position of
# every tap). A concept's examples are small squares around its peak, so their features as a
# whole, not only their most relevant spots, are the concept's: without a floor the picture
# matched only the relevant spots and the rest stayed at the starting colour, which the judge
# model took for another concept. Measured: benchmarks/RESULTS.md, "Concept pictures matched
# as a whole".
CONCEPT_FLOOR = 0.5


def check_picture_setting(
    model: Model, layer: str, setting: int | str | None, settings: Mapping[str, object] | None
) -> None:
    """Refuse a named setting (or overrides) the concepts' pictures could not take.

    Called before the discovery: the pictures come last, and a setting refused there left the
    run's folder with its examples and maps but no report. The concepts are not found yet; a
    channel of their layer stands for them, as its unit kind gets the same method's defaults.

    Raises
    ------
    VitalError
        As :func:`vital.driver.resolve_settings`.
    """
    method = get_method("vital", [Channel(layer, 0)], relevance_floor=CONCEPT_FLOOR)
    resolve_settings(method, model, setting, dict(settings or {}))


def concept_target(basis: ConceptBasis, index: int, name: str) -> Direction:
    """Concept ``index`` as a direction target named ``name``."""
    return Direction(basis.layer, tuple(float(v) for v in basis.direction(index)), name=name)


def crop_coefficients(
    model: Model,
    basis: ConceptBasis,
    pixels: torch.Tensor,
    on_batch: Callable[[int], None] = lambda count: None,
) -> np.ndarray:
    """(N, K) the concepts' coefficients of images in [0, 1] (position-averaged features)."""
    features = layer_features(model, basis.layer, pixels, on_batch=on_batch)
    return basis.coefficients(basis.features(features).mean(dim=-1))


def concept_pictures(
    model: Model,
    basis: ConceptBasis,
    concepts: Sequence[int],
    names: Sequence[str],
    references: Sequence[ReferenceSet],
    reference_pixels: Sequence[torch.Tensor],
    out: str | Path,
    *,
    setting: int | str | None = "fast",
    settings: Mapping[str, object] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """VITAL pictures of ``concepts``, written to ``out`` with the coefficients in their records.

    Parameters
    ----------
    model, basis
        The model and its concepts.
    concepts, names
        Which concepts (indices into the basis) and their target names.
    references, reference_pixels
        Per concept: its references (crops) and their pixels as the model sees them.
    out
        Folder of the pictures (PNG, RGBA PNG with the transparency map, JSON record).
    setting, settings, seed, batch_size, progress
        As for :func:`vital.visualize`; ``fast`` by default here.
    on_result
        Called with each picture once it is written (its batch finished).
    """
    targets = [concept_target(basis, k, n) for k, n in zip(concepts, names, strict=True)]
    of_target = dict(zip(targets, zip(concepts, reference_pixels, strict=True), strict=True))

    def finish(result: Result) -> None:
        """Each picture's coefficients, written as its batch ends (an interrupt keeps it)."""
        if not (result.stored and "coefficient" in result.record.evaluation):
            k, pixels = of_target[result.target]
            picture = crop_coefficients(model, basis, result.pixels[None])[0, k]
            refs = crop_coefficients(model, basis, pixels)[:, k]
            result.record.evaluation.update(
                coefficient=float(picture),
                reference_coefficient=float(refs.mean()),
                relative_coefficient=float(picture / refs.mean()) if refs.mean() > 0 else None,
            )
            sink.store.write(result)
        if on_result is not None:
            on_result(result)

    # The pictures of a stopped run with the same inputs (the discovery is seeded, so its
    # concepts and examples are the same) are taken, not made again; others are replaced, as
    # a rerun of `vital concepts` replaces its own files.
    sink = ResultSink(out, finish, reuse=True, replace=True)
    method = get_method("vital", targets, relevance_floor=CONCEPT_FLOOR)
    return run_setting(
        method,
        model,
        targets,
        dict(zip(targets, references, strict=True)),
        setting=setting,
        overrides=dict(settings or {}),
        seeds=[seed] * len(targets),
        batch_size=batch_size,
        sink=sink,
        progress=progress,
    )
