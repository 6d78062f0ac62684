"""The library's front door: visualise targets of a model and get (and store) the results."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from vital.baselines import visualize_baseline
from vital.errors import VitalError
from vital.objectives import SortMatching
from vital.optimize import Run, Settings, initial_images, optimize
from vital.references import (
    DEFAULT_REFERENCES,
    ReferenceSet,
    compute_prototypes,
    from_folder,
    is_imagenet_tree,
    sample_photos_for_class,
)
from vital.store import Result, ResultSink, record_header
from vital.taps import (
    PRESET_PRIORS,
    Tap,
    check_layer,
    default_taps,
    list_layers,
    parse_taps,
    tapped,
)
from vital.targets import Channel, ClassTarget, Direction, Target
from vital.zoo import Model, as_model

References = ReferenceSet | str | Path | Mapping[int, ReferenceSet] | None


def class_target(model: Model, query: ClassTarget | int | str) -> ClassTarget:
    """Resolve ``967``, ``"espresso"``, ``"n07920052"`` or a ``ClassTarget`` for ``model``."""
    if isinstance(query, ClassTarget):
        return query
    if model.labels is None:
        raise VitalError("this model has no classifier output; visualise channels instead.")
    index = model.labels.resolve(query)
    return ClassTarget(index, model.labels.name(index))


def class_references(
    model: Model,
    target: ClassTarget,
    references: References,
    count: int = DEFAULT_REFERENCES,
    seed: int = 0,
    shared_ok: bool = False,
) -> ReferenceSet:
    """Find the reference set for a class target.

    Parameters
    ----------
    references
        ``None`` (the embedded photos of that class), a :class:`ReferenceSet`, a mapping from
        class index to set, or a folder: an ImageNet-style tree (sub-folder per WordNet id), a
        folder with one sub-folder per class (named by index, WordNet id or class name), or a
        plain folder of images of this one class.
    shared_ok
        Allow one plain folder to serve as references of several targets.
    """
    if isinstance(references, ReferenceSet):
        return references
    if isinstance(references, Mapping):
        for key in (target, target.index):  # keyed by target or by class index
            if key in references:
                return references[key]
        raise VitalError(f"no references were given for {target.describe()}.")
    if references is None or str(references) == "samples":
        sources = sample_photos_for_class(target.index)
        if not sources:
            raise VitalError(
                f"no embedded photo shows {target.describe()}; give reference images with "
                "--refs DIR (a folder of that class, or an ImageNet-style tree)."
            )
        return ReferenceSet(
            tuple(sources), count, seed, "embedded photos " + ", ".join(s.label for s in sources)
        )
    folder = Path(references)
    if not folder.is_dir():
        raise VitalError(f"reference folder {folder} does not exist.")
    for name in _class_folder_names(model, target):
        if (folder / name).is_dir():
            return from_folder(folder / name, count, seed)
    if is_imagenet_tree(folder) or any(child.is_dir() for child in folder.iterdir()):
        raise VitalError(
            f"{folder} has class sub-folders but none for {target.describe()}; expected one of "
            f"{', '.join(_class_folder_names(model, target))}."
        )
    if not shared_ok:
        raise VitalError(
            f"{folder} is a plain folder of images, which would give every target the same "
            "references; visualise one class at a time with it, or use one sub-folder per class."
        )
    return from_folder(folder, count, seed)


def _class_folder_names(model: Model, target: ClassTarget) -> list[str]:
    names = [str(target.index)]
    if model.labels is not None and model.labels.wnids:
        names.insert(0, model.labels.wnids[target.index])
    if target.name:
        names += [target.name, target.name.replace(" ", "_")]
    return names


def resolve_taps(model: Model, taps: Sequence[str | Tap] | None) -> tuple[tuple[Tap, ...], str]:
    """Taps for class targets: the user's, else the preset, else discovered ones."""
    if taps:
        chosen = tuple(t if isinstance(t, Tap) else parse_taps([t])[0] for t in taps)
        for tap in chosen:
            check_layer(tap.layer, model.module)
        return chosen, "given by the user"
    layers = list_layers(model.module, model.preprocessing.input_size)
    return default_taps(model.name, layers)


def class_settings(model: Model, settings: Settings | None) -> Settings:
    """The authors' class-target defaults for ``model`` (priors for ViT-L) unless given."""
    if settings is not None:
        return settings
    strength = PRESET_PRIORS.get(model.name, 0.0)
    return Settings(tv_l2=strength, l2=strength)


def _batches(items: Sequence, size: int) -> Iterator[tuple[int, Sequence]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


@torch.no_grad()
def classify(model: Model, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities of normalised images (B, 3, H, W)."""
    return model.module(images).softmax(dim=-1)


def _evaluation(probabilities: torch.Tensor, index: int, model: Model) -> dict:
    ranking = probabilities.argsort(descending=True)
    rank = int((ranking == index).nonzero()[0, 0]) + 1
    top = ranking[:5].tolist()
    name = model.labels.name if model.labels is not None else str
    return {
        "probability": float(probabilities[index]),
        "rank": rank,
        "top5": [[i, name(i), float(probabilities[i])] for i in top],
    }


def _record(
    model: Model,
    target: dict,
    references: ReferenceSet,
    taps: Sequence[Tap],
    taps_source: str,
    settings: Settings,
    run: Run,
    item: int,
    batch_size: int,
) -> dict:
    history = run.history[:, item]
    return {
        **record_header("vital", model),
        "target": target,
        "taps": [{"layer": t.layer, "weight": t.weight} for t in taps],
        "taps_source": taps_source,
        "settings": {**dataclasses.asdict(settings), "seed": run.seeds[item]},
        "seed": run.seeds[item],
        "references": {
            "count": references.count,
            "seed": references.seed,
            "distinct_images": len(references.sources),
            "summary": references.summary(),
        },
        "final_loss": {name: float(value[item]) for name, value in run.final_terms.items()},
        "final_total": float(history[-1]),
        "loss_history": [round(float(v), 6) for v in history],
        "seconds": run.seconds,
        "batch_size": batch_size,
        "device": str(run.images.device),
    }


def visualize(
    model: Model | nn.Module | str,
    targets: Sequence[Target | int | str] | Target | int | str,
    references: References = None,
    *,
    settings: Settings | None = None,
    taps: Sequence[str | Tap] | None = None,
    out: str | Path | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    reference_count: int = DEFAULT_REFERENCES,
    reference_seed: int = 0,
    progress: bool = True,
    cache_dir: Path | None = None,
    on_result: Callable[[Result], None] | None = None,
    seeds: Sequence[int] | None = None,
    relevance: str = "lrp",
    patch_side: int | None = None,
    method: str = "vital",
    method_options: Mapping[str, object] | None = None,
) -> list[Result]:
    """Visualise classes, inner channels or concept directions of ``model``.

    VITAL by default, or a baseline to compare with (``method``). Channel and Direction
    targets are handed to :func:`vital.neurons.visualize_neurons` (see there for their
    references); the parameters below describe class targets.

    Parameters
    ----------
    model
        A model name (``"mobilenet_v2"``), a :class:`vital.Model`, or any ``nn.Module``
        classifier taking ImageNet-normalised images.
    targets
        Classes by index, name, WordNet id or :class:`ClassTarget`; several are optimised
        together in batches of ``batch_size``.
    references
        Reference images (see :func:`class_references`); ``None`` uses the embedded photos.
    settings
        Optimisation settings (default: the authors' setting 1 with the model's priors).
    taps
        ``["layer1=1", ...]`` or :class:`Tap` objects; default: preset or discovered.
    out
        Folder for PNG + JSON records; nothing is written when ``None``.
    batch_size
        Targets optimised together.
    device
        ``"cpu"`` or ``"cuda"``; default: where the model is.
    reference_count
        Reference views per target (N).
    reference_seed
        Seed of the reference subset and views; separate from the image seed so that a target
        rerun alone with its recorded seed sees the same references.
    progress
        Show progress bars.
    cache_dir
        Prototype cache folder (default ``$VITAL_CACHE`` or ``~/.cache/vital``).
    on_result
        Called with each result as soon as it is finished.
    seeds
        One seed per target; default ``settings.seed + i`` for the ``i``-th target.
    relevance, patch_side
        For channel and direction targets only: the relevance backend and the reference mode
        (see :func:`vital.neurons.visualize_neurons`).
    method
        ``"vital"``, or a baseline to compare with: ``"fourier"``, ``"maco"``,
        ``"deepinversion"`` (:mod:`vital.baselines`; they use no references, and
        ``settings=None`` gives each its published defaults).
    method_options
        A baseline's options, e.g. ``{"spectrum_source": "photos/"}`` for MaCo.

    Returns
    -------
    list of Result
        One per target, in order.
    """
    model = as_model(model, device)
    if method != "vital":
        return visualize_baseline(
            method,
            model,
            targets,
            options=method_options,
            settings=settings,
            out=out,
            batch_size=batch_size,
            progress=progress,
            on_result=on_result,
        )
    if isinstance(targets, (str, int, ClassTarget, Channel, Direction)):
        targets = [targets]
    inner = [t for t in targets if isinstance(t, (Channel, Direction))]
    if inner:
        if len(inner) != len(targets):
            raise VitalError(
                "class targets and channel/direction targets need separate runs; "
                "visualise them in two calls."
            )
        from vital.neurons import visualize_neurons

        return visualize_neurons(
            model,
            inner,
            references,
            settings=settings,
            taps=taps,
            out=out,
            batch_size=batch_size,
            reference_count=reference_count,
            progress=progress,
            cache_dir=cache_dir,
            on_result=on_result,
            relevance=relevance,
            patch_side=patch_side,
            seeds=seeds,
            reference_seed=reference_seed,
        )
    if not targets:
        raise VitalError("no targets given; name at least one class (--class C).")
    if batch_size < 1:
        raise VitalError("the batch size must be at least 1 (--batch B).")
    resolved = [class_target(model, t) for t in targets]
    settings = class_settings(model, settings)
    settings.validate()
    seeds = list(seeds) if seeds is not None else [settings.seed + i for i in range(len(resolved))]
    if len(seeds) != len(resolved):
        raise VitalError(f"{len(seeds)} seeds were given for {len(resolved)} targets.")
    resolution = settings.resolution or model.preprocessing.input_size
    chosen_taps, taps_source = resolve_taps(model, taps)
    reference_sets = [
        class_references(
            model, t, references, reference_count, reference_seed, len(set(resolved)) == 1
        )
        for t in resolved
    ]
    sink = ResultSink(out, on_result)
    layers = [t.layer for t in chosen_taps]
    batch_count = -(-len(resolved) // batch_size)
    for number, (start, batch) in enumerate(_batches(resolved, batch_size), 1):
        batch_references = reference_sets[start : start + len(batch)]
        prototypes = {
            factor: [
                compute_prototypes(model, layers, r, resolution, factor, cache_dir=cache_dir)
                for r in batch_references
            ]
            for _, factor in settings.stages()
        }
        batch_seeds = seeds[start : start + len(batch)]
        label = f"batch {number}/{batch_count}" if batch_count > 1 else "optimising"
        with tapped(model.module, layers, stop_early=True) as tap:
            objective = SortMatching(tap, chosen_taps, prototypes)
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
        final = classify(model, run.images)
        initial = classify(
            model,
            initial_images(batch_seeds, resolution, model.device, model.dtype),
        )
        for item, target in enumerate(batch):
            record = _record(
                model,
                {"kind": "class", "index": target.index, "name": target.name},
                batch_references[item],
                chosen_taps,
                taps_source,
                settings,
                run,
                item,
                len(batch),
            )
            record["evaluation"] = _evaluation(final[item], target.index, model)
            record["evaluation"]["initial_probability"] = float(initial[item, target.index])
            result = Result(target, run.pixels[item].cpu(), record)
            sink(result)
    return sink.results
