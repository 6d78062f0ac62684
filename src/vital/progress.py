"""Progress bars that suit where they are shown: tqdm's bar on a terminal, plain lines in a log.

On a terminal (and in a notebook) a progress bar redraws itself in place with carriage
returns; that is :mod:`tqdm.auto`'s bar, unchanged. Written to a file (a batch job's log,
``vital ... 2> log``, CI), the same redraws pile up into one enormous line. There the bar
writes plain, newline-terminated lines instead, which read like a log::

    optimising vital batch 1/4: 0/300 step (0%), 00:00 elapsed, ? left, ?step/s
    optimising vital batch 1/4: 32/300 step (11%), 00:30 elapsed, 04:11 left, 1.07s/step, loss=0.7
    optimising vital batch 1/4: 300/300 step (100%), 04:41 elapsed, 00:00 left, 1.07s/step, loss=0.6

A line is written when the bar starts, when it closes (also on an error: the line then says
how far it got) and in between at most once every :data:`LOG_INTERVAL` seconds, so that a log
grows with wall-clock time, not with the amount of work, and a silent log means a stuck job.
``TQDM_MININTERVAL`` (tqdm's own setting) changes that interval.

The lines come from a tqdm subclass that overrides :meth:`~tqdm.std.tqdm.display`, the
extension point tqdm's own front ends (``tqdm.rich``, ``tqdm.gui``) use, so counting, rates,
ETA and postfixes are tqdm's.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import IO, Any, TypeVar

from tqdm.auto import tqdm as terminal_tqdm
from tqdm.std import tqdm as std_tqdm

from vital.environment import warn_set_aside

# Seconds between two lines of a bar written to a file (besides its first and last line).
LOG_INTERVAL = 30.0

# One log line: what, how far, time spent and left, rate, and the bar's postfix (", loss=…").
LINE_FORMAT = (
    "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {elapsed} elapsed, "
    "{remaining} left, {rate_fmt}{postfix}"
)

# The same for a count whose end is not known in advance.
OPEN_LINE_FORMAT = "{desc}: {n_fmt} {unit}, {elapsed} elapsed, {rate_fmt}{postfix}"


class LogLines(std_tqdm):
    """A tqdm bar that writes one plain line per report, for streams that are not terminals.

    It never writes a carriage return or a cursor movement, so nested or consecutive bars
    each write whole lines, told apart by their description.
    """

    monitor_interval = 0  # no monitor thread: the interval is kept by `display` below

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # ``gui=True`` is how tqdm's own front ends say "no screen printer: I draw myself".
        super().__init__(*args, **{**kwargs, "gui": True})
        self._written_at = -float("inf")
        self._written_n: float | None = None
        if not self.disable:
            self._write_line()

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write a line if the last one is at least ``mininterval`` seconds old."""
        if self._time() - self._written_at >= self.mininterval:
            self._write_line()
        return True

    def clear(self, *_: Any, **__: Any) -> None:
        """Nothing to clear: lines already written stay in the log."""

    def close(self) -> None:
        """Write the last line (unless the previous one already said it all) and close."""
        if not getattr(self, "disable", True) and self._written_n != self.n:  # as tqdm's close
            self._ema_dt = lambda: None  # the overall rate, as tqdm's own last line shows
            self._write_line()
        super().close()

    def _write_line(self) -> None:
        form = LINE_FORMAT if self.total else OPEN_LINE_FORMAT
        line = self.format_meter(**{**self.format_dict, "bar_format": form, "ncols": None})
        self.fp.write(line.replace(",  ", ", ") + "\n")  # tqdm pads a rate to 5 characters
        self.fp.flush()
        self._written_at, self._written_n = self._time(), self.n


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` shows tqdm's redrawn bar correctly: a terminal or a notebook."""
    if "ipykernel" in sys.modules:  # Jupyter renders carriage returns (or tqdm a widget)
        return True
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    total: float | None,
    label: str,
    *,
    disable: bool = False,
    **options: Any,
) -> std_tqdm:
    """A progress bar: :mod:`tqdm.auto`'s on a terminal, :class:`LogLines` elsewhere.

    Parameters
    ----------
    total
        The count at which the work is done.
    label
        What is counted, as log lines name it (``"atlas"``, ``"mining stage 1"``); on a
        terminal the bar shows ``options["desc"]`` as it always did.
    disable
        Show nothing at all (``progress=False``).
    **options
        tqdm's options (``desc``, ``unit``, ``initial``, ``leave``, ``file``, …), passed on
        unchanged to the terminal bar.

    Returns
    -------
    tqdm.std.tqdm
        The bar; use it as any tqdm bar (``update``, ``set_postfix``, ``close``).
    """
    warn_set_aside()
    if disable or is_terminal(options.get("file") or sys.stderr):
        return terminal_tqdm(total=total, disable=disable, **options)
    interval = os.environ.get("TQDM_MININTERVAL")
    options = {
        **options,
        "desc": label,
        # Every update asks the clock (cheap next to a step or a batch), so that no line is
        # later than the interval however the rate changes.
        "miniters": 1,
        "mininterval": float(interval) if interval else LOG_INTERVAL,
    }
    return LogLines(total=total, **options)


# --- the references' passes before the first step --------------------------------------------

_Value = TypeVar("_Value")

# What counts a reference view passed through the model while a run prepares (None: nothing).
_VIEWS_COUNTER: ContextVar[Callable[[int], None] | None] = ContextVar("vital_views", default=None)


@contextlib.contextmanager
def counting_views(
    preparation: AbstractContextManager[_Value], enabled: bool, label: str = "references"
) -> Iterator[_Value]:
    """Enter ``preparation`` under a progress bar of the reference views it passes to the model.

    Preparing a run's references (an inner unit's: a forward and a relevance pass per view, for
    every stage; the ranking of candidate patches) takes from seconds to minutes before the
    first step, and a run that says nothing for that long looks stuck. The code that passes
    views calls :func:`views_done`; the bar appears with the first view it counts (none when
    everything came from the cache) and closes once ``preparation`` is entered, which stays
    entered until this block ends.
    """
    bar: std_tqdm | None = None

    def count(views: int) -> None:
        nonlocal bar
        if bar is None:
            bar = progress_bar(None, label, desc=label, unit="view")
        bar.update(views)

    with contextlib.ExitStack() as stack:
        token = _VIEWS_COUNTER.set(count if enabled else None)
        try:
            value = stack.enter_context(preparation)
        finally:
            _VIEWS_COUNTER.reset(token)
            if bar is not None:
                bar.close()
        yield value


def views_done(views: int) -> None:
    """Count ``views`` reference views as passed through the model (see :func:`counting_views`)."""
    count = _VIEWS_COUNTER.get()
    if count is not None:
        count(views)
