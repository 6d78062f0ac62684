"""Every way of making a picture, behind one contract (:class:`~vital.methods.base.Method`).

``vital`` is VITAL (classes: :mod:`.vital_class`; channels and directions:
:mod:`.vital_neuron`); ``fourier`` (Olah et al. 2017), ``maco`` (Fel et al. 2023) and
``deepinversion`` (Yin et al. 2020) are the baselines it is compared with. A name may stand for
several classes, one per kind of target; :func:`get_method` picks the one for the targets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from vital.errors import VitalError, plain
from vital.methods.base import Method
from vital.methods.deepinversion import DeepInversion
from vital.methods.fourier import Fourier
from vital.methods.maco import Maco
from vital.methods.vital_class import VitalClass
from vital.methods.vital_neuron import VitalNeuron
from vital.optimize import MAX_SEED
from vital.targets import Target

# The method a run uses unless one is named.
DEFAULT_METHOD = "vital"

# Name → the method's classes (one per kind of target). A new method is one line here.
METHODS: dict[str, tuple[type[Method], ...]] = {
    "vital": (VitalClass, VitalNeuron),
    "fourier": (Fourier,),
    "maco": (Maco,),
    "deepinversion": (DeepInversion,),
}


def method_name(name: object) -> object:
    """A method's name as :data:`METHODS` spells it: ``" MaCo"`` (the paper's) → ``maco``."""
    return name.strip().lower() if isinstance(name, str) else name


def method_class(name: str, targets: Sequence[Target]) -> type[Method]:
    """The class of method ``name`` that visualises ``targets`` (all of one kind)."""
    name = method_name(name)
    if not isinstance(name, str) or name not in METHODS:
        raise VitalError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    kinds = {type(target) for target in targets}
    for cls in METHODS[name]:
        if kinds <= set(cls.targets):
            return cls
    accepted = {kind for cls in METHODS[name] for kind in cls.targets}
    if kinds <= accepted:  # each kind has a method, but not one method for all of them
        raise VitalError(
            f"{', '.join(sorted(k.__name__ for k in kinds))} targets need separate runs with "
            f"{name}; visualise each kind in its own call."
        )
    raise VitalError(
        f"{name} visualises {', '.join(sorted(k.__name__ for k in accepted))} targets, not "
        f"{', '.join(sorted(k.__name__ for k in kinds))}."
    )


def get_method(name: str, targets: Sequence[Target], **options: object) -> Method:
    """A new method object for ``targets``, configured with ``options`` (its fields)."""
    cls = method_class(name, targets)
    known = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it takes no options"
        raise VitalError(f"{name} has no option {', '.join(unknown)} for these targets; {takes}.")
    # numpy's numbers and 0-d tensors (reference_count=np.int64(4)) are the numbers they hold,
    # as settings' are (driver.checked_overrides): the fields are checked and recorded as such.
    return cls(**{name: _checked(name, plain(value)) for name, value in options.items()})


def _checked(name: str, value: object) -> object:
    """The options VITAL's methods share, checked where they enter, before any work.

    Unchecked, a negative ``reference_seed`` failed inside numpy once the references were
    drawn, a ``cache_dir`` of another type inside pathlib, and ``rank="no"`` was taken as
    true.
    """
    if name == "reference_seed":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
            raise VitalError(
                f"reference_seed=S is a whole number from 0 to {MAX_SEED}, not {value!r}."
            )
    if name == "cache_dir" and value is not None and value is not False:  # False: no cache
        if not isinstance(value, (str, Path)):
            raise VitalError(
                f"cache_dir is a folder (a path), or False for no cache, not {value!r}."
            )
        return Path(value).expanduser() if str(value) else value  # "" is no cache, as False
    if name == "rank" and value is not None and not isinstance(value, bool):
        raise VitalError(f"rank is True or False, not {value!r}.")
    return value


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "DeepInversion",
    "Fourier",
    "Maco",
    "Method",
    "VitalClass",
    "VitalNeuron",
    "get_method",
    "method_name",
    "method_class",
]
