"""Line charts as inline SVG, with axes, ticks and tick labels: no plotting library, no network.

:func:`line_chart` draws one or more series over a shared x axis; the y axis is linear or
logarithmic. Ticks are "nice" numbers (1, 2, 2.5 or 5 times a power of ten) covering the data.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 62, 14, 12, 40


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def nice_ticks(low: float, high: float, count: int = 5, smallest_step: float = 0.0) -> list[float]:
    """About ``count`` evenly spaced round numbers whose range covers ``[low, high]``.

    ``smallest_step`` keeps the spacing at least that (1 for step numbers).
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("tick range must be finite")
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = max((high - low) / max(count, 1), smallest_step)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step + 1e-9) * step
    last = math.ceil(high / step - 1e-9) * step
    steps = round((last - first) / step)
    return [_clean(first + i * step, step) for i in range(steps + 1)]


def _clean(value: float, step: float) -> float:
    """Round away floating-point noise (0.30000000000000004) at the step's precision."""
    digits = max(0, -math.floor(math.log10(step)) + 2)
    return round(value, digits)


def tick_label(value: float, step: float) -> str:
    """A tick's text with as many decimals as the step needs; scientific for extremes."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3g}"
    decimals = 0
    while decimals < 8 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class Series:
    """One line: points, colour, and optional dashes (``"4 3"``)."""

    points: Sequence[tuple[float, float]]
    colour: str
    label: str
    dash: str = ""


class _Axes:
    """Maps data to the plot area of a ``width`` × ``height`` chart."""

    def __init__(self, width, height, xs: list[float], ys: list[float], log_y: bool, integer_x):
        self.left, self.right = MARGIN_LEFT, width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM
        self.log_y = log_y
        self.x_ticks = nice_ticks(min(xs), max(xs), smallest_step=1.0 if integer_x else 0.0)
        self.x_low, self.x_high = min(xs), max(xs)
        if self.x_high == self.x_low:
            self.x_low, self.x_high = self.x_ticks[0], self.x_ticks[-1]
        self.x_ticks = [t for t in self.x_ticks if self.x_low <= t <= self.x_high] or [xs[0]]
        if log_y:
            exponents = [math.log10(y) for y in ys]
            low, high = math.floor(min(exponents)), math.ceil(max(exponents))
            high = high if high > low else low + 1
            self.y_ticks = [float(e) for e in range(low, high + 1)]
        else:
            self.y_ticks = nice_ticks(min(ys), max(ys))
        self.y_low, self.y_high = self.y_ticks[0], self.y_ticks[-1]

    def x(self, value: float) -> float:
        span = (self.x_high - self.x_low) or 1.0
        return self.left + (value - self.x_low) / span * (self.right - self.left)

    def y(self, value: float) -> float:
        value = math.log10(value) if self.log_y else value
        span = (self.y_high - self.y_low) or 1.0
        return self.bottom - (value - self.y_low) / span * (self.bottom - self.top)

    def y_label(self, tick: float) -> str:
        if self.log_y:
            return f"{10**tick:g}"
        step = self.y_ticks[1] - self.y_ticks[0] if len(self.y_ticks) > 1 else 1.0
        return tick_label(tick, step)

    def x_label(self, tick: float) -> str:
        step = self.x_ticks[1] - self.x_ticks[0] if len(self.x_ticks) > 1 else 1.0
        return tick_label(tick, step)


def line_chart(
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    title: str,
    width: int = 520,
    height: int = 210,
    log_y: bool = False,
    integer_x: bool = True,
) -> str:
    """An SVG chart of ``series`` with labelled axes (``log_y``: powers of ten on y).

    ``integer_x`` spaces x ticks at least 1 apart (for step numbers).

    Points that are not finite (and, on a log axis, not positive) are left out.
    """
    kept = [
        [
            (float(x), float(y))
            for x, y in s.points
            if x is not None
            and y is not None
            and math.isfinite(x)
            and math.isfinite(y)
            and (y > 0 or not log_y)
        ]
        for s in series
    ]
    xs = [x for points in kept for x, _ in points]
    ys = [y for points in kept for _, y in points]
    if not xs:
        return f"<p class='muted'>no data for {_escape(title)}</p>"
    axes = _Axes(width, height, xs, ys, log_y, integer_x)
    parts = [
        f"<line class='axis' x1='{axes.left}' y1='{axes.bottom}' x2='{axes.right}' "
        f"y2='{axes.bottom}'/>",
        f"<line class='axis' x1='{axes.left}' y1='{axes.top}' x2='{axes.left}' "
        f"y2='{axes.bottom}'/>",
    ]
    for tick in axes.x_ticks:
        x = axes.x(tick)
        parts.append(
            f"<line class='tick' x1='{x:.1f}' y1='{axes.bottom}' x2='{x:.1f}' "
            f"y2='{axes.bottom + 4}'/><text class='x-tick' x='{x:.1f}' y='{axes.bottom + 16}' "
            f"text-anchor='middle'>{_escape(axes.x_label(tick))}</text>"
        )
    for tick in axes.y_ticks:
        y = axes.bottom - (tick - axes.y_low) / ((axes.y_high - axes.y_low) or 1.0) * (
            axes.bottom - axes.top
        )
        parts.append(
            f"<line class='grid' x1='{axes.left}' y1='{y:.1f}' x2='{axes.right}' y2='{y:.1f}'/>"
            f"<line class='tick' x1='{axes.left - 4}' y1='{y:.1f}' x2='{axes.left}' "
            f"y2='{y:.1f}'/><text class='y-tick' x='{axes.left - 7}' y='{y + 4:.1f}' "
            f"text-anchor='end'>{_escape(axes.y_label(tick))}</text>"
        )
    middle = (axes.top + axes.bottom) / 2
    parts.append(
        f"<text class='axis-label' x='{(axes.left + axes.right) / 2:.1f}' y='{height - 6}' "
        f"text-anchor='middle'>{_escape(x_label)}</text>"
        f"<text class='axis-label' x='14' y='{middle:.1f}' text-anchor='middle' "
        f"transform='rotate(-90 14 {middle:.1f})'>{_escape(y_label)}</text>"
    )
    for s, points in zip(series, kept, strict=True):
        if not points:
            continue
        coordinates = " ".join(f"{axes.x(x):.1f},{axes.y(y):.1f}" for x, y in points)
        dash = f" stroke-dasharray='{s.dash}'" if s.dash else ""
        parts.append(
            f"<polyline class='series' data-label='{_escape(s.label)}' fill='none' "
            f"stroke='{s.colour}' stroke-width='1.5'{dash} points='{coordinates}'/>"
        )
    return (
        f"<svg class='curve' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
        f"role='img' aria-label='{_escape(title)}'>{''.join(parts)}</svg>"
    )
