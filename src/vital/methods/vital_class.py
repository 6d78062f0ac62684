"""VITAL for output classes (METHOD.md sections 1–2): sort matching against real class images.

The references of each class give, at every feature tap, a prototype (each channel's sorted
values averaged over the references); the image is optimised so that its features' sorted
values match it. No activation term: the class enters only through its references.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vital.errors import VitalError
from vital.methods.base import Method, resolution_of
from vital.objectives import SortMatching
from vital.optimize import DEFAULT_SETTING, Settings
from vital.presets import PRESET_PRIORS
from vital.references import (
    DEFAULT_REFERENCES,
    ReferenceSet,
    compute_prototypes,
    from_folder,
    has_data_folders,
    is_imagenet_tree,
    one_targets_references,
    reference_folder,
    sample_photos_for_class,
)
from vital.relevance.canonizers import folded_batch_norms
from vital.taps import (
    Tap,
    check_layer,
    check_runs_once,
    default_taps,
    list_layers,
    tapped,
    user_taps,
)
from vital.targets import ClassTarget, class_target
from vital.zoo import Model

References = ReferenceSet | str | Path | Mapping[Any, ReferenceSet] | None


def class_references(
    model: Model,
    target: ClassTarget,
    references: References,
    count: int = DEFAULT_REFERENCES,
    seed: int = 0,
    shared_ok: bool = False,
    given_as: str = "references",
) -> ReferenceSet:
    """Find the reference set for a class target.

    Parameters
    ----------
    references
        ``None`` (the embedded photos of that class), a :class:`ReferenceSet`, a folder: an
        ImageNet-style tree (sub-folder per WordNet id), a folder with one sub-folder per class
        (named by index, WordNet id or class name), or a plain folder of images of this one
        class; or a mapping from class index (or target, WordNet id, name) to any of these.
    shared_ok
        Allow one plain folder to serve as references of several targets.
    given_as
        The caller's parameter for the images, named in the messages (``"data"`` for
        :func:`vital.concepts`).
    """
    target = class_target(model, target)  # 967 or "espresso" as everywhere else
    if isinstance(references, ReferenceSet):
        return references
    if isinstance(references, Mapping):
        names = class_folder_names(model, target)
        for key, given in references.items():  # by target, class index, WordNet id or name
            index = key.index if isinstance(key, ClassTarget) else key
            same = isinstance(index, int) and not isinstance(index, bool) and index == target.index
            if key == target or same or (isinstance(key, str) and key in names):
                given = one_targets_references(given, described(target))
                return class_references(
                    model, target, given, count, seed, shared_ok=True, given_as=given_as
                )
        raise VitalError(f"no references were given for {described(target)}.")
    if references is None or str(references) == "samples":
        sources = sample_photos_for_class(target.index)
        if not sources:
            raise VitalError(
                f"no embedded photo shows {described(target)}; give images of it with "
                f"{given_as}=DIR (a folder of that class, or an ImageNet-style tree)."
            )
        return ReferenceSet(
            tuple(sources), count, seed, "embedded photos " + ", ".join(s.label for s in sources)
        )
    if not isinstance(references, (str, Path)):
        raise VitalError(
            f"{given_as} must be a folder, a ReferenceSet or a mapping of them, not "
            f"{type(references).__name__}."
        )
    folder = reference_folder(
        references,
        "a folder (an ImageNet-style tree, one sub-folder per class, or one class's images)",
    )
    for name in class_folder_names(model, target):
        if (folder / name).is_dir():
            return from_folder(folder / name, count, seed)
    if is_imagenet_tree(folder) or has_data_folders(folder):
        raise VitalError(
            f"{folder} has class sub-folders but none for {described(target)}; expected one of "
            f"{', '.join(class_folder_names(model, target))}."
        )
    if not shared_ok:
        raise VitalError(
            f"{folder} is a plain folder of images, which would give every target the same "
            "references; visualise one class at a time with it, or use one sub-folder per class."
        )
    return from_folder(folder, count, seed)


def described(target: ClassTarget) -> str:
    """The class in words, named once: ``espresso (967)``, ``class 3`` (not ``class 3 (3)``).

    A model whose classes have no names but their numbers calls class 3 ``class 3``.
    """
    if target.name == f"class {target.index}":
        return target.name
    return target.describe()


def class_folder_names(model: Model, target: ClassTarget) -> list[str]:
    """The names a folder of ``target``'s images may have: WordNet id, index, class name."""
    names = [str(target.index)]
    if model.labels is not None and model.labels.wnids:
        names.insert(0, model.labels.wnids[target.index])
    if target.name:
        names += [target.name, target.name.replace(" ", "_")]
    return list(dict.fromkeys(names))  # one-word names would otherwise be listed twice


def resolve_taps(model: Model, taps: Sequence[str | Tap] | None) -> tuple[tuple[Tap, ...], str]:
    """Taps for class targets: the user's, else the preset, else discovered ones."""
    if taps:
        chosen = user_taps(taps)
        for tap in chosen:
            check_layer(tap.layer, model.module, model.zoo_name)
        layers = list_layers(model.module, model.preprocessing.input_size)
        for tap in chosen:
            check_runs_once(tap.layer, layers, "tap", model.zoo_name)
        return chosen, "given by the user"
    layers = list_layers(model.module, model.preprocessing.input_size)
    return default_taps(model.name, layers)


def reference_fields(references: ReferenceSet) -> dict:
    """The ``references`` entry of a record; ``identity`` changes whenever the images would."""
    return {
        "count": references.count,
        "seed": references.seed,
        "distinct_images": len(references.sources),
        "summary": references.summary(),
        "identity": hashlib.sha256(references.identity().encode()).hexdigest()[:16],
    }


@dataclass(frozen=True)
class ClassPlan:
    """A class target with its references and taps."""

    target: ClassTarget
    references: ReferenceSet
    taps: tuple[Tap, ...]
    taps_source: str


@dataclass
class VitalClass(Method):
    """VITAL for classes.

    Attributes
    ----------
    taps
        ``["layer1=1", ...]`` or :class:`Tap` objects; default: the preset, else discovered.
    reference_count
        Reference views per class (N).
    reference_seed
        Seed of the reference subset and views (apart from the image seed, so that a target
        rerun alone with its recorded seed sees the same references).
    cache_dir
        Prototype cache folder (default ``$VITAL_CACHE`` or ``~/.cache/vital``).
    """

    taps: Sequence[str | Tap] | None = None
    reference_count: int = DEFAULT_REFERENCES
    reference_seed: int = 0
    cache_dir: Path | None = None

    name = "vital"
    targets = (ClassTarget,)
    uses_references = True
    named_settings = True

    def default_settings(self, model: Model, setting: int | str | None = None) -> Settings:
        """The named setting (``fast`` unless named), with the model's preset priors (ViT-L)."""
        settings = Settings.setting(DEFAULT_SETTING if setting is None else setting)
        strength = PRESET_PRIORS.get(model.name)
        return dataclasses.replace(settings, tv_l2=strength, l2=strength) if strength else settings

    @contextlib.contextmanager
    def prepare(
        self, model: Model, targets: Sequence[ClassTarget], references: References, settings
    ) -> Iterator[list[ClassPlan]]:
        """Each class's references (prototypes are computed batch by batch, and cached)."""
        taps, source = resolve_taps(model, self.taps)
        shared_ok = len(set(targets)) == 1
        yield [
            ClassPlan(
                target,
                class_references(
                    model, target, references, self.reference_count, self.reference_seed, shared_ok
                ).readable(self.cache_dir),
                taps,
                source,
            )
            for target in targets
        ]

    def identifying_references(self, plan: ClassPlan) -> ReferenceSet:
        """The class's references."""
        return plan.references

    @contextlib.contextmanager
    def objective(
        self, model: Model, plans: Sequence[ClassPlan], settings: Settings, seeds: Sequence[int]
    ) -> Iterator[SortMatching]:
        """Sort matching against each class's prototypes at every tap."""
        taps = plans[0].taps
        layers = [t.layer for t in taps]
        resolution = resolution_of(model, settings)
        prototypes = {
            factor: [
                compute_prototypes(
                    model,
                    layers,
                    plan.references,
                    resolution,
                    factor,
                    cache_dir=self.cache_dir,
                    coarse_view=settings.coarse_view,
                )
                for plan in plans
            ]
            for _, factor in settings.stages()
        }
        # Folded after the taps attach: a tapped layer keeps returning its own output.
        with (
            tapped(model.module, layers, stop_early=True) as tap,
            folded_batch_norms(model.module, layers),
        ):
            yield SortMatching(tap, taps, prototypes)

    def record_fields(self, plan: ClassPlan, objective: SortMatching, item: int) -> dict:
        """Taps and references."""
        return {
            "taps": [{"layer": t.layer, "weight": t.weight} for t in plan.taps],
            "taps_source": plan.taps_source,
            "references": reference_fields(plan.references),
            "options": self.options(plan.references),
        }
