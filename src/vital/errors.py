"""The one exception type that user mistakes raise.

The CLI prints these as a message without a traceback; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
import math
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


class VitalError(ValueError):
    """A problem with what the user asked for, with a message that says what to do."""


def plain(value: object) -> object:
    """A numpy scalar or 0-d array or tensor as the Python number it holds; else ``value``.

    ``np.int64(3)``, ``np.array(3)`` and ``torch.tensor(3)`` → 3. Numbers often come out of
    numpy or torch (an argmax, a loop over an array); records are JSON and the checks want
    Python's ``int``, so they are unwrapped where they enter. Arrays of more values are left
    as they are, to be refused (or iterated) by the caller.
    """
    item = getattr(value, "item", None)
    library = type(value).__module__.partition(".")[0]
    if item is not None and library in ("numpy", "torch") and getattr(value, "ndim", 1) == 0:
        return item()
    return value


def is_number(value: object) -> bool:
    """A finite real number, not a bool (numpy scalars: unwrap them with :func:`plain` first)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_count(value: object, name: str) -> int:
    """Refuse anything but a whole number of at least 1; ``name`` is the parameter's name.

    The message names the Python parameter (``batch_size=N``); the command line shows it with
    its option (``--batch N``), so every caller refuses a count the same way.

    Returns
    -------
    int
        The count as Python's ``int`` (numpy's integers and 0-d tensors are the count they
        hold, :func:`plain`): callers keep this one, as it may reach a JSON record.
    """
    count = plain(value)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise VitalError(f"{name}=N is a whole number of at least 1, not {value!r}.")
    if count > MAX_COUNT:  # Python's slices and torch's sizes stop there (a traceback past it)
        raise VitalError(f"{name}=N is at most 2**63 - 1, not {value!r}.")
    return count


# The largest count (sys.maxsize on 64-bit machines): `mine --batch 10**23` failed every shard
# in itertools.islice.
MAX_COUNT = 2**63 - 1


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates that look like ``word`` (for "did you mean" hints)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    if not found:
        lowered = word.lower()
        found = [c for c in candidates if lowered in c.lower()][:n]
    return found


@contextmanager
def first_forward(input_size: int) -> Iterator[None]:
    """Turn a model's failure on its first RGB input into a :class:`VitalError`.

    The first forward pass vital makes (a probe on a (1, 3, S, S) image) is where a model that
    does not take RGB images at that size fails; without this the user sees torch's traceback.
    """
    try:
        yield
    except (AssertionError, RuntimeError, ValueError, TypeError, IndexError) as error:
        # AssertionError: ViTs assert their input size (timm, torchvision)
        if isinstance(error, VitalError):
            raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
        raise VitalError(
            f"the model failed on a (1, 3, {input_size}, {input_size}) RGB image: {first}. "
            "vital feeds RGB images at the model's input size: give a model that takes them "
            "(or wrap yours), or tell vital the size it takes (vital.Model(module, "
            "preprocessing=vital.Preprocessing(input_size=S))); resolution=R does not change "
            "it, pictures are resized to that size for the model."
        ) from error


_PACKAGE = Path(__file__).resolve().parent


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first caller outside vital: the user's own line, however deep the call.

    A fixed ``stacklevel`` would point inside the package, and Python's once-per-place filter
    would then hide the same warning from the next call (another method of ``compare``).
    """
    frame, level = sys._getframe(0), 1  # stacklevel 1 is this frame
    while frame is not None and _PACKAGE in Path(frame.f_code.co_filename).resolve().parents:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
