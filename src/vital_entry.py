"""The ``vital`` command's entry point, outside the package so that it runs before torch loads.

Importing :mod:`vital` takes seconds (torch, torchvision). A Ctrl-C or SIGTERM in those seconds
would otherwise end with Python's traceback of whatever module was loading (or, for SIGTERM,
with no word at all), although nothing had run yet.
"""

from __future__ import annotations

import signal
import sys

STARTING_INTERRUPTED = "interrupted while vital was starting: nothing was run."


class _Terminated(KeyboardInterrupt):
    """SIGTERM while vital loads, taken as Ctrl-C (as :func:`vital.cli.main` takes it later)."""


def _terminate(signum, frame) -> None:
    raise _Terminated


def main() -> None:
    """Load the command line, then run it (:func:`vital.cli.main`)."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an embedding runner): nothing to install
        previous = None
    try:
        from vital.cli import main as run
    except KeyboardInterrupt as interrupt:
        sys.stderr.write(f"{STARTING_INTERRUPTED}\n")
        # as a shell reports them: 128 + the signal's number
        sys.exit(143 if isinstance(interrupt, _Terminated) else 130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    run()
