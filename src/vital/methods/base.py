"""The method contract: what every way of making a picture provides to the one driver.

A *method* (VITAL for classes, VITAL for channels and directions, Fourier FV, MaCo,
DeepInversion, …) is a small object, configured by its options, that says

- which targets it visualises and whether it uses reference images;
- its default :class:`~vital.optimize.Settings` for a model (:meth:`Method.default_settings`);
- what it prepares for the whole run from the targets and references (prototypes, an attached
  relevance backend), as a context manager (:meth:`Method.prepare`);
- what is optimised (:meth:`Method.parametrization`) and the objective of a batch, with any
  hooks attached while the batch runs (:meth:`Method.objective`);
- the fields it adds to each record (:meth:`Method.record_fields`).

The driver (:func:`vital.driver.run`) does the rest the same way for every method: settings,
seeds, batches, the loop, evaluation, records, the sink. Adding a method is one new module
with a class like these and one line in :data:`vital.methods.METHODS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch

from vital.errors import VitalError
from vital.optimize import DEFAULT_SETTING, Objective, Settings, setting_key
from vital.parametrizations import Parametrization, create
from vital.references import ReferenceSet, mean_color
from vital.targets import Target
from vital.zoo import Model


def resolution_of(model: Model, settings: Settings) -> int:
    """The side of the synthetic images: the settings' resolution, else the model's input size."""
    return settings.resolution or model.preprocessing.input_size


class Method:
    """Base of every method; subclasses are dataclasses whose fields are their options.

    Class attributes
    ----------------
    name
        Registry and record name.
    targets
        The target types the method visualises.
    uses_references
        Whether it needs reference images (VITAL) or none (activation maximisation).
    has_transparency
        Whether its results carry an alpha map (accumulated |gradient|).
    transparency_from
        The share of the steps after which the alpha map's |gradient| accumulates (0: all).
    named_settings
        Whether it has named settings (VITAL's fast, 0, 1, 2) or only its published defaults.
    """

    name: ClassVar[str] = ""
    targets: ClassVar[tuple[type, ...]] = ()
    uses_references: ClassVar[bool] = False
    has_transparency: ClassVar[bool] = False
    transparency_from: ClassVar[float] = 0.0
    named_settings: ClassVar[bool] = False

    def default_settings(self, model: Model, setting: int | str | None = None) -> Settings:
        """The method's defaults for ``model``; ``setting`` names one of its presets."""
        raise NotImplementedError

    @contextlib.contextmanager
    def prepare(
        self, model: Model, targets: Sequence[Target], references: Any, settings: Settings
    ) -> Iterator[Sequence[Any]]:
        """Per target, what the batches need (a *plan*), valid while the block runs.

        The default plan is the target itself and needs no references.
        """
        if references is not None:
            raise VitalError(
                f"{self.name} uses no reference images (it maximises the target's activation); "
                "leave out references=DIR, or use method=vital."
            )
        yield list(targets)

    def identifying_references(self, plan: Any) -> ReferenceSet | None:
        """The reference set that identifies ``plan``'s picture (``None``: the method uses none).

        With the model, target, settings and options it tells whether a stored picture is
        this one (:class:`vital.specs.PictureSpec`).
        """
        return None

    def parametrization(
        self, model: Model, seeds: Sequence[int], settings: Settings, plans: Sequence[Any] = ()
    ) -> Parametrization:
        """What the loop optimises for images with these seeds: the settings' parametrisation.

        With ``settings.color_start``, each image starts at the mean colour of its plan's
        references (plans without references start as usual).
        """
        resolution = resolution_of(model, settings)
        colors = None
        if settings.color_start and plans and all(hasattr(plan, "references") for plan in plans):
            cache_dir = getattr(self, "cache_dir", None)
            colors = torch.stack(
                [
                    mean_color(plan.references, resolution, model.preprocessing, cache_dir)
                    for plan in plans
                ]
            )
        return create(
            settings.parametrization,
            seeds,
            resolution,
            model.device,
            model.preprocessing,
            clamp=settings.clamp,
            dtype=model.dtype,
            colors=colors,
        )

    def objective(
        self, model: Model, plans: Sequence[Any], settings: Settings, seeds: Sequence[int]
    ) -> contextlib.AbstractContextManager[Objective]:
        """The objective of one batch, with its hooks attached while the block runs."""
        raise NotImplementedError

    def record_fields(self, plan: Any, objective: Objective, item: int) -> dict:
        """Fields this method adds to the record of batch item ``item`` (``evaluation`` merges).

        The default records the method's options.
        """
        return {"options": self.options(getattr(plan, "references", None))}

    def options(self, references: ReferenceSet | None = None) -> dict:
        """The method's options as plain data, for records.

        With the reference set a picture used, ``reference_count`` and ``reference_seed`` are
        that set's: the options only choose a set from a folder or the embedded photos, and a
        set given as it is (an atlas's mined references) keeps its own count and seed.
        """
        options = {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if not f.name.startswith("_")
        }
        if references is not None:
            for name, used in (
                ("reference_count", references.count),
                ("reference_seed", references.seed),
            ):
                if name in options:
                    options[name] = used
        return options


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "summary"):
        return value.summary()
    return str(value)


def target_plan(plans: Sequence[Any]) -> list[Target]:
    """The targets of a batch of plans (a plan is a target, or has a ``target``)."""
    return [getattr(plan, "target", plan) for plan in plans]


def check_settings_for(method: Method, setting: int | str | None) -> None:
    """Refuse a named setting for a method that has only its published defaults.

    The default setting's name stands for "the method's defaults", whichever method runs.
    """
    if setting_key(setting) not in (None, DEFAULT_SETTING):
        raise VitalError(
            f"setting={setting} selects one of VITAL's settings; {method.name} runs with its "
            "published defaults. Leave the setting out, or use method=vital."
        )
