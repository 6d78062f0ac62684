"""Baselines to compare VITAL with, behind the same targets, loop and result records.

``fourier`` (Olah et al. 2017), ``maco`` (Fel et al. 2023) and ``deepinversion`` (Yin et al.
2020), registered by name: :func:`vital.visualize` and ``vital class --method`` find them here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from vital.baselines.base import Baseline, BaselineTarget, run_baseline
from vital.baselines.deepinversion import DeepInversion
from vital.baselines.fourier import Fourier
from vital.baselines.maco import Maco
from vital.errors import VitalError
from vital.optimize import Settings
from vital.store import Result
from vital.zoo import Model

BASELINES: dict[str, type] = {
    "fourier": Fourier,
    "maco": Maco,
    "deepinversion": DeepInversion,
}


def get_baseline(name: str, options: Mapping[str, object] | None = None) -> Baseline:
    """The baseline called ``name``, configured with ``options`` (its dataclass fields)."""
    if name not in BASELINES:
        raise VitalError(f"unknown method {name!r}; choose vital or one of {', '.join(BASELINES)}.")
    cls = BASELINES[name]
    options = dict(options or {})
    known = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise VitalError(f"{name} has no option {', '.join(unknown)}; it takes {', '.join(known)}.")
    return cls(**options)


def settings_for(
    name: str, model: Model, options: Mapping[str, object] | None = None, **overrides
) -> Settings:
    """The baseline's default settings for ``model`` with ``overrides`` (steps, seed ...).

    ``options`` configure the baseline first (MaCo's ``canvas`` sets the resolution).
    """
    defaults = get_baseline(name, options).settings(model)
    return dataclasses.replace(defaults, **{k: v for k, v in overrides.items() if v is not None})


def visualize_baseline(
    name: str,
    model: Model,
    targets: Sequence[BaselineTarget | int | str] | BaselineTarget | int | str,
    *,
    options: Mapping[str, object] | None = None,
    settings: Settings | None = None,
    out=None,
    batch_size: int = 8,
    progress: bool = True,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run the baseline ``name`` on ``targets`` (see :func:`run_baseline`)."""
    return run_baseline(
        get_baseline(name, options),
        model,
        targets,
        settings=settings,
        out=out,
        batch_size=batch_size,
        progress=progress,
        on_result=on_result,
    )


__all__ = [
    "BASELINES",
    "DeepInversion",
    "Fourier",
    "Maco",
    "get_baseline",
    "run_baseline",
    "settings_for",
    "visualize_baseline",
]
