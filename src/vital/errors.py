"""The one exception type that user mistakes raise.

The CLI prints these as a message without a traceback; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VitalError(ValueError):
    """A problem with what the user asked for, with a message that says what to do."""


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates that look like ``word`` (for "did you mean" hints)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    if not found:
        lowered = word.lower()
        found = [c for c in candidates if lowered in c.lower()][:n]
    return found
