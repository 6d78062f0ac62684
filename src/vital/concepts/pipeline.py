"""One concept analysis, start to end: crops, concepts, shares, maps, pictures, record.

:func:`concepts` writes into ``out``:

- ``concepts.json``: the record (:class:`ConceptReport`), concepts ranked by share;
- ``directions.npy``: (K, C) the concepts' directions in the layer's channel space (one row per
  concept ``index``; ``vital neuron --direction`` takes a row saved on its own);
- ``examples/concept-K-NN.png``: each concept's examples, as the model sees them: in each of its
  best crops, the tightest square around its peak that keeps it (:func:`_examples`);
- ``pictures/``: each concept's VITAL picture, its RGBA picture with the transparency map and
  its record (coefficient on the picture against its references' mean);
- ``maps/IMAGE/concept-I.png`` and ``maps/IMAGE.png``: where each concept sits on each image;
- ``overview.png``: one row per concept: picture, transparency, map, examples.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vital.concepts.crops import (
    DEFAULT_CROPS,
    DEFAULT_SCALE,
    EXAMPLE_KEEP,
    EXAMPLE_ZOOMS,
    Crop,
    CropSet,
    around_peak,
    check_sampling,
    class_images,
    sample_crops,
)
from vital.concepts.discovery import (
    DEFAULT_COUNT,
    ConceptBasis,
    check_concept_count,
    discover,
    layer_features,
)
from vital.concepts.fidelity import fidelity_curves
from vital.concepts.maps import grid_of, map_image
from vital.concepts.pictures import (
    check_picture_setting,
    concept_pictures,
    crop_coefficients,
)
from vital.concepts.shares import ConceptShares, concept_shares
from vital.driver import checked_overrides
from vital.errors import VitalError, plain
from vital.explanation.attribution import attributor
from vital.files import exclusive, printable, save_array, save_image, write_file
from vital.grids import grid, to_image
from vital.memory import check_fits
from vital.optimize import check_seed
from vital.progress import progress_bar
from vital.record import json_default, model_info, now, shortfall
from vital.references import (
    CONCEPTS_MARK,
    CONCEPTS_MARK_TEXT,
    ImageSource,
    center_crop,
    open_rgb,
    users_image,
)
from vital.relevance.backends import RelevanceBackend, backend_name, get_backend
from vital.renamed import renamed, warn_renamed
from vital.store import output_folder
from vital.taps import check_layer, check_positions, list_layers
from vital.targets import class_target
from vital.zoo import Model, as_model, frozen

DEFAULT_EXAMPLES = 16
FIDELITY_IMAGES = 16  # images whose deletion / insertion curves are averaged
SHEET_EXAMPLES = 5


@dataclass
class ConceptEntry:
    """One concept of a report (paths relative to the report's folder)."""

    index: int
    rank: int
    share: float
    relevance: float
    picture: str | None
    alpha: str | None
    examples: list[str]
    example_coefficients: list[float]
    activation: float | None
    reference_activation: float | None
    maps: list[str]
    record: str | None = None
    # Why the picture does not show the concept (:func:`vital.record.shortfall`), else None.
    shortfall: str | None = None


@dataclass
class ConceptReport:
    """What :func:`concepts` found and wrote (``concepts.json``).

    ``activation`` / ``reference_activation`` of a concept are its coefficient on its picture
    and its references' mean coefficient; ``explained_share`` is the concepts' total share of
    the class's relevance at the layer, ``residual_share`` the rest. ``target`` (written as
    ``class``) holds the class's ``index`` and ``name`` and, where the model's output tells,
    ``classes``: how many the model has, against which an import checks the index.
    """

    model: dict
    layer: str
    target: dict
    images: int
    crops: int
    explained_share: float
    residual_share: float
    relevance: dict
    concepts: list[ConceptEntry]
    discovery: dict
    pictures: dict | None
    fidelity: dict | None
    files: dict
    notes: list[str] = field(default_factory=list)
    created: str = field(default_factory=now)

    def to_json(self) -> str:
        """The record as JSON (``class`` for the explained class, as the contract names it)."""
        data = asdict(self)
        data["model"] = self.model["name"]
        data["model_info"] = self.model
        data["class"] = data.pop("target")
        order = ["model", "layer", "class", "images", "crops", "explained_share"]
        return json.dumps(
            {**{k: data.pop(k) for k in order}, **data}, indent=2, default=json_default
        )


def _stem(source: ImageSource, number: int) -> str:
    name = Path(source.where).stem if source.where else (source.label or "image")
    return f"{number:03d}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]


def _view(model: Model, source: ImageSource) -> torch.Tensor | None:
    image = open_rgb(source)
    if image is None:
        return None
    preprocessing = model.preprocessing
    return center_crop(
        image, preprocessing.input_size, preprocessing.crop_pct, preprocessing.interpolation
    )


def picture_choice(pictures: object, pictured: object) -> bool | int:
    """``pictures=`` and ``pictured=`` as one: ``True`` (every concept), ``False`` or N.

    ``pictures=False`` is ``--no-pictures``, ``pictured=N`` is ``--pictured N`` (the N concepts
    with the largest shares). ``pictures=N``, the earlier way to say ``pictured=N``, still
    works with a warning.
    """
    if isinstance(pictures, int) and not isinstance(pictures, bool):
        warn_renamed(
            "concepts: pictures=N is now pictured=N (pictures=False: none); the old way will go."
        )
        if pictured is not None:
            raise VitalError("pictures=N is the old way to say pictured=N: give pictured=N alone.")
        if pictures < 0:  # -1 would picture all but the last
            raise VitalError(
                f"pictured=N pictures at least 1 concept (pictures=False: none), not {pictures}."
            )
        pictures, pictured = pictures > 0, pictures or None
    if not isinstance(pictures, bool):
        raise VitalError(
            f"pictures is True or False (pictured=N: only the top N concepts), not {pictures!r}."
        )
    if pictured is None:
        return pictures
    if isinstance(pictured, bool) or not isinstance(pictured, int) or pictured < 1:
        raise VitalError(
            f"pictured=N pictures the N concepts with the largest shares (at least 1; "
            f"pictures=False: none), not {pictured!r}."
        )
    if not pictures:  # it would be dropped unseen
        raise VitalError("pictures=False draws no concept: leave out pictured=N, or it.")
    return pictured


@renamed(scale="crop_scale")
def concepts(
    model: Model | nn.Module | str,
    target: int | str,
    data: str | Path | None = None,
    *,
    layer: str,
    count: int = DEFAULT_COUNT,
    crops: int = DEFAULT_CROPS,
    crop_scale: tuple[float, float] = DEFAULT_SCALE,
    examples: int = DEFAULT_EXAMPLES,
    pictures: bool = True,
    pictured: int | None = None,
    setting: int | str | None = "fast",
    settings: Mapping[str, object] | None = None,
    seed: int = 0,
    relevance: str = "lrp",
    out: str | Path = "vital-out",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ConceptReport:
    """Find what a class is made of at a layer, picture each part, and weigh it.

    Parameters
    ----------
    model
        A model name, a :class:`vital.Model` or an ``nn.Module`` classifier.
    target
        The class (index, name or WordNet id).
    data
        The class's images: ``None`` (its embedded photos), one image file, a folder (an
        ImageNet-style tree, one sub-folder per class, or the class's images), a list file
        (one image path a line, as for ``vital mine``) or a mining database
        (``OUT/mining.sqlite``).
    layer
        The layer whose activations are factorised (``vital layers MODEL``).
    count
        K, the number of concepts.
    crops, crop_scale
        Random square crops in all, and the range of their area as a fraction of each image's
        largest square: a concept's possible examples (``--crops``, ``--crop-scale``;
        ``scale=``, the old name, still works with a warning).
    examples
        Examples per concept: in each of the crops where its coefficient is highest, the
        tightest square around its peak that keeps half its coefficient (:func:`_examples`).
        They are its picture's references.
    pictures, pictured
        Make the concepts' VITAL pictures (``False``: none, ``--no-pictures``); ``pictured=N``
        (``--pictured N``): only the N concepts with the largest shares (default: every
        concept).
    setting, settings
        VITAL's setting for the pictures (``fast`` by default) and changes to its defaults
        (``{"steps": 300}``).
    seed
        Seed of the crops, the factorisation and the pictures.
    relevance
        Relevance backend from the class logit (``lrp`` by default).
    out
        Output folder (see the module).
    batch_size, device, progress
        Pictures optimised together; ``"cpu"`` / ``"cuda"``; progress bars.

    Returns
    -------
    ConceptReport
        Also written as ``out/concepts.json``.
    """
    # numpy's integers (a loop over an array) are the counts they hold
    count, crops, examples, pictures, pictured = (
        plain(value) for value in (count, crops, examples, pictures, pictured)
    )
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise VitalError(f"the examples per concept (examples=N) are at least 1, not {examples!r}.")
    seed = check_seed(seed)  # before any work, and a Python int for the record
    # the counts before the model loads: a --count 0 was refused only after the crops' pass
    check_sampling(crops, crop_scale)
    check_concept_count(count, crops)
    relevance = backend_name(relevance)  # "LRP" is lrp, with lrp's fallback below
    shown = picture_choice(pictures, pictured)
    overrides = checked_overrides(settings)
    with frozen(model), ExitStack() as held:
        model = as_model(model, device)
        if shown:  # pictures at a resolution where none fits: refused before the discovery
            check_fits(model, overrides)
        explained = class_target(model, target)
        # the layer and the images before the folder: a refused run left it with the run's
        # mark, which keeps a folder out of every later listing of images as vital's
        check_layer(layer, model.module, model.zoo_name)
        # and what was refused only after the folder was marked: a layer without positions, an
        # unknown relevance backend, and (after the discovery) a setting no picture takes
        check_concept_layer(layer, model)
        if not isinstance(relevance, RelevanceBackend):
            get_backend(relevance)
        if shown:
            check_picture_setting(model, layer, setting, overrides)
        sources, notes = class_images(model, explained, data, seed=seed)
        folder = output_folder(out)
        _check_not_the_users(folder)  # first: no lock file is left among a user's photos
        # One run at a time owns the folder: two at once (other counts) would each remove the
        # other's examples and leave a report that does not match the files beside it. The
        # second waits, then finds the first's folder as a rerun does.
        held.enter_context(exclusive(folder / RUN_LOCK, "concepts run into this folder"))
        write_file(folder / RUN_MARK, CONCEPTS_MARK_TEXT)
        crop_set = sample_crops(sources, crops, crop_scale, seed, model.preprocessing.crop_pct)
        if examples > len(crop_set.crops):  # said, not refused: the default (16) is a "most"
            notes.append(
                f"{examples} examples per concept were asked for, but they are chosen among the "
                f"{len(crop_set.crops)} crops: each concept has at most {len(crop_set.crops)}."
            )
        if shown is not True and shown and shown > count:  # said, as the examples above
            notes.append(
                f"{shown} concepts were asked to be pictured, but {count} are discovered: "
                "each is pictured."
            )
        resolution = model.preprocessing.input_size
        with _stage(progress, len(crop_set.crops), "crops' features", "crop") as advance:
            crop_pixels = crop_set.pixels(model, resolution)
            crop_features = layer_features(model, layer, crop_pixels, on_batch=advance)
        basis = discover(crop_features, layer, count, seed)
        coefficients = basis.coefficients(basis.features(crop_features).mean(dim=-1))  # (N, K)
        held = coefficients.max(axis=0) > 0
        if not held.all():  # a direction no crop holds is no concept of these images
            basis = ConceptBasis(basis.layer, basis.directions[held], basis.signed)
            coefficients = coefficients[:, held]

        with _stage(progress, len(crop_set.images), "relevance", "image") as advance:
            found, relevance_notes = _explained_images(
                model, explained.index, crop_set, basis, relevance, on_image=advance
            )
        if not found:
            raise VitalError("none of the images could be read; check the files.")
        total = sum((f["shares"] for f in found[1:]), found[0]["shares"])
        order = by_share(total)

        best = {
            k: [int(i) for i in np.argsort(-coefficients[:, k], kind="stable")[:examples]
                if coefficients[i, k] > 0]
            for k in order
        }  # fmt: skip
        with _stage(progress, sum(map(len, best.values())), "examples", "example") as advance:
            example_set, example_pixels, example_coefficients, chosen = _examples(
                model, crop_set, crop_pixels, crop_features, coefficients, basis, best, advance
            )
        example_files = _write_examples(folder, example_pixels, chosen)
        save_array(
            folder / "directions.npy", np.stack([basis.direction(k) for k in range(basis.count)])
        )
        map_files = _write_maps(folder, found, basis, order)

        picture_files: dict[int, dict] = {}
        if shown:
            drawn = order if shown is True else order[: int(shown)]
            named = [k for k in drawn if chosen[k]]
            results = concept_pictures(
                model,
                basis,
                named,
                [f"{explained.slug()}-concept-{k}" for k in named],
                [example_set.references(chosen[k], f"examples of concept {k}") for k in named],
                [example_pixels[chosen[k]] for k in named],
                folder / "pictures",
                setting=setting,
                settings=settings,
                seed=seed,
                batch_size=batch_size,
                progress=progress,
            )
            for k, result in zip(named, results, strict=True):
                picture_files[k] = {
                    "picture": result.paths["png"],
                    "alpha": result.paths.get("rgba"),
                    "record": result.paths["json"],
                    "activation": result.record.evaluation["coefficient"],
                    "reference_activation": result.record.evaluation["reference_coefficient"],
                    "shortfall": shortfall(result.record.evaluation),
                }

        relative = lambda path: None if path is None else path.relative_to(folder).as_posix()  # noqa: E731
        entries = []
        for rank, k in enumerate(order):
            files = picture_files.get(k, {})
            entries.append(
                ConceptEntry(
                    index=k,
                    rank=rank,
                    share=float(total.shares[k]),
                    relevance=float(total.relevance[k]),
                    picture=relative(files.get("picture")),
                    alpha=relative(files.get("alpha")),
                    examples=[relative(example_files[i]) for i in chosen[k]],
                    example_coefficients=[
                        round(float(example_coefficients[i, k]), 6) for i in chosen[k]
                    ],
                    activation=files.get("activation"),
                    reference_activation=files.get("reference_activation"),
                    maps=[relative(m[k]) for m in map_files],
                    record=relative(files.get("record")),
                    shortfall=files.get("shortfall"),
                )
            )
        fidelity = _fidelity(model, layer, explained.index, basis, found[:FIDELITY_IMAGES], count)
        report = ConceptReport(
            model=model_info(model),
            layer=layer,
            target={"index": explained.index, "name": explained.name, **_class_count(model)},
            images=len(found),
            crops=len(crop_set.crops),
            explained_share=total.explained,
            residual_share=total.residual / total.total if total.total else 0.0,
            relevance={
                "backend": found[0]["backend"],
                "total": total.total,
                "residual": total.residual,
                "per_image": [
                    {
                        "image": f["stem"],
                        "total": f["shares"].total,
                        "explained_share": f["shares"].explained,
                    }
                    for f in found
                ],
            },  # fmt: skip
            concepts=entries,
            discovery={
                "method": "NMF (scikit-learn, Frobenius, nndsvda) of position-averaged crops",
                "count": basis.count,
                "signed": basis.signed,
                "crop_scale": list(crop_set.scale),
                "crops_per_image": -(-len(crop_set.crops) // len(crop_set.images)),
                "seed": seed,
                "coefficients": "non-negative least squares on the fixed basis",
            },
            pictures={
                "method": "vital",
                "setting": setting,
                "overrides": dict(settings or {}),
                "seed": seed,
                "references": "each concept's examples",
                "examples": "in each of the concept's best crops, the smallest square around its "
                f"peak (sides {', '.join(f'{z:g}' for z in EXAMPLE_ZOOMS)} of the crop's) that "
                f"keeps {EXAMPLE_KEEP:g} of its coefficient on the crop",
            }
            if shown
            else None,
            fidelity=fidelity,
            files={"directions": "directions.npy", "overview": "overview.png"},
            notes=notes
            + relevance_notes
            + _sign_notes(total.total, layer)
            + (
                [
                    f"{count - basis.count} of {count} concepts were dropped "
                    "(empty, or held by no crop)."
                ]
                if basis.count < count
                else []
            )
            + (
                ["signed layer: features split into positive and negative parts (2C)."]
                if basis.signed
                else []
            ),
        )
        write_file(folder / "concepts.json", report.to_json())
        write_overview(folder)
    return report


def _class_count(model: Model) -> dict[str, int]:
    """``{"classes": N}``, the model's number of classes, for the report; empty if unknown.

    Stored because an import into an atlas (:func:`vital.concepts.import_concepts`) loads no
    model: the report is all it has to refuse a class index beyond the model's classes.
    """
    labels = model.probed_labels()  # known by now: the explained class was resolved by them
    return {} if labels is None else {"classes": len(labels)}


def by_share(shares: ConceptShares) -> list[int]:
    """The concepts, largest share first.

    Where the class's relevance at the layer is negative the shares are of a negative total,
    so the most negative concept has the largest share (ordered by relevance, it came last).
    """
    ranked = shares.shares if shares.total else shares.relevance
    return [int(k) for k in np.argsort(-ranked, kind="stable")]


def _sign_notes(total: float, layer: str) -> list[str]:
    """What the shares mean when the class's relevance at the layer is not positive."""
    if total == 0:
        return [
            f"the class's relevance at {layer} is 0: its score does not depend on this layer on "
            "these images (untrained weights or a head of zeros do this), so the shares are 0 "
            "and the concepts' order is arbitrary."
        ]
    if total < 0:
        return [
            f"the class's relevance at {layer} is {total:.4g}, negative: on these images the "
            "layer's evidence is against the class, and each share is of that negative total "
            "(a concept with a large share is one that speaks against the class)."
        ]
    return []


@contextmanager
def _stage(progress: bool, total: int, what: str, unit: str) -> Iterator[Callable[[int], None]]:
    """A progress bar over one stage of the analysis; yields the function that advances it.

    The stages before the pictures take from seconds to minutes (a forward pass per crop, a
    relevance pass per image), and a run that says nothing for that long looks stuck.
    """
    bar = progress_bar(total, f"concepts: {what}", desc=what, unit=unit, disable=not progress)
    try:
        yield bar.update
    finally:
        bar.close()


def _explained_images(
    model: Model,
    index: int,
    crop_set: CropSet,
    basis: ConceptBasis,
    relevance: str,
    on_image: Callable[[int], None] = lambda count: None,
) -> tuple[list[dict], list[str]]:
    """Per image: its view, the layer's relevance and activation, coefficients and shares.

    Where ``lrp``'s rules do not cover the model (it refuses a module), relevance falls back to
    gradient × activation, which works for any model, and a note says so.
    """
    notes: list[str] = []
    found = []
    with ExitStack() as stack:
        try:
            attribute = stack.enter_context(attributor(model, basis.layer, relevance))
        except VitalError as error:
            if relevance != "lrp":
                raise
            notes.append(f"relevance by grad-x-act: {error}")
            attribute = stack.enter_context(attributor(model, basis.layer, "grad-x-act"))
        for number, source in enumerate(crop_set.images):
            pixels = _view(model, source)
            on_image(1)
            if pixels is None:
                continue
            explained = attribute(pixels, index)
            activation = explained.activation.flatten(1).float()
            layer_relevance = explained.relevance.flatten(1).float()
            coefficients = basis.position_coefficients(activation)
            notes += [n for n in explained.notes if n not in notes]
            found.append(
                {
                    "stem": _stem(source, number),
                    "backend": explained.backend,
                    "pixels": pixels,
                    "activation": activation,
                    "relevance": layer_relevance,
                    "coefficients": coefficients,
                    "shares": concept_shares(basis, activation, layer_relevance, coefficients),
                }
            )
    return found, notes


def check_concept_layer(layer: str, model: Model) -> None:
    """Refuse a layer without positions (a vector's), whose crops' features have no map.

    Concepts are factorised over a layer's positions (:func:`vital.taps.to_positions`); a
    layer without them was refused only once the crops' features were read, after the run's
    folder was marked as vital's.
    """
    for info in list_layers(model.module, model.preprocessing.input_size):
        if info.name == layer:
            check_positions(info, model.zoo_name, "so its concepts cannot be found among them")


# Written before a run's first file, so that a stopped run's files are known as vital's.
RUN_MARK = CONCEPTS_MARK
# Held while a run writes the folder (hidden: ``atlas serve`` does not serve it).
RUN_LOCK = f"{CONCEPTS_MARK}.lock"


def _check_not_the_users(folder: Path) -> None:
    """Refuse a folder whose concept files vital did not write (a re-run replaces its own)."""
    report = folder / "concepts.json"
    if report.exists():
        try:
            written = json.loads(report.read_text("utf-8"))
            ours = isinstance(written, dict) and {"model", "layer", "concepts"} <= written.keys()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            ours = False
        if not ours:
            raise VitalError(
                f"{report} was not written by vital concepts; choose another out=DIR or move it."
            )
        return
    if (folder / RUN_MARK).exists():  # a run of vital concepts began here and was stopped
        return
    for name in ("overview.png", "directions.npy"):
        if (folder / name).exists():
            raise VitalError(
                f"{folder / name} was not written by vital concepts (there is no concepts.json "
                "beside it); choose another out=DIR or move it."
            )
    # Refused, not mixed in: the examples, maps and overview written among the user's photos
    # would be taken for photos by the next run over the folder. (Photos in a sub-folder are
    # safe: the run's mark file keeps this folder out of a listing of its parent.)
    image = users_image(folder)
    if image is not None:
        raise VitalError(
            f"{folder} holds images that vital did not write (e.g. {printable(image)}); "
            "choose a new or empty out=DIR for the concepts' files."
        )


def _examples(
    model: Model,
    crop_set: CropSet,
    crop_pixels: torch.Tensor,
    features: torch.Tensor,
    coefficients: np.ndarray,
    basis: ConceptBasis,
    best: dict[int, list[int]],
    on_settled: Callable[[int], None] = lambda count: None,
) -> tuple[CropSet, torch.Tensor, np.ndarray, dict[int, list[int]]]:
    """Each concept's examples: in each of its best crops, the tightest square around its peak.

    A crop where a concept's coefficient is highest also holds the parts beside it, which other
    concepts carry; matched whole, every concept's picture takes them in. Squares of
    :data:`EXAMPLE_ZOOMS` of the crop's side, centred where the concept's map of the crop peaks,
    are tried smallest first; the first that keeps :data:`EXAMPLE_KEEP` of the concept's
    coefficient on the crop is the example (the crop itself when none does: a concept that
    lives on its context keeps it).

    A larger square is cut and passed through the model only for the examples no smaller one
    settled, and the crop itself (a zoom of 1) is never passed again: its pixels and
    coefficients are ``crop_pixels`` and ``coefficients``. ``on_settled`` hears how many
    examples each zoom settled.

    Returns
    -------
    examples, pixels, values, chosen
        The examples as a crop set, their pixels, (N, K) their concepts' coefficients, and
        each concept's indices into them, its highest coefficient first.
    """
    owners = [(k, i) for k, crops in best.items() for i in crops]
    peaks = [grid_of(basis.position_coefficients(features[i]))[k] for k, i in owners]
    crop_pct = model.preprocessing.crop_pct
    settled: dict[int, tuple[Crop, torch.Tensor, np.ndarray]] = {}
    for zoom in EXAMPLE_ZOOMS:
        waiting = [n for n in range(len(owners)) if n not in settled]
        squares = {}
        for n in waiting:
            crop = crop_set.crops[owners[n][1]]
            image = crop_set.images[crop.image]
            squares[n] = around_peak(image, crop, peaks[n], zoom, crop_pct)
        cut = [n for n in waiting if squares[n] is not crop_set.crops[owners[n][1]]]
        seen = {n: (crop_pixels[owners[n][1]], coefficients[owners[n][1]]) for n in waiting}
        if cut:
            square_set = CropSet(
                crop_set.images, tuple(squares[n] for n in cut), crop_set.scale, crop_set.seed
            )
            pixels = square_set.pixels(model, model.preprocessing.input_size)
            values = crop_coefficients(model, basis, pixels)
            seen.update({n: (pixels[j], values[j]) for j, n in enumerate(cut)})
        last = zoom == EXAMPLE_ZOOMS[-1]
        for n in waiting:
            k, i = owners[n]
            pixels_n, values_n = seen[n]
            if last or values_n[k] >= EXAMPLE_KEEP * coefficients[i, k]:
                settled[n] = (squares[n], pixels_n, values_n)
        on_settled(len(waiting) - sum(n not in settled for n in waiting))
    chosen: dict[int, list[int]] = {k: [] for k in best}
    for n, (k, _) in enumerate(owners):
        chosen[k].append(n)
    values = np.stack([settled[n][2] for n in range(len(owners))]) if owners else coefficients[:0]
    for k in chosen:
        chosen[k].sort(key=lambda n, k=k: -values[n, k])
    examples = CropSet(
        crop_set.images,
        tuple(settled[n][0] for n in range(len(owners))),
        crop_set.scale,
        crop_set.seed,
    )
    pixels = torch.stack([settled[n][1] for n in range(len(owners))]) if owners else crop_pixels[:0]
    return examples, pixels, values, chosen


def _remove_earlier(folder: Path, pattern: str) -> None:
    """Delete the files a run into ``folder`` before this one wrote under ``pattern``.

    A rerun with fewer concepts or other images would otherwise leave pictures of concepts
    that its ``concepts.json`` no longer has beside the new ones.
    """
    for path in folder.glob(pattern):
        if path.is_file():
            path.unlink()


def _write_examples(folder: Path, pixels: torch.Tensor, chosen: dict[int, list[int]]) -> dict:
    target = folder / "examples"
    target.mkdir(exist_ok=True)
    _remove_earlier(target, "concept-*-*.png")
    files = {}
    for k, found in chosen.items():
        for number, i in enumerate(found):
            files[i] = target / f"concept-{k}-{number:02d}.png"
            save_image(files[i], to_image(pixels[i]))
    return files


def _write_maps(folder: Path, found: list[dict], basis: ConceptBasis, order: list[int]) -> list:
    """Per image: {concept: map file}, and a strip of the image with every concept's map."""
    _remove_earlier(folder / "maps", "*/concept-*.png")
    stems = {image["stem"] for image in found}
    for sheet in (folder / "maps").glob("*.png"):
        if sheet.stem not in stems and (folder / "maps" / sheet.stem).is_dir():
            sheet.unlink()  # an earlier run's image, with its folder of maps (now emptied)
            with suppress(OSError):  # not empty: files that are not vital's stay
                (folder / "maps" / sheet.stem).rmdir()
    written = []
    for image in found:
        target = folder / "maps" / image["stem"]
        target.mkdir(parents=True, exist_ok=True)
        grids = grid_of(image["coefficients"])
        files, pictures = {}, [to_image(image["pixels"])]
        for k in order:
            files[k] = target / f"concept-{k}.png"
            picture = map_image(grids[k], image["pixels"])
            save_image(files[k], picture)
            pictures.append(picture)
        captions = ["image"] + [f"concept {k}: {image['shares'].shares[k]:.0%}" for k in order]
        sheet = grid(pictures, captions, columns=min(len(pictures), 6), cell=160)
        save_image(folder / "maps" / f"{image['stem']}.png", sheet)
        written.append(files)
    return written


def write_overview(folder: str | Path) -> Path:
    """``overview.png`` from a folder's ``concepts.json``: one row per concept.

    Each row: the picture (with its coefficient against its references'), the picture with its
    transparency map, the concept's map on the first image, its best examples.
    """
    folder = Path(folder)
    record = json.loads((folder / "concepts.json").read_text("utf-8"))
    first = record["relevance"]["per_image"][0]["image"][4:]  # without the number
    blank = (Image.new("RGB", (8, 8), "white"), "")
    cells, captions, labels = [], [], []
    for entry in record["concepts"]:
        row = [blank, blank]
        if entry["picture"] is not None:
            ratio = (
                f" {entry['activation'] / entry['reference_activation']:.2f}x refs"
                if entry["reference_activation"]
                else ""
            )
            # A picture that failed says so where it is looked at (the warning is long gone).
            failed = entry.get("shortfall")
            row[0] = (
                _read(folder / entry["picture"]),
                f"{failed}{ratio.removesuffix(' refs')}" if failed else "VITAL" + ratio,
            )
        if entry["alpha"] is not None:
            row[1] = (_read(folder / entry["alpha"]), "transparency")
        row.append(
            (_read(folder / entry["maps"][0]), f"where, {first}") if entry["maps"] else blank
        )
        for path, value in zip(entry["examples"], entry["example_coefficients"], strict=True):
            row.append((_read(folder / path), f"{value:.2f}"))
        row = (row + [blank] * SHEET_EXAMPLES)[: 3 + SHEET_EXAMPLES]
        cells += [image for image, _ in row]
        captions += [caption for _, caption in row]
        labels.append(f"concept {entry['index']}: {entry['share']:.0%}")
    path = folder / "overview.png"
    save_image(path, grid(cells, captions, columns=3 + SHEET_EXAMPLES, cell=128, row_labels=labels))
    return path


def _read(path: Path) -> Image.Image:
    """An image file read whole and closed (its mode kept: the transparency view is RGBA)."""
    with Image.open(path) as image:
        return image.copy()


def _fidelity(
    model: Model, layer: str, index: int, basis: ConceptBasis, found: list[dict], count: int
) -> dict:
    """Deletion and insertion curves averaged over images, concepts against channels."""
    steps = min(basis.count, count)
    curves = []
    for image in found:
        by_share = [int(k) for k in np.argsort(-image["shares"].relevance, kind="stable")]
        by_relevance = torch.argsort(image["relevance"].sum(dim=1), descending=True, stable=True)
        curves.append(
            fidelity_curves(
                model, layer, image["pixels"], index, basis, image["activation"],
                image["coefficients"], by_share[:steps], [int(c) for c in by_relevance[:steps]],
            ).as_dict()
        )  # fmt: skip
    mean = {key: np.mean([c[key] for c in curves], axis=0).round(5).tolist() for key in curves[0]}
    return {"images": len(curves), "steps": steps, **mean}
