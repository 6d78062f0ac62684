"""The one driver: targets → settings → batches → seeds → optimise → evaluate → record → sink.

Every method (:mod:`vital.methods`) runs through :func:`run`; the front door
(:func:`vital.visualize`), the command line, the atlas and the comparison only choose the
method, the targets and the user's overrides. Settings are resolved in one place
(:func:`resolve_settings`): the method's defaults for the model, then the user's overrides; the
record stores exactly what ran.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from vital import metrics
from vital.errors import VitalError, check_count, plain
from vital.grids import as_saved
from vital.memory import pictures_at_once
from vital.methods.base import Method, resolution_of, target_plan
from vital.optimize import (
    DEFAULT_SETTING,
    Run,
    Settings,
    check_setting_names,
    optimize,
    picture_seeds,
    resolved,
    setting_key,
    transparency,
)
from vital.progress import counting_views
from vital.record import Record, model_info, told_apart
from vital.specs import PictureSpec
from vital.store import Result, ResultSink, ResultStore
from vital.targets import ClassTarget, Target, target_record
from vital.zoo import Model, channels_last, frozen

SettingsOverrides = Settings | Mapping[str, Any] | None


def resolve_settings(
    method: Method,
    model: Model,
    setting: int | str | None = None,
    settings: SettingsOverrides = None,
) -> Settings:
    """The settings a run uses: the method's defaults for ``model``, then the overrides.

    Parameters
    ----------
    method
        The method (its defaults depend on the model: preset priors, neuron priors).
    model
        The explained model.
    setting
        A named setting of the method (VITAL: ``"fast"``, 0, 1, 2); ``None`` for its default.
    settings
        Overrides as a mapping of :class:`Settings` fields (values of ``None`` mean "not
        given"), or a complete :class:`Settings`, used as it is.

    Returns
    -------
    Settings
        Validated, with the warm-up as the loop will run it and the coarse stage's view
        fitted to the model (:func:`fit_stages`).
    """
    if isinstance(settings, Settings):
        # the default name is no choice of the user's
        if setting_key(setting) not in (None, DEFAULT_SETTING):
            raise VitalError("give either a named setting or complete Settings, not both.")
        chosen = settings
    else:
        overrides = checked_overrides(settings)
        chosen = dataclasses.replace(method.default_settings(model, setting), **overrides)
    return fit_stages(model, resolved(chosen))


def checked_overrides(settings: SettingsOverrides) -> dict[str, Any]:
    """Changes to a method's settings, checked by name (before any work: see :func:`explain`).

    Values of ``None`` mean "not given"; numpy scalars become the numbers they hold.
    """
    if settings is not None and not isinstance(settings, Mapping):
        raise VitalError(
            f"settings are a mapping of Settings fields or a Settings, not "
            f"{type(settings).__name__}."
        )
    overrides = {k: plain(v) for k, v in dict(settings or {}).items() if v is not None}
    check_setting_names(overrides)
    return overrides


def setting_name(
    method: Method, setting: int | str | None, settings: SettingsOverrides
) -> int | str | None:
    """The named setting a run's records report: ``None`` where no name applies.

    A method without named settings runs its published defaults; complete :class:`Settings`
    are the caller's own.
    """
    if not method.named_settings or isinstance(settings, Settings):
        return None
    if setting is None:
        return DEFAULT_SETTING
    return setting_key(setting)


def _batches(items: Sequence, size: int) -> Iterator[tuple[int, Sequence]]:
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def _seeds(settings: Settings, count: int, seeds: Sequence[int] | None) -> list[int]:
    return picture_seeds(settings.seed, count, seeds)


def _merge(record: Record, fields: Mapping[str, Any]) -> None:
    for name, value in fields.items():
        if name == "evaluation":
            record.evaluation.update(value)
        else:
            setattr(record, name, value)


def fit_stages(model: Model, settings: Settings) -> Settings:
    """The settings with their coarse stage fitted to the model, decided before any work.

    A coarse stage (setting 0's first stage, ``coarse_start``) shows the model its images
    2×2-pooled (``coarse_view="pooled"``: a quarter of a step's cost) or pooled and blurred
    back to the model's own size (``"blurred"``). ``"auto"`` (``fast``'s) takes the pooled
    view where the model takes the smaller images and the blurred one where it does not (a
    model with a fixed input size, such as a ViT): one small probe pass tells. A pooled view
    that the model cannot take is refused in one line.
    """
    if all(factor == 1 for _, factor in settings.stages()) or settings.coarse_view == "blurred":
        return settings
    side = resolution_of(model, settings) // 2
    refusal = _refusal(model, side)
    if settings.coarse_view == "auto":
        return dataclasses.replace(settings, coarse_view="blurred" if refusal else "pooled")
    if refusal:
        raise VitalError(
            f"this model does not take the {side}px half-resolution images of setting 0 or "
            f"coarse_start ({refusal}); use setting fast or 1, or coarse_view='blurred'."
        )
    return settings


# Per module, (side, device, dtype) → why it refuses such images: settings are resolved once
# per picture (an atlas resolves them for every unit), the probe runs once per model and size.
_REFUSALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _refusal(model: Model, side: int) -> str:
    """Why ``model`` refuses (1, 3, side, side) images ('' when it takes them)."""
    known = _REFUSALS.setdefault(model.module, {})
    key = (side, str(model.device), model.dtype)
    if key not in known:
        probe = torch.zeros(1, 3, side, side, device=model.device, dtype=model.dtype)
        try:
            with torch.no_grad():
                model.module(probe)
            known[key] = ""
        except (AssertionError, RuntimeError, ValueError) as error:
            first = (str(error).strip().splitlines() or [""])[0].rstrip(".")
            known[key] = f"{type(error).__name__}: {first}"
    return known[key]


def run(
    method: Method,
    model: Model,
    targets: Sequence[Target],
    references: Any = None,
    *,
    settings: Settings,
    setting: int | str | None = None,
    seeds: Sequence[int] | None = None,
    batch_size: int = 8,
    sink: ResultSink | None = None,
    progress: bool = True,
) -> list[Result]:
    """Visualise ``targets`` with ``method``, batch by batch; each result goes to the sink at once.

    Parameters
    ----------
    method
        A configured method (:func:`vital.methods.get_method`).
    model
        The explained model.
    targets
        Resolved targets, all of a kind the method visualises.
    references
        What the method prepares its references from (``None``: its default).
    settings
        Resolved settings (:func:`resolve_settings`).
    setting
        The named setting they came from, for the records (:func:`setting_name`).
    seeds
        One seed per target; default ``settings.seed + i`` for the ``i``-th target.
    batch_size
        Targets optimised together.
    sink
        Where each finished result goes (a store, a callback); default: kept in memory only.
    progress
        Show progress bars.
    """
    batch_size = check_count(batch_size, "batch_size")
    if not targets:
        raise VitalError("no targets given; name at least one class (targets=C) or channel.")
    seeds = _seeds(settings, len(targets), seeds)
    classes = [t.index for t in targets if isinstance(t, ClassTarget)]
    if classes:  # before any work: a model without class scores fails at once
        metrics.check_classifier(model, max(classes))
    settings = fit_stages(model, settings)
    side = resolution_of(model, settings)
    refusal = _refusal(model, side) if side != model.preprocessing.input_size else ""
    if refusal:
        raise VitalError(
            f"this model does not take {side}px images ({refusal}); leave resolution=R out (it "
            f"takes {model.preprocessing.input_size}px) or give one it takes."
        )
    # Above the usual side a batch must fit in memory: fewer at once, or a refusal, before work.
    kind = "class" if all(isinstance(t, ClassTarget) for t in targets) else "unit"
    batch_size = pictures_at_once(model, side, min(batch_size, len(targets)), kind)
    sink = sink if sink is not None else ResultSink(None)
    batch_count = -(-len(targets) // batch_size)
    with (
        frozen(model.module),
        channels_last(model.module, settings.channels_last),
        counting_views(method.prepare(model, targets, references, settings), progress) as plans,
    ):
        # The output folder is made here, once the references are read and before any step.
        store = sink.store
        # Without a folder or with force, nothing stored is read and every picture is new.
        reading = sink.reuse and store is not None
        specs = _specs(method, model, settings, plans, seeds) if reading else None
        if specs is not None and not sink.replace:
            _refuse_other_pictures(specs, target_plan(plans), store)
        for number, (start, batch) in enumerate(_batches(plans, batch_size), 1):
            batch_seeds = seeds[start : start + len(batch)]
            batch_targets = target_plan(batch)
            batch_specs = specs[start : start + len(batch)] if specs is not None else None
            stored = _stored(batch_specs, batch_targets, sink) if batch_specs is not None else []
            if stored:
                for result in stored:
                    sink(result)
                continue
            parametrization = method.parametrization(model, batch_seeds, settings, batch)
            with torch.no_grad():
                # The start as the optimiser sees it (unclamped: setting 1 starts from N(0, 1)).
                start = model.preprocessing.denormalize(parametrization.images().detach())
                initial = metrics.evaluate(model, start, batch_targets)
            label = method.name + (f" batch {number}/{batch_count}" if batch_count > 1 else "")
            # a class's references pass through the model here, an inner unit's in prepare
            objective_of_batch = method.objective(model, batch, settings, batch_seeds)
            with counting_views(objective_of_batch, progress) as objective:
                run_ = optimize(
                    objective,
                    len(batch),
                    model.preprocessing,
                    settings,
                    model.device,
                    progress=label if progress else False,
                    dtype=model.dtype,
                    seeds=batch_seeds,
                    parametrization=parametrization,
                    transparency_from=method.transparency_from,
                )
            # Scored on the pixels the PNG holds, so what a record claims holds for the file;
            # the float image's scores are kept beside them, labelled.
            final = metrics.evaluate(model, as_saved(run_.pixels), batch_targets)
            unsaved = metrics.evaluate(model, run_.pixels, batch_targets)
            alphas = (
                transparency(run_.gradient_magnitude).cpu() if method.has_transparency else None
            )
            for item, plan in enumerate(batch):
                record = _record(method, model, batch_targets[item], settings, run_, item)
                record.setting = setting
                record.evaluation = {
                    **final[item],
                    **{f"float_{k}": v for k, v in unsaved[item].items() if k != "top5"},
                    **{f"initial_{k}": v for k, v in initial[item].items() if k != "top5"},
                }
                _merge(record, method.record_fields(plan, objective, item))
                alpha = alphas[item] if alphas is not None else None
                record.evaluation.update(_checks(batch_targets[item], record.evaluation, alpha))
                if batch_specs is not None and not sink.replace:
                    _refuse_replaced_meanwhile(batch_specs[item], batch_targets[item], store)
                sink(Result(batch_targets[item], run_.pixels[item].cpu(), record, alpha))
    return sink.results


def run_setting(
    method: Method,
    model: Model,
    targets: Sequence[Target],
    references: Any = None,
    *,
    setting: int | str | None,
    overrides: SettingsOverrides,
    **options: Any,
) -> list[Result]:
    """:func:`run` under the named ``setting`` with the caller's ``overrides`` of it.

    The one place a named setting and its overrides become the settings a run uses and the
    name its records give (``options``: :func:`run`'s other keywords).
    """
    return run(
        method,
        model,
        targets,
        references,
        settings=resolve_settings(method, model, setting, overrides),
        setting=setting_name(method, setting, overrides),
        **options,
    )


def _specs(
    method: Method, model: Model, settings: Settings, plans: Sequence[Any], seeds: Sequence[int]
) -> list[PictureSpec]:
    """Each plan's picture spec: everything its picture depends on."""
    return [
        PictureSpec.of(
            method, model.fingerprint, target, settings, seed, method.identifying_references(plan)
        )
        for plan, target, seed in zip(plans, target_plan(plans), seeds, strict=True)
    ]


def _stored(
    specs: Sequence[PictureSpec], targets: Sequence[Target], sink: ResultSink
) -> list[Result]:
    """The batch's pictures from the sink's folder when all are stored there; else none.

    Stored means: with exactly these inputs (``specs``).

    A batch is reused whole or run whole, so an interrupted run, run again, gives the pictures
    the uninterrupted run would have given (a batch's images share float rounding).
    """
    found = []
    for spec, target in zip(specs, targets, strict=True):
        result = sink.stored(spec, target)
        if result is None:
            return []
        found.append(result)
    return found


def _refuse_other_pictures(
    specs: Sequence[PictureSpec], targets: Sequence[Target], store: ResultStore
) -> None:
    """Refuse, before any work, a run whose pictures would replace ones made otherwise.

    A picture's files are named by its target and seed, so a second run into the same folder
    with other settings, options or references would overwrite the first run's pictures;
    without ``force`` that is asked, not done.
    """
    for spec, target in zip(specs, targets, strict=True):
        record = store.other_picture(spec)
        if record is not None:
            changed = "; ".join(spec.differences(record)[:3])
            seed = spec.settings["seed"]
            raise VitalError(
                f"{store.folder} already holds the picture of {target.describe()} (seed "
                f"{seed}) made with other inputs ({changed}): give force=True to replace it, "
                "or another out=DIR."
            )


def _refuse_replaced_meanwhile(spec: PictureSpec, target: Target, store: ResultStore) -> None:
    """Refuse to write a picture whose files another run filled with other inputs meanwhile.

    :func:`_refuse_other_pictures` looks before the first step; a second run into the same
    folder started at about the same time (other steps, other references) passes that look
    too, and each would overwrite the other's pictures without a word. What this run finished
    before is kept.
    """
    record = store.other_picture(spec)
    if record is not None:
        changed = "; ".join(spec.differences(record)[:3])
        raise VitalError(
            f"while this run worked, another wrote the picture of {target.describe()} (seed "
            f"{spec.settings['seed']}) into {store.folder} with other inputs ({changed}); this "
            "run's picture is not written over it: run it again with another out=DIR (or "
            "force=True to replace that picture)."
        )


# A unit whose activation stays within this of 0 on its references, its start and its picture
# does not fire: a signed unit of an untrained network reads -3e-10 where a ReLU unit reads 0.
# Activations that carry anything are many orders larger (0.01 to 10 on trained models).
SILENT_ACTIVATION = 1e-6


def _checks(target: Target, evaluation: Mapping[str, Any], alpha: torch.Tensor | None) -> dict:
    """What a record says about an inner picture's success, beside its numbers.

    ``below_start``: the target ends below its activation on the starting noise, so the picture
    does not show what drives it up (a warning says so, which the command line prints);
    ``silent``: the target does not fire at all (activation 0 on its references, its start and
    its picture: a dead unit, or references that never reach it; a warning says so);
    ``transparency_top_quarter``: the share of the transparency map's mass in its brightest
    quarter of pixels (0.25: a flat map).
    """
    checks: dict[str, Any] = {}
    if alpha is not None:
        checks["transparency_top_quarter"] = round(metrics.concentration(alpha), 4)
    final, initial = evaluation.get("activation"), evaluation.get("initial_activation")
    if final is None or initial is None:
        return checks
    checks["below_start"] = bool(final < initial)
    reference = evaluation.get("reference_activation")
    checks["silent"] = reference is not None and all(
        abs(value) <= SILENT_ACTIVATION for value in (reference, final, initial)
    )
    if checks["silent"]:  # no relevance flows from a unit that never fires: nothing to match
        warnings.warn(
            f"{target.describe()}: it does not fire on its references, its starting noise or "
            f"its picture (activation {reference:.3g}, {initial:.3g} and {final:.3g}: 0 up to "
            "float rounding), so the picture shows nothing of it; choose another unit, or "
            "references that drive it (given as a folder, or mined from other data).",
            stacklevel=3,
        )
    elif checks["below_start"]:
        shown_final, shown_initial = told_apart(final, initial)
        warnings.warn(
            f"{target.describe()}: its activation ended at {shown_final}, below the "
            f"{shown_initial} of its starting noise: the picture does not show what drives it "
            "up (try more steps=N, other references (a folder, or other data to mine them "
            "from) or another seed=S).",
            stacklevel=3,
        )
    return checks


def _record(
    method: Method,
    model: Model,
    target: Target,
    settings: Settings,
    run_: Run,
    item: int,
) -> Record:
    history = run_.history[:, item]
    seed = run_.seeds[item]
    return Record(
        method=method.name,
        model=model_info(model),
        target=target_record(target),
        settings={**dataclasses.asdict(settings), "seed": seed},
        seed=seed,
        evaluation={},
        final_loss={name: value[item].item() for name, value in run_.final_terms.items()},
        final_total=history[-1].item(),
        loss_history=[round(v, 6) for v in history.tolist()],
        seconds=run_.seconds,
        batch_size=run_.images.shape[0],
        device=str(run_.images.device),
    )
