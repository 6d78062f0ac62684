"""Old keyword names of the Python API, still accepted with a warning that names the new one.

The API names every concept as the command line does (:mod:`vital.cli.vocabulary`); where a
keyword was renamed to match, :func:`renamed` keeps the old one working for now, as the
command line keeps its old option spellings (``--classes`` → ``--class``). The signature shows
only the new names (``inspect.signature`` follows the wrapper to the function), so the
vocabulary test sees them; each wrapped function lists its old names in ``__renamed__``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from vital.errors import VitalError, warn_at_caller

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(message: str) -> None:
    """A :class:`FutureWarning` about an old keyword, pointing at the first caller outside vital.

    The caller's own line is what to change, however many of vital's frames lie in between
    (``vital.concepts(...)`` goes through the package's ``__call__``, for one).
    """
    warn_at_caller(message, FutureWarning)


def _new_words(new: str) -> str:
    name, _, key = new.partition(".")
    return f"{name}={{'{key}': ...}}" if key else f"{name}="


def renamed(**new_names: str) -> Callable[[F], F]:
    """Accept each old keyword under its new name, with a :class:`FutureWarning`.

    ``@renamed(mode="mined_as")`` turns ``mode="patch"`` into ``mined_as="patch"``; a new
    name ``"settings.steps"`` puts the value into the ``settings`` mapping
    (``steps=5`` → ``settings={"steps": 5}``). Giving the old and the new name together is
    refused (one would be dropped unseen).
    """

    def decorate(function: F) -> F:
        positional = [
            name
            for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        ]

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in new_names.items():
                if old not in kwargs:
                    continue
                value = kwargs.pop(old)
                given = {*positional[: len(args)], *kwargs}
                warn_renamed(
                    f"{function.__name__}: {old}= is now {_new_words(new)}; the old name will go."
                )
                name, _, key = new.partition(".")
                if key:
                    if name in positional[: len(args)]:
                        raise VitalError(f"give {name}= by name with {old}= (or leave {old}= out).")
                    mapping = kwargs.get(name)
                    if mapping is not None and not isinstance(mapping, Mapping):
                        raise VitalError(
                            f"{name}= is a mapping of changes (e.g. {{'{key}': ...}}), not "
                            f"{type(mapping).__name__}; with it give {key} inside, not {old}=."
                        )
                    merged = dict(mapping or {})
                    if key in merged and merged[key] != value:
                        raise VitalError(
                            f"{old}= is the old name of {name}={{'{key}': ...}}: give one of them."
                        )
                    if value is not None:
                        merged[key] = value
                    kwargs[name] = merged if merged or mapping is not None else mapping
                elif name in given:
                    raise VitalError(f"{old}= is the old name of {name}=: give one of them.")
                else:
                    kwargs[name] = value
            return function(*args, **kwargs)

        wrapper.__renamed__ = dict(new_names)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
