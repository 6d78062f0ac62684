"""What a stored picture depends on, so that a stored result is reused only when it all matches.

A :class:`PictureSpec` lists everything that changes a picture: the method, the model's weights
(fingerprint), the target, the effective settings with the seed, the identity of the reference
images, and the method's options. The driver asks a store for a picture of a spec before it
computes one (:meth:`vital.store.ResultStore.stored`), the atlas keys its units by
:meth:`~PictureSpec.key`, and :func:`vital.explain` reuses pictures from an atlas or a store
whatever their seed (:meth:`~PictureSpec.matches`). :func:`vital.atlas.keys.picture_spec` makes
the spec of a picture before its method is prepared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from vital.record import Record
from vital.references import ReferenceSet
from vital.targets import target_from_record

# Method options that say where things are cached, not what is computed.
NOT_OUTPUT = ("cache_dir",)


def references_identity(references: ReferenceSet | None) -> str | None:
    """A short hash of the reference images, their number and seed (``None``: no references)."""
    if references is None:
        return None
    return hashlib.sha256(references.identity().encode()).hexdigest()[:16]


def plain_data(value: Any) -> Any:
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

    @classmethod
    def of(
        cls,
        method: Any,
        model: str,
        target: Any,
        settings: Any,
        seed: int,
        references: ReferenceSet | None,
    ) -> PictureSpec:
        """The spec of ``target``'s picture by a configured ``method`` (:mod:`vital.methods`).

        Parameters
        ----------
        method
            The configured method (its name and options).
        model
            The model's fingerprint.
        target
            What is pictured.
        settings
            The effective :class:`~vital.optimize.Settings` (the seed is ``seed``).
        seed
            The picture's seed.
        references
            The reference set that identifies the picture (``None`` for methods without).
        """
        options = {k: v for k, v in method.options(references).items() if k not in NOT_OUTPUT}
        return cls(
            method=method.name,
            model=model,
            unit=target.unit(),
            settings=plain_data({**dataclasses.asdict(settings), "seed": seed}),
            references=references_identity(references),
            options=plain_data(options),
        )

    def inputs(self) -> dict:
        """The spec as plain data (stored next to a unit, and compared on re-runs)."""
        return plain_data(dataclasses.asdict(self))

    def key(self) -> str:
        """A hash of :meth:`inputs`."""
        text = json.dumps(self.inputs(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, record: Record) -> list[str]:
        """What differs between ``record``'s inputs and this spec, as short phrases.

        Settings and options name their fields (``steps 300 → 2``); a record that lacks what
        it depended on (written by an older vital) says so. Empty exactly when they match.
        """
        recorded = _recorded_inputs(record, self.references is not None)
        if recorded is None:
            return ["inputs an older vital did not record"]
        wanted = self.inputs()
        said = []
        for name in ("method", "model", "unit", "references"):
            if recorded[name] != wanted[name]:
                said.append(
                    name if name != "method" else f"method {recorded[name]} → {wanted[name]}"
                )
        for group in ("settings", "options"):
            for key in sorted(set(recorded[group]) | set(wanted[group])):
                before, after = (inputs[group].get(key, _MISSING) for inputs in (recorded, wanted))
                if before is _MISSING or after is _MISSING or before != after:
                    said.append(f"{key} {_shown(before)} → {_shown(after)}")
        return said

    def matches(self, record: Record, ignore_seed: bool = False) -> bool:
        """Whether ``record`` is a picture of this spec.

        A record without the references' identity or the method's options (one written
        outside an atlas by an older vital) never matches: what it depended on is unknown.
        """
        recorded = _recorded_inputs(record, self.references is not None)
        if recorded is None:
            return False
        wanted = self.inputs()
        if ignore_seed:
            for spec in (recorded, wanted):
                spec["settings"] = {k: v for k, v in spec["settings"].items() if k != "seed"}
        return recorded == wanted


# A setting or option that one side lacks (shown as "(none)").
_MISSING = object()


def _shown(value: Any) -> str:
    return "(none)" if value is _MISSING else str(value)


def _recorded_inputs(record: Record, with_references: bool) -> dict | None:
    """A record's inputs in :meth:`PictureSpec.inputs`' form; None where it did not record them.

    A record without the method's options, or without the references' identity where the
    picture has references, was written by an older vital: what it depended on is unknown.
    """
    references = record.references or {}
    if record.options is None or (with_references and "identity" not in references):
        return None
    return plain_data(
        {
            "method": record.method,
            "model": record.model.get("fingerprint"),
            "unit": unit_of_record(record),
            "settings": record.settings,
            "references": references.get("identity"),
            "options": {k: v for k, v in record.options.items() if k not in NOT_OUTPUT},
        }
    )
