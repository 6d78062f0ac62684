"""What a stored picture depends on, so that stored results are reused only when it all matches.

A :class:`PictureSpec` lists everything that changes a picture: the method, the model's weights
(fingerprint), the target, the effective settings with the seed (the method's defaults for the
model under the user's overrides, as :func:`vital.driver.resolve_settings` gives them), the
identity of the reference images, and the method's options. Its :meth:`~PictureSpec.key` keys
the atlas's units; :meth:`~PictureSpec.matches` compares it with a stored
:class:`~vital.record.Record` (for :func:`vital.explain`, which reuses pictures from an atlas or
a store whatever their seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vital.driver import resolve_settings
from vital.methods import DEFAULT_METHOD, get_method
from vital.record import Record
from vital.references import ReferenceSet
from vital.targets import Target, target_from_record
from vital.zoo import Model

# Method options that say where things are cached, not what is computed.
_NOT_OUTPUT = ("cache_dir",)


def references_identity(references: ReferenceSet | None) -> str | None:
    """A short hash of the reference images, their number and seed (``None``: no references)."""
    if references is None:
        return None
    return hashlib.sha256(references.identity().encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists)."""
    return json.loads(json.dumps(value, sort_keys=True))


def unit_of_record(record: Record) -> str:
    """The unit id of a record's target (``class/967``, ``features.18/12``)."""
    return target_from_record(record.target).unit()


@dataclass(frozen=True)
class PictureSpec:
    """Everything a picture depends on.

    Attributes
    ----------
    method
        Registry name of the method.
    model
        The model's fingerprint.
    unit
        The target's unit id.
    settings
        Effective settings with the seed, as the record stores them.
    references
        :func:`references_identity` of the reference set (``None`` for methods without).
    options
        The method's options as recorded (without cache locations).
    """

    method: str
    model: str
    unit: str
    settings: dict
    references: str | None
    options: dict

    def inputs(self) -> dict:
        """The spec as plain data (stored next to a unit, and compared on re-runs)."""
        return _plain(dataclasses.asdict(self))

    def key(self) -> str:
        """A hash of :meth:`inputs`."""
        text = json.dumps(self.inputs(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def matches(self, record: Record, ignore_seed: bool = False) -> bool:
        """Whether ``record`` is a picture of this spec.

        A record without the references' identity or the method's options (one written
        outside an atlas by an older vital) never matches: what it depended on is unknown.
        """
        references = record.references or {}
        if record.options is None or (self.references and "identity" not in references):
            return False
        recorded = {
            "method": record.method,
            "model": record.model.get("fingerprint"),
            "unit": unit_of_record(record),
            "settings": record.settings,
            "references": references.get("identity"),
            "options": {k: v for k, v in record.options.items() if k not in _NOT_OUTPUT},
        }
        wanted = self.inputs()
        if ignore_seed:
            for spec in (recorded, wanted):
                spec["settings"] = {k: v for k, v in spec["settings"].items() if k != "seed"}
        return _plain(recorded) == wanted


def picture_spec(
    model: Model,
    target: Target,
    references: ReferenceSet | None,
    seed: int,
    setting: int | str | None = None,
    overrides: Mapping[str, object] | None = None,
    method: str = DEFAULT_METHOD,
    options: Mapping[str, object] | None = None,
) -> PictureSpec:
    """The spec of ``target``'s picture as :func:`vital.visualize` would make it.

    Parameters
    ----------
    model
        The explained model.
    target
        What is visualised.
    references
        Its reference set (``None`` for methods without references).
    seed
        The picture's seed.
    setting, overrides
        The named setting and the user's changes to the method's defaults.
    method, options
        The method's name and the options it is given.
    """
    chosen = get_method(method, [target], **dict(options or {}))
    settings = resolve_settings(chosen, model, setting, dict(overrides or {}))
    return PictureSpec(
        method=chosen.name,
        model=model.fingerprint,
        unit=target.unit(),
        settings=_plain({**dataclasses.asdict(settings), "seed": seed}),
        references=references_identity(references),
        options=_plain({k: v for k, v in chosen.options().items() if k not in _NOT_OUTPUT}),
    )


def differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """What changed between two specs' inputs, as ``"settings.steps 300 → 500"`` lines."""
    found = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            found += differences(before, after, f"{name}.")
        elif before != after:
            found.append(f"{name} {before} → {after}")
    return found
