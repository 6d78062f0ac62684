"""Build an atlas: plan units, run them in batches on an engine, record each as it finishes.

A *unit* is one target with its seed. The plan is deterministic (targets in the order given,
seed = base seed + position in the plan), so a resumed or distributed build gives every unit
the seed an uninterrupted local build would give it. The driver is the only writer of the
store: each finished unit is committed as soon as its batch returns, so Ctrl-C or a crash loses
at most the batches in flight.

Each unit's result is keyed on everything that changes the picture (:mod:`vital.atlas.keys`):
a re-run reuses a unit only when its key is unchanged, recomputes it otherwise (the report says
what changed), and ``force`` recomputes every unit. The atlas writes only files it recorded as
its own (:mod:`vital.atlas.ledger`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vital.atlas.folder import Atlas
from vital.atlas.keys import differences, picture_spec
from vital.driver import checked_overrides
from vital.engines import Engine, LocalEngine
from vital.errors import VitalError, check_count
from vital.memory import check_fits
from vital.methods import DEFAULT_METHOD
from vital.optimize import DEFAULT_SETTING, first_seed, picture_seeds
from vital.progress import progress_bar
from vital.references import ReferenceSet
from vital.store import Result
from vital.targets import ClassTarget, Target, resolve_targets
from vital.zoo import Model, load_model


@dataclass(frozen=True)
class ModelSpec:
    """A model by name, loaded where the work runs (once per worker process)."""

    name: str
    weights: str | None = None
    device: str = "auto"

    def __call__(self) -> Model:
        """Load (or reuse) the model on this worker's device."""
        return _load_cached(self.name, self.weights, _device(self.device))


@dataclass(frozen=True)
class GivenModel:
    """A model object handed over as it is (from the Python API)."""

    model: Model
    device: str = "auto"

    def __call__(self) -> Model:
        """The model, moved to this worker's device."""
        return self.model.to(_device(self.device))


def _device(preference: str) -> str:
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


@functools.lru_cache(maxsize=2)
def _load_cached(name: str, weights: str | None, device: str) -> Model:
    return load_model(name, weights=weights, device=device)


@dataclass(frozen=True)
class Unit:
    """One target of the atlas and its seed."""

    target: Target
    seed: int

    @property
    def id(self) -> str:
        """Stable unit id (``class/967``, ``features.16/12``)."""
        return self.target.unit()


@dataclass(frozen=True)
class Job:
    """A batch of units of one kind, with everything a worker needs to run it.

    ``setting`` and ``overrides`` are the user's: each kind of unit gets its method's defaults
    (the inner-neuron priors for channels) under them, as :func:`vital.visualize` resolves.
    """

    model: ModelSpec | GivenModel
    units: tuple[Unit, ...]
    references: tuple[ReferenceSet, ...]
    setting: int | str | None = None
    overrides: tuple[tuple[str, object], ...] = ()


@dataclass
class UnitOutcome:
    """A unit's result, or the error that stopped it."""

    unit: Unit
    result: Result | None = None
    error: str | None = None


def run_job(job: Job) -> list[UnitOutcome]:
    """Visualise a batch; if the batch fails, run its units alone so one bad unit stays alone."""
    from vital.api import visualize

    model = job.model()
    try:
        results = visualize(
            model,
            [unit.target for unit in job.units],
            {unit.target: refs for unit, refs in zip(job.units, job.references, strict=True)},
            setting=job.setting,
            settings=dict(job.overrides),
            seeds=[unit.seed for unit in job.units],
            batch_size=len(job.units),
            progress=False,
        )
    except Exception as error:  # a unit's failure is data for the store, not the end of the build
        if len(job.units) == 1:
            detail = "".join(traceback.format_exception_only(error)).strip()
            return [UnitOutcome(job.units[0], error=detail)]
        return [
            outcome
            for unit, refs in zip(job.units, job.references, strict=True)
            for outcome in run_job(dataclasses.replace(job, units=(unit,), references=(refs,)))
        ]
    return [UnitOutcome(unit, result) for unit, result in zip(job.units, results, strict=True)]


@dataclass
class BuildReport:
    """What a build did.

    Attributes
    ----------
    planned
        Units in the plan.
    skipped
        Units reused: stored with exactly these settings, references, options and model.
    finished, failed
        Units run in this build, by outcome.
    seconds
        Wall time of the build.
    reused
        The reused units' ids.
    changed
        Units recomputed because something they depend on changed: id → what changed.
    forced
        Units recomputed only because ``force`` was given.
    incomplete
        Units stored with these inputs but recomputed because a file of theirs is gone or
        was changed since vital wrote it: id → which (a changed file is not written over:
        the build then stops, naming it).
    """

    planned: int
    skipped: int
    finished: int
    failed: int
    seconds: float
    reused: list[str] = dataclasses.field(default_factory=list)
    changed: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    forced: list[str] = dataclasses.field(default_factory=list)
    incomplete: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def units_per_minute(self) -> float:
        """Units run (finished or failed) per minute of this build."""
        ran = self.finished + self.failed
        return 60 * ran / self.seconds if self.seconds > 0 else 0.0


def _kind(unit: Unit) -> str:
    return "class" if unit.target.layer is None else "neuron"


def plan_jobs(
    spec,
    units: Sequence[Unit],
    references: dict[str, ReferenceSet],
    batch_size: int,
    setting: int | str | None = None,
    overrides: Mapping[str, object] | None = None,
) -> list[Job]:
    """Batches of at most ``batch_size`` consecutive units of one kind (classes or neurons)."""
    frozen_overrides = tuple(sorted((overrides or {}).items()))
    jobs: list[Job] = []
    batch: list[Unit] = []
    for unit in [*units, None]:
        if batch and (unit is None or _kind(unit) != _kind(batch[0]) or len(batch) == batch_size):
            refs = tuple(references[u.id] for u in batch)
            jobs.append(Job(spec, tuple(batch), refs, setting, frozen_overrides))
            batch = []
        if unit is not None:
            batch.append(unit)
    return jobs


def check_once(targets: Sequence[Target]) -> None:
    """Refuse a plan that names a target twice (before mining its references, too)."""
    ids = [target.unit() for target in targets]
    if len(set(ids)) != len(ids):
        twice = sorted({unit for unit in ids if ids.count(unit) > 1})
        raise VitalError(
            f"the atlas plan names a target twice ({', '.join(map(str, twice))}); give each "
            "class or channel once."
        )


def plan_units(
    targets: Sequence[Target], seed: int, seeds: Sequence[int] | None = None
) -> list[Unit]:
    """Units in the order given; unit ``i`` gets ``seeds[i]``, by default ``seed + i``."""
    check_once(targets)
    chosen = picture_seeds(seed, len(targets), seeds)
    return [Unit(target, s) for target, s in zip(targets, chosen, strict=True)]


def build_atlas(
    model: Model | ModelSpec | str,
    targets: Sequence[Target | int | str],
    references: Callable[[Target], ReferenceSet],
    folder: str | Path,
    settings: Mapping[str, object] | None = None,
    *,
    setting: int | str = DEFAULT_SETTING,
    engine: Engine | None = None,
    batch_size: int = 4,
    progress: bool = True,
    on_unit: Callable[[UnitOutcome], None] | None = None,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
    force: bool = False,
    render: bool = True,
    device: str | torch.device | None = None,
) -> BuildReport:
    """Run every unit not yet in the atlas with these inputs and record it; render the site.

    Parameters
    ----------
    model
        A model name, :class:`ModelSpec` or loaded :class:`vital.Model` (loaded, or moved, on
        each worker's ``device``).
    targets
        What to visualise, in order: :class:`~vital.targets.ClassTarget`, ``Channel`` or
        ``Direction`` objects, or classes by index, name or WordNet id.
    references
        Gives each target's reference set (called in the driver, before any work starts).
    folder
        The atlas folder (created if needed).
    settings
        The user's changes to the methods' defaults, as a mapping of Settings fields (as for
        :func:`vital.visualize`): classes and channels each get their own method's defaults
        under them. ``settings["seed"]`` is ``seed``.
    setting
        A named setting of VITAL: ``"fast"`` (the default) or the authors' 0, 1, 2.
    engine
        Where batches run (default: in this process).
    batch_size
        Units per job.
    progress
        Show units done/total, units/min and the time left.
    on_unit
        Called after each unit is recorded (for callers' own progress or tests).
    seed
        Seed of the first unit, ``--seed`` of the command line (default 0): the ``i``-th unit
        gets ``seed + i``.
    seeds
        One seed per target instead (default: ``seed + i`` for the ``i``-th).
    force
        Recompute every unit, even those stored with the same inputs.
    render
        Write the site when the build ends.
    device
        ``"auto"`` (the default: CUDA where a worker has it), ``"cpu"`` or ``"cuda"``; for a
        :class:`ModelSpec`, replaces its own.

    Raises
    ------
    VitalError
        When the folder holds files that vital did not write where the atlas writes.
    """
    from vital.atlas.site import render_site

    batch_size = check_count(batch_size, "batch_size")
    if settings is not None and not isinstance(settings, Mapping):
        raise VitalError(
            "an atlas takes changes to the methods' defaults as a mapping, e.g. "
            "{'steps': 300}: classes and channels have different defaults."
        )
    settings = dict(settings or {})
    seed = first_seed(seed, settings)
    spec = ModelSpec(model) if isinstance(model, str) else model
    spec = GivenModel(spec) if isinstance(spec, Model) else spec
    if device is not None and isinstance(spec, (ModelSpec, GivenModel)):
        spec = dataclasses.replace(spec, device=str(device).strip().lower())  # "CPU" as "cpu"
    loaded = spec()
    targets = resolve_targets(loaded, targets)  # a class by index or name, a generator: as given
    # else every unit is refused, one by one, after the mining
    kind = "class" if all(isinstance(t, ClassTarget) for t in targets) else "unit"
    check_fits(loaded, checked_overrides(settings), kind)
    fingerprint = loaded.fingerprint
    atlas = Atlas(folder)
    units = plan_units(targets, seed, seeds)
    reference_sets = {unit.id: references(unit.target) for unit in units}
    atlas.planned = {
        unit.id: picture_spec(
            loaded, unit.target, reference_sets[unit.id], unit.seed, setting, settings
        )
        for unit in units
    }
    stored = atlas.units()
    report = BuildReport(len(units), 0, 0, 0, 0.0)
    todo = []
    for unit in units:
        planned, current = atlas.planned[unit.id], stored.get(unit.id)
        unchanged = current is not None and current.key == planned.key()
        # A stored unit counts only when all its files are there as vital wrote them: one
        # whose picture was deleted would be reused and shown as a broken image.
        problem = atlas.unit_problem(current) if unchanged and not force else None
        if unchanged and not force and problem is None:
            report.reused.append(unit.id)
            continue
        if problem is not None:
            report.incomplete[unit.id] = problem
        elif unchanged:
            report.forced.append(unit.id)
        elif current is not None:
            report.changed[unit.id] = differences(current.inputs, planned.inputs())
        todo.append(unit)
    report.skipped = len(report.reused)
    atlas.ledger.claim(
        path
        for unit in todo
        for path in atlas.result_files(f"vital-{unit.target.slug()}-seed{unit.seed}")
    )
    jobs = plan_jobs(spec, todo, reference_sets, batch_size, setting, settings)
    engine = engine or LocalEngine()
    started = time.perf_counter()
    bar = progress_bar(
        len(units), "atlas", initial=report.skipped, unit="unit", disable=not progress
    )

    def failed(job: Job, error: str) -> list[UnitOutcome]:
        # A batch that kept failing on the engine (say its worker died, after retries): each
        # of its units is recorded as failed, and the build carries on.
        return [UnitOutcome(unit, error=error) for unit in job.units]

    try:
        for outcomes in engine.run(jobs, run_job, on_failure=failed):
            for outcome in outcomes:
                _record(atlas, outcome, reference_sets[outcome.unit.id], fingerprint)
                if outcome.error is None:
                    report.finished += 1
                else:
                    report.failed += 1
                bar.update()
                elapsed = time.perf_counter() - started
                bar.set_postfix(
                    per_min=f"{60 * bar.n / max(elapsed, 1e-9):.1f}", failed=report.failed
                )
                if on_unit is not None:
                    on_unit(outcome)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started
        if render:
            render_site(atlas.folder)
    return report


def _record(atlas: Atlas, outcome: UnitOutcome, references: ReferenceSet, model: str) -> None:
    if outcome.error is not None:
        atlas.store.record_failure(outcome.unit.target, DEFAULT_METHOD, model, outcome.error)
        return
    result = outcome.result
    spec = atlas.planned[outcome.unit.id]
    record = result.record
    record.unit = outcome.unit.id
    record.references["top"] = atlas.reference_thumbnails(outcome.unit.target, references)
    # What the picture depended on, so that it is reused only when all of it matches.
    record.references["identity"] = spec.references
    record.options = {**(record.options or {}), **spec.options}
    atlas.ledger.claim(atlas.result_files(result.stem))
    atlas.store.write(result)
    atlas.ledger.seal(result.paths.values())
    atlas.register(spec, result.paths["json"].name)
