"""Render an atlas folder's store as a static site: no build step, no network fetches.

``index.html`` holds every unit as a card (thumbnail, unit id, label) with a search box and
layer/method filters; ``units/<slug>.html`` shows one unit: the image, its transparency view,
its references, its settings and its loss curve (inline SVG).
"""

from __future__ import annotations

import html
import json
import math
import shutil
from importlib import resources
from pathlib import Path

from vital.record import Record
from vital.store import ResultStore


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _layer_of(record: Record) -> str:
    return record.target.get("layer") or "output"


def _label_of(record: Record) -> str:
    target = record.target
    if target.get("kind") == "class":
        return target.get("name") or f"class {target['index']}"
    top = (record.references or {}).get("top") or []
    return top[0]["label"] if top and top[0].get("label") else ""


def _slug(record: Record) -> str:
    return Path(record.files["png"]).stem


def _page(title: str, body: str, depth: int = 0) -> str:
    up = "../" * depth
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_escape(title)}</title>"
        f"<link rel='stylesheet' href='{up}static/atlas.css'></head>"
        f"<body>{body}<script src='{up}static/atlas.js'></script></body></html>\n"
    )


def _scaled_points(
    xs: list[float], ys: list[float], low: float, high: float, width: int, height: int
) -> str:
    """SVG polyline points for (x, y) pairs in a ``width`` × ``height`` box with a 4 px margin."""
    first, last = xs[0], xs[-1]
    x_span, y_span = (last - first) or 1.0, (high - low) or 1.0
    return " ".join(
        f"{4 + (x - first) / x_span * (width - 8):.1f},{4 + (high - y) / y_span * (height - 8):.1f}"
        for x, y in zip(xs, ys, strict=True)
    )


def _svg(label: str, lines: str, width: int, height: int) -> str:
    return (
        f"<svg class='curve' viewBox='0 0 {width} {height}' width='{width}' height='{height}' "
        f"role='img' aria-label='{_escape(label)}'>{lines}</svg>"
    )


def loss_curve_svg(history: list[float], width: int = 480, height: int = 160) -> str:
    """The loss history as an inline SVG polyline (log scale when it spans decades)."""
    values = [v for v in history if v is not None and math.isfinite(v)]
    if len(values) < 2:
        return "<p>no loss history</p>"
    logarithmic = min(values) > 0 and max(values) / min(values) > 20
    scaled = [math.log10(v) if logarithmic else v for v in values]
    points = _scaled_points(
        list(range(len(scaled))), scaled, min(scaled), max(scaled), width, height
    )
    scale = "log scale" if logarithmic else "linear scale"
    line = f"<polyline fill='none' stroke='#2563eb' stroke-width='1.5' points='{points}'/>"
    return (
        _svg("loss curve", line, width, height)
        + f"<p class='muted'>loss from {values[0]:.4g} to {values[-1]:.4g} over {len(values)} "
        f"steps ({scale})</p>"
    )


def activation_curve_svg(
    trace: list[list[float]], reference: float | None, width: int = 480, height: int = 160
) -> str:
    """A neuron's activation over its run, with its references' mean as a dashed line."""
    pairs = [(s, v) for s, v in trace if v is not None and math.isfinite(v)]
    if len(pairs) < 2:
        return "<p>no activation trace</p>"
    steps, values = [float(s) for s, _ in pairs], [v for _, v in pairs]
    levels = values + ([reference] if reference is not None else [])
    low, high = min(0.0, *levels), max(levels)
    lines = (
        "<polyline fill='none' stroke='#dc2626' stroke-width='1.5' "
        f"points='{_scaled_points(steps, values, low, high, width, height)}'/>"
    )
    caption = f"activation {values[0]:.3g} at step {steps[0]:g}, {values[-1]:.3g} at {steps[-1]:g}"
    if reference is not None:
        level = _scaled_points([steps[0], steps[-1]], [reference] * 2, low, high, width, height)
        lines += (
            "<polyline fill='none' stroke='#6b7280' stroke-dasharray='4 3' stroke-width='1' "
            f"points='{level}'/>"
        )
        caption += f"; dashed: the references' mean, {reference:.3g}"
    return _svg("activation over the run", lines, width, height) + (
        f"<p class='muted'>{caption} (each step's jittered input)</p>"
    )


def _card(record: Record) -> str:
    slug = _slug(record)
    label = _label_of(record)
    return (
        f"<a class='card' href='units/{_escape(slug)}.html' data-unit='{_escape(record.unit)}' "
        f"data-layer='{_escape(_layer_of(record))}' data-method='{_escape(record.method)}' "
        f"data-label='{_escape(label.lower())}'>"
        f"<img src='results/{_escape(record.files['png'])}' alt='{_escape(record.unit)}' "
        f"loading='lazy' width='160' height='160'>"
        f"<span class='unit'>{_escape(record.unit)}</span>"
        f"<span class='label'>{_escape(label)}</span></a>"
    )


def _failed_card(failure: dict) -> str:
    return (
        f"<div class='card failed' data-unit='{_escape(failure['unit'])}' "
        f"data-layer='{_escape(failure['unit'].rpartition('/')[0])}' "
        f"data-method='{_escape(failure['method'])}' data-label='{_escape(failure['target'])}' "
        f"title='{_escape(failure['error'])}'><span class='unit'>{_escape(failure['unit'])}</span>"
        f"<span class='label'>failed: {_escape(failure['error'][:120])}</span></div>"
    )


def _options(values: set[str]) -> str:
    return "".join(f"<option value='{_escape(v)}'>{_escape(v)}</option>" for v in sorted(values))


def _index(records: list[Record], failures: list[dict]) -> str:
    layers = {_layer_of(r) for r in records} | {f["unit"].rpartition("/")[0] for f in failures}
    methods = {r.method for r in records} | {f["method"] for f in failures}
    models = sorted({r.model["name"] for r in records})
    cards = "".join(_card(r) for r in records) + "".join(_failed_card(f) for f in failures)
    body = (
        f"<header><h1>vital atlas</h1><p class='muted'>{_escape(', '.join(models))} · "
        f"{len(records)} units · {len(failures)} failed</p>"
        "<div class='controls'>"
        "<input id='search' type='search' placeholder='search unit or class name' "
        "aria-label='search'>"
        f"<select id='layer' aria-label='layer'><option value=''>all layers</option>"
        f"{_options(layers)}</select>"
        f"<select id='method' aria-label='method'><option value=''>all methods</option>"
        f"{_options(methods)}</select><span id='count'></span></div></header>"
        f"<main id='grid'>{cards}</main>"
    )
    return _page("vital atlas", body)


def _unit_page(record: Record) -> str:
    files = record.files
    label = _label_of(record)
    images = (
        f"<figure><img id='visualisation' src='../results/{_escape(files['png'])}' "
        "alt='visualisation'><figcaption>visualisation</figcaption></figure>"
    )
    if "rgba" in files:
        images += (
            f"<figure class='checker'><img id='rgba' src='../results/{_escape(files['rgba'])}' "
            "alt='transparency view'><figcaption>where the evidence sits (RGBA)</figcaption>"
            "</figure>"
        )
    references = "".join(
        f"<figure><img class='reference' src='../{_escape(ref['image'])}' alt='reference'>"
        f"<figcaption>{_escape(ref.get('label', ''))}</figcaption></figure>"
        for ref in (record.references or {}).get("top", [])
    )
    facts = {
        "unit": record.unit,
        "model": record.model["name"],
        "method": record.method,
        "seed": record.seed,
        "references": (record.references or {}).get("summary", ""),
        "seconds": f"{record.seconds:.1f}",
    }
    facts.update({k: v for k, v in record.evaluation.items() if k != "top5"})
    rows = "".join(f"<tr><th>{_escape(k)}</th><td>{_escape(v)}</td></tr>" for k, v in facts.items())
    settings = _escape(json.dumps(record.settings, indent=1))
    activation_section = ""
    if record.activation_trace:
        reference = record.evaluation.get("reference_activation")
        activation_section = (
            f"<h2>Activation</h2>{activation_curve_svg(record.activation_trace, reference)}"
        )
    body = (
        f"<header><a href='../index.html'>← all units</a><h1>{_escape(record.unit)}</h1>"
        f"<p class='muted'>{_escape(label)}</p></header>"
        f"<section class='images'>{images}</section>"
        f"<h2>Top references</h2><section class='references'>{references}</section>"
        f"<h2>Loss</h2>{loss_curve_svg(record.loss_history)}"
        f"{activation_section}"
        f"<h2>Record</h2><table>{rows}</table>"
        f"<h2>Settings</h2><pre>{settings}</pre>"
    )
    return _page(record.unit, body, depth=1)


def render_site(folder: str | Path) -> Path:
    """Write ``index.html``, one page per unit and the static assets; return the index path."""
    folder = Path(folder)
    store = ResultStore(folder / "results", index=folder / "atlas.sqlite")
    records = [r for r in store.records() if r.unit]
    (folder / "units").mkdir(parents=True, exist_ok=True)
    static = folder / "static"
    static.mkdir(exist_ok=True)
    for name in ("atlas.css", "atlas.js"):
        with resources.as_file(resources.files("vital.atlas") / "static" / name) as source:
            shutil.copyfile(source, static / name)
    for record in records:
        (folder / "units" / f"{_slug(record)}.html").write_text(_unit_page(record), "utf-8")
    index = folder / "index.html"
    index.write_text(_index(records, store.failures()), "utf-8")
    return index
