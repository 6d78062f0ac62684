"""Settings from the environment that would stop vital before it runs, found and set aside.

tqdm reads ``TQDM_*`` variables (``TQDM_MININTERVAL=5``) when it is first imported, and one it
cannot convert (``TQDM_MININTERVAL=abc``) raises a ``ValueError`` from inside tqdm as torch
imports it: every ``vital`` command, ``--help`` included, ended in that traceback. Such a
variable changes only how progress is drawn, so it is left out instead, and the first progress
bar says so (:func:`warn_set_aside`): that is where it would have mattered, and by then the
command line shows warnings as its own one-line messages.
"""

from __future__ import annotations

import importlib
import os
import sys

TQDM_PREFIX = "TQDM_"

# The variables set aside, with their values, until a progress bar has warned about them.
_SET_ASIDE: dict[str, str] = {}


def set_aside_unreadable_tqdm_settings() -> list[str]:
    """Remove from ``os.environ`` the ``TQDM_*`` variables tqdm cannot read.

    Returns
    -------
    list of str
        The names removed (none when tqdm reads them all, or was imported before).
    """
    names = sorted(name for name in os.environ if name.startswith(TQDM_PREFIX))
    if not names or _tqdm_imports(keep=True):
        return []
    kept = {name: os.environ.pop(name) for name in names}
    unreadable = []
    for name, value in kept.items():  # one at a time: which of them does tqdm refuse?
        os.environ[name] = value
        if not _tqdm_imports():
            unreadable.append(name)
        del os.environ[name]
    for name, value in kept.items():
        if name not in unreadable:
            os.environ[name] = value
    _forget_tqdm()  # imported afresh, with the readable settings
    _SET_ASIDE.update({name: kept[name] for name in unreadable})
    return unreadable


def warn_set_aside() -> None:
    """Warn, once, about the ``TQDM_*`` variables set aside (called as a bar is made)."""
    from vital.errors import warn_at_caller

    while _SET_ASIDE:
        name, value = _SET_ASIDE.popitem()
        warn_at_caller(
            f"{name}={value!r} is not a value tqdm can read (a number of seconds or items, or "
            "a flag): progress bars leave it out; unset it or give a value."
        )


def _tqdm_imports(keep: bool = False) -> bool:
    """Whether tqdm imports with the environment as it is now (``keep``: and stays imported)."""
    if "tqdm.std" in sys.modules:
        return True
    try:
        importlib.import_module("tqdm.std")
    except (ValueError, TypeError):
        _forget_tqdm()
        return False
    if not keep:
        _forget_tqdm()
    return True


def _forget_tqdm() -> None:
    for name in [name for name in sys.modules if name == "tqdm" or name.startswith("tqdm.")]:
        del sys.modules[name]
