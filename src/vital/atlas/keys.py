"""The spec of a picture before its method runs, and what changed between two specs.

:class:`~vital.specs.PictureSpec` (everything a picture depends on) is made here from what a
user asks for: the method's defaults for the model under the user's overrides, as
:func:`vital.driver.resolve_settings` gives them. The atlas keys its units by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vital.driver import resolve_settings
from vital.methods import DEFAULT_METHOD, get_method
from vital.references import ReferenceSet
from vital.specs import PictureSpec, references_identity, unit_of_record
from vital.targets import Target
from vital.zoo import Model

__all__ = ["PictureSpec", "differences", "picture_spec", "references_identity", "unit_of_record"]


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
    return PictureSpec.of(chosen, model.fingerprint, target, settings, seed, references)


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
