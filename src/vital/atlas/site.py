"""Render an atlas folder as a static site: views over its stored records, no network fetches.

Pages (all links relative, so the site reads the same from disk as from ``vital atlas serve``):

``index.html``
    The explanations, the layers, and every unit as a card, with search, layer and method
    filters and sorting by channel, by the picture's activation, or by how often the unit is
    among an explanation's most relevant channels (``?layer=features.18`` opens one layer).
``units/<slug>.html``
    One unit: its picture and RGBA view, its dataset examples (mined patches with scores and
    boxes), the activation and loss curves, the explanations it appears in, links to its JSON
    record and contact sheet, previous/next unit of its layer.
``explain/<slug>.html``
    One explanation: the image, the prediction, the heatmap, and the most relevant channels
    with their relevance, conditional heatmap, dataset examples and picture.

Every number on a page is read from a record (the unit's :class:`~vital.record.Record`, an
:class:`~vital.record.Explanation`, or the mining index); elements that show one carry
the exact value in ``data-value``.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vital.atlas.charts import Series, line_chart
from vital.atlas.folder import Atlas
from vital.atlas.thumbnails import example_entry, write_example
from vital.errors import VitalError
from vital.record import Explanation, Record


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 4) -> str:
    """A number as pages show it: ``digits`` significant digits; ``–`` when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _ratio(evidence) -> float | None:
    """How much of a channel's relevance reaches the input through it."""
    return evidence.heatmap_total / evidence.relevance if evidence.relevance else None


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _shown(value: Any, text: str | None = None, tag: str = "span", cls: str = "") -> str:
    """An element showing a recorded number, with the exact value in ``data-value``."""
    exact = json.dumps(value)
    klass = f" class='{cls}'" if cls else ""
    return (
        f"<{tag}{klass} data-value='{_escape(exact)}'>"
        f"{_escape(text if text is not None else _number(value))}</{tag}>"
    )


def _layer_of(record: Record) -> str:
    return record.target.get("layer") or "output"


def _index_of(record: Record) -> int:
    return int(record.target.get("index", -1))


def _label_of(record: Record) -> str:
    target = record.target
    if target.get("kind") == "class":
        return target.get("name") or f"class {target['index']}"
    if target.get("kind") == "channel":
        return f"channel {target['index']}"
    return target.get("name", "")


def _slug(record: Record) -> str:
    return Path(record.files["png"]).stem


def _activation(record: Record) -> float | None:
    evaluation = record.evaluation
    value = evaluation.get("activation", evaluation.get("probability"))
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _page(title: str, body: str, depth: int = 0) -> str:
    up = "../" * depth
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='generator' content='vital atlas'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_escape(title)}</title>"
        f"<link rel='stylesheet' href='{up}static/atlas.css'></head>"
        f"<body>{body}<script src='{up}static/atlas.js'></script></body></html>\n"
    )


# --- charts ----------------------------------------------------------------------------------


def loss_curve_svg(history: list[float | None], width: int = 520, height: int = 210) -> str:
    """The loss at every step, on a log axis when it spans more than a factor of 20."""
    values = [(i + 1, v) for i, v in enumerate(history) if v is not None and math.isfinite(v)]
    if len(values) < 2:
        return "<p class='muted'>no loss history</p>"
    levels = [v for _, v in values]
    logarithmic = min(levels) > 0 and max(levels) / min(levels) > 20
    chart = line_chart(
        [Series(values, "#2563eb", "loss")],
        "step",
        "loss (log scale)" if logarithmic else "loss",
        "loss curve",
        width,
        height,
        log_y=logarithmic,
    )
    return chart + (
        f"<p class='muted'>loss from {_shown(levels[0])} to {_shown(levels[-1])} over "
        f"{len(history)} steps</p>"
    )


def activation_curve_svg(
    trace: list[list[float]], reference: float | None, width: int = 520, height: int = 210
) -> str:
    """A neuron's activation over its run, with its references' mean as a dashed line."""
    pairs = [(s, v) for s, v in trace if v is not None and math.isfinite(v)]
    if len(pairs) < 2:
        return "<p class='muted'>no activation trace</p>"
    series = [Series(pairs, "#dc2626", "activation")]
    if reference is not None and math.isfinite(reference):
        steps = [pairs[0][0], pairs[-1][0]]
        series.append(Series([(s, reference) for s in steps], "#6b7280", "references", "4 3"))
    caption = (
        f"activation {_shown(pairs[0][1])} at step {pairs[0][0]:g}, {_shown(pairs[-1][1])} at "
        f"step {pairs[-1][0]:g} (each step's jittered input)"
    )
    if reference is not None:
        caption += f"; dashed: the references' mean, {_shown(reference)}"
    chart = line_chart(series, "step", "activation", "activation over the run", width, height)
    return chart + f"<p class='muted'>{caption}</p>"


# --- what the pages are made from ------------------------------------------------------------


@dataclass
class _Unit:
    record: Record
    examples: list[dict] = field(default_factory=list)
    mining: dict | None = None
    sheet: str | None = None
    explanations: list[tuple[Any, Any]] = field(default_factory=list)  # (explanation, evidence)

    @property
    def id(self) -> str:
        return self.record.unit or ""

    @property
    def page(self) -> str:
        return f"units/{_slug(self.record)}.html"


def _mined(
    atlas: Atlas, record: Record, examples: int
) -> tuple[list[dict], dict | None, str | None]:
    """A channel's dataset examples (thumbnails written into the atlas) and contact sheet."""
    database = atlas.folder / "mining.sqlite"
    if record.target.get("kind") != "channel" or not database.is_file():
        return [], None, None
    from vital.mining import contact_sheet, mined

    layer, index = record.target["layer"], record.target["index"]
    try:
        info, ranked = mined(database, record.model["fingerprint"], layer, index)
    except VitalError:
        return [], None, None
    slug = _slug(record)
    folder = atlas.folder / "examples" / slug
    entries = [example_entry(e, write_example(e, folder, atlas.ledger)) for e in ranked[:examples]]
    digest = hashlib.sha256(
        "|".join(f"{e.path}{e.box}{e.score}" for e in ranked).encode()
    ).hexdigest()[:10]
    sheet = atlas.folder / "contact-sheets" / f"{slug}-{digest}.png"
    if ranked and not (sheet.is_file() and atlas.ledger.owns(sheet)):
        try:
            image = contact_sheet(database, record.model["fingerprint"], layer, index, len(ranked))
        except (OSError, VitalError):
            image = None
        if image is not None:
            atlas.ledger.claim([sheet])
            sheet.parent.mkdir(parents=True, exist_ok=True)
            image.save(sheet)
            atlas.ledger.seal([sheet])
    mining = {"scanned": info["scanned"], "settings": info["settings"], "count": len(ranked)}
    return entries, mining, sheet.relative_to(atlas.folder).as_posix() if sheet.is_file() else None


# --- cards and pages -------------------------------------------------------------------------


def _card(unit: _Unit, position: int) -> str:
    record = unit.record
    activation = _activation(record)
    shares = sum(evidence.share for _, evidence in unit.explanations)
    relevant = len(unit.explanations)
    badge = (
        f"<span class='badge' title='among the most relevant channels of {relevant} "
        f"explanation(s)'>in {relevant} explanation{'s' if relevant != 1 else ''}</span>"
        if relevant
        else ""
    )
    return (
        f"<a class='card' href='{_escape(unit.page)}' data-unit='{_escape(unit.id)}' "
        f"data-layer='{_escape(_layer_of(record))}' data-method='{_escape(record.method)}' "
        f"data-label='{_escape(_label_of(record).lower())}' data-order='{position}' "
        f"data-channel='{_index_of(record)}' "
        f"data-activation='{activation if activation is not None else ''}' "
        f"data-relevant='{relevant}' data-share='{shares}'>"
        f"<img src='results/{_escape(record.files['png'])}' alt='{_escape(unit.id)}' "
        f"loading='lazy' width='160' height='160'>"
        f"<span class='unit'>{_escape(unit.id)}</span>"
        f"<span class='label'>{_escape(_label_of(record))} · "
        f"{'p' if record.target.get('kind') == 'class' else 'act.'} "
        f"{_shown(activation, cls='activation')}</span>{badge}</a>"
    )


def _failed_card(failure: dict) -> str:
    return (
        f"<div class='card failed' data-unit='{_escape(failure['unit'])}' "
        f"data-layer='{_escape(failure['unit'].rpartition('/')[0])}' "
        f"data-method='{_escape(failure['method'])}' data-label='{_escape(failure['target'])}' "
        f"data-order='1000000000' data-channel='-1' data-activation='' data-relevant='0' "
        f"data-share='0' title='{_escape(failure['error'])}'>"
        f"<span class='unit'>{_escape(failure['unit'])}</span>"
        f"<span class='label'>failed: {_escape(failure['error'][:120])}</span></div>"
    )


def _options(values: list[str]) -> str:
    return "".join(f"<option value='{_escape(v)}'>{_escape(v)}</option>" for v in values)


def _explanation_card(explanation, depth: int = 0) -> str:
    up = "../" * depth
    explained = explanation.explained
    channels = ", ".join(str(e.channel) for e in explanation.top)
    return (
        f"<a class='explanation-card' href='{up}{_escape(explanation.files['page'])}' "
        f"data-slug='{_escape(explanation.slug)}'>"
        f"<img src='{up}{_escape(explanation.image['file'])}' alt='image' width='96' height='96'>"
        f"<img src='{up}{_escape(explanation.heatmap['file'])}' alt='heatmap' width='96' "
        f"height='96'><span><b>{_escape(explained['name'])}</b> "
        f"(p {_shown(explained['probability'], _number(explained['probability'], 3))})<br>"
        f"<span class='muted'>{_escape(Path(explanation.image['source']).name)} · "
        f"{_escape(explanation.layer)} channels {_escape(channels)}</span></span></a>"
    )


def _index(units: list[_Unit], failures: list[dict], explanations: list) -> str:
    layers = list(dict.fromkeys(_layer_of(u.record) for u in units))
    layers += [f["unit"].rpartition("/")[0] for f in failures if f["unit"].rpartition("/")[0]]
    layers = list(dict.fromkeys(layers))
    methods = sorted({u.record.method for u in units} | {f["method"] for f in failures})
    models = sorted(
        {u.record.model["name"] for u in units} | {e.model["name"] for e in explanations}
    )
    counts = {layer: sum(_layer_of(u.record) == layer for u in units) for layer in layers}
    layer_links = "".join(
        f"<a class='chip' href='index.html?layer={_escape(layer)}'>{_escape(layer)} "
        f"<span class='muted'>{counts[layer]}</span></a>"
        for layer in layers
    )
    explained = ""
    if explanations:
        explained = (
            f"<h2>Explanations <span class='muted'>{len(explanations)}</span></h2>"
            f"<section class='explanations'>{''.join(_explanation_card(e) for e in explanations)}"
            "</section>"
        )
    cards = "".join(_card(u, i) for i, u in enumerate(units))
    cards += "".join(_failed_card(f) for f in failures)
    body = (
        f"<header><h1>vital atlas</h1><p class='muted'>{_escape(', '.join(models))} · "
        f"{len(units)} units · {len(failures)} failed · {len(explanations)} explanations</p>"
        f"<nav class='layers'>{layer_links}</nav>"
        "<div class='controls'>"
        "<input id='search' type='search' placeholder='search unit, channel or class name' "
        "aria-label='search'>"
        f"<select id='layer' aria-label='layer'><option value=''>all layers</option>"
        f"{_options(layers)}</select>"
        f"<select id='method' aria-label='method'><option value=''>all methods</option>"
        f"{_options(methods)}</select>"
        "<select id='sort' aria-label='sort'><option value='channel'>by channel</option>"
        "<option value='activation'>by activation</option>"
        "<option value='relevant'>by relevance in explanations</option></select>"
        "<span id='count'></span></div></header>"
        f"{explained}<h2>Units</h2><main id='grid'>{cards}</main>"
    )
    return _page("vital atlas", body)


def _facts(rows: list[tuple[str, str]]) -> str:
    return (
        "<table class='facts'>"
        + "".join(f"<tr><th>{_escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _examples_html(examples: list[dict], up: str) -> str:
    if not examples:
        return "<p class='muted'>no dataset examples (mine with --data)</p>"
    figures = []
    for example in examples:
        box = example["box"]
        image = (
            f"<img class='example' src='{up}{_escape(example['thumbnail'])}' alt='example' "
            "width='128' height='128'>"
            if "thumbnail" in example
            else "<div class='missing'>image not readable</div>"
        )
        patch = (
            f"<img class='patch' src='{up}{_escape(example['patch'])}' alt='patch' width='64' "
            "height='64'>"
            if "patch" in example
            else ""
        )
        figures.append(
            f"<figure class='example-figure' data-rank='{example['rank']}'>{image}{patch}"
            f"<figcaption>#{example['rank'] + 1} score {_shown(example['score'], cls='score')}"
            f" · max {_shown(example['image_score'])}<br>box {_escape(box[0])},"
            f"{_escape(box[1])} side {_escape(box[2])} of {_escape(example['crop'])}<br>"
            f"<span class='muted'>{_escape(Path(example['image']).name)}</span></figcaption>"
            "</figure>"
        )
    return f"<section class='examples'>{''.join(figures)}</section>"


def _unit_page(unit: _Unit, previous: _Unit | None, following: _Unit | None) -> str:
    record = unit.record
    files = record.files
    layer = _layer_of(record)
    nav = [
        "<a href='../index.html'>all units</a>",
        f"<a href='../index.html?layer={_escape(layer)}'>layer {_escape(layer)}</a>",
    ]
    if previous is not None:
        nav.append(
            f"<a id='previous' href='../{_escape(previous.page)}'>← {_escape(previous.id)}</a>"
        )
    if following is not None:
        nav.append(
            f"<a id='next' href='../{_escape(following.page)}'>{_escape(following.id)} →</a>"
        )
    images = (
        f"<figure><img id='visualisation' src='../results/{_escape(files['png'])}' "
        "alt='visualisation' width='320' height='320'><figcaption>VITAL picture</figcaption>"
        "</figure>"
    )
    if "rgba" in files:
        images += (
            f"<figure class='checker'><img id='rgba' src='../results/{_escape(files['rgba'])}' "
            "alt='transparency view' width='320' height='320'><figcaption>where the evidence "
            "sits (RGBA: transparent where the picture carries none)</figcaption></figure>"
        )
    links = [f"<a id='record-link' href='../results/{_escape(files['json'])}'>JSON record</a>"]
    if unit.sheet:
        links.append(f"<a id='sheet-link' href='../{_escape(unit.sheet)}'>contact sheet</a>")
    evaluation = record.evaluation
    rows = [
        ("unit", _escape(unit.id)),
        ("model", _escape(record.model["name"])),
        ("method", _escape(record.method)),
        ("seed", _shown(record.seed)),
        ("references", _escape((record.references or {}).get("summary", ""))),
        ("seconds", _shown(record.seconds, f"{record.seconds:.1f}")),
    ]
    rows += [
        (key, _shown(value) if isinstance(value, (int, float)) else _escape(value))
        for key, value in evaluation.items()
        if key != "top5"
    ]
    if record.relevance:
        rows.append(("relevance", _escape(record.relevance)))
    explained = ""
    if unit.explanations:
        items = "".join(
            f"<li><a href='../{_escape(e.files['page'])}'>{_escape(e.explained['name'])} "
            f"in {_escape(Path(e.image['source']).name)}</a>: rank {evidence.rank + 1}, share "
            f"{_shown(evidence.share, _percent(evidence.share))}</li>"
            for e, evidence in unit.explanations
        )
        explained = f"<h2>In explanations</h2><ul class='relevant-in'>{items}</ul>"
    mining = ""
    if unit.mining is not None:
        mining = (
            f"<p class='muted'>the {len(unit.examples)} best of {unit.mining['count']} mined "
            f"images ({unit.mining['scanned']} scanned); score: the best patch's mean "
            "activation, max: the crop's largest activation; the box marks the patch</p>"
        )
    examples = ""
    if record.target.get("kind") != "class":
        examples = f"<h2>Dataset examples</h2>{mining}{_examples_html(unit.examples, '../')}"
    references = "".join(
        f"<figure><img class='reference' src='../{_escape(ref['image'])}' alt='reference' "
        f"width='112' height='112'><figcaption>{_escape(ref.get('label', ''))}</figcaption>"
        "</figure>"
        for ref in (record.references or {}).get("top", [])
    )
    activation = ""
    if record.activation_trace:
        activation = "<h2>Activation</h2>" + activation_curve_svg(
            record.activation_trace, evaluation.get("reference_activation")
        )
    body = (
        f"<header><nav class='pager'>{' · '.join(nav)}</nav><h1>{_escape(unit.id)}</h1>"
        f"<p class='muted'>{_escape(_label_of(record))} · {' · '.join(links)}</p></header>"
        f"<section class='images'>{images}</section>"
        f"{examples}"
        f"{explained}{activation}"
        f"<h2>Loss</h2>{loss_curve_svg(record.loss_history)}"
        f"<h2>Record</h2>{_facts(rows)}"
        f"<h2>References used</h2><section class='references'>{references}</section>"
        f"<h2>Settings</h2><pre>{_escape(json.dumps(record.settings, indent=1))}</pre>"
    )
    return _page(unit.id, body, depth=1)


def _class_row(entry: dict) -> str:
    return (
        f"<tr><td>{_escape(entry['name'])}</td><td>{_shown(entry['index'])}</td>"
        f"<td>{_shown(entry['probability'], _number(entry['probability'], 3))}</td>"
        f"<td>{_shown(entry['logit'])}</td></tr>"
    )


def _explain_page(explanation, pages: dict[str, str]) -> str:
    up = "../"
    explained = explanation.explained
    prediction = explanation.prediction
    rows = []
    for evidence in explanation.top:
        unit = f"{explanation.layer}/{evidence.channel}"
        picture = evidence.picture
        if picture is not None:
            page = pages.get(unit)
            image = (
                f"<img class='picture' src='{up}{_escape(picture['png'])}' alt='VITAL picture' "
                "width='160' height='160'>"
            )
            if "rgba" in picture:
                image += (
                    f"<img class='picture checker' src='{up}{_escape(picture['rgba'])}' "
                    "alt='RGBA view' width='160' height='160'>"
                )
            link = f"<a class='unit-link' href='{up}{_escape(page)}'>{image}</a>" if page else image
            picture_html = (
                f"{link}<div class='muted'>{_escape(picture['source'])}, seed "
                f"{_escape(picture['seed'])}</div>"
            )
        else:
            picture_html = "<p class='muted'>no picture</p>"
        examples = _examples_html(evidence.examples[:4], up)
        layer_map = (
            f"<img class='layer-map' src='{up}{_escape(evidence.layer_map)}' alt='relevance at "
            f"the layer' width='160' height='160'>"
            if evidence.layer_map
            else "<p class='muted'>–</p>"
        )
        rows.append(
            f"<tr class='channel-row' data-channel='{evidence.channel}'>"
            f"<td class='rank'>{evidence.rank + 1}</td>"
            f"<td><a href='{up}{_escape(pages.get(unit, 'index.html'))}'>channel "
            f"{evidence.channel}</a><br>relevance {_shown(evidence.relevance, cls='relevance')}"
            f"<br>share {_shown(evidence.share, _percent(evidence.share), cls='share')}"
            f"<br><span class='muted'>activation mean {_shown(evidence.activation_mean)}, max "
            f"{_shown(evidence.activation_max)}</span></td>"
            f"<td><img class='heatmap' src='{up}{_escape(evidence.heatmap)}' alt='conditional "
            f"heatmap' width='160' height='160'><div class='muted'>at the input, through this "
            f"channel: {_shown(evidence.heatmap_total)} ({_percent(_ratio(evidence))} of its "
            "relevance)</div></td>"
            f"<td>{layer_map}</td>"
            f"<td>{picture_html}</td><td>{examples}</td></tr>"
        )
    shown_share = sum(e.share for e in explanation.top)
    reaching = explanation.heatmap.get("reaching_input")  # absent in older records
    channels = len(explanation.channels)
    top5 = "".join(_class_row(entry) for entry in explanation.top5)
    notes = "".join(f"<li>{_escape(note)}</li>" for note in explanation.notes)
    mining = explanation.mining or {}
    body = (
        f"<header><nav class='pager'><a href='../index.html'>atlas</a></nav>"
        f"<h1>Why {_escape(explanation.model['name'])} says "
        f"“{_escape(explained['name'])}”</h1>"
        f"<p class='muted'>{_escape(explanation.image['source'])} · layer "
        f"{_escape(explanation.layer)} · relevance {_escape(explanation.relevance)} · "
        f"<a id='record-link' href='{up}{_escape(explanation.files['json'])}'>JSON record</a>"
        "</p></header>"
        "<section class='images'>"
        f"<figure><img id='photo' src='{up}{_escape(explanation.image['file'])}' alt='image' "
        f"width='224' height='224'><figcaption>the centre crop the model saw "
        f"({explanation.image['crop']} px)</figcaption></figure>"
        f"<figure><img id='heatmap' src='{up}{_escape(explanation.heatmap['file'])}' "
        "alt='heatmap' width='224' height='224'><figcaption>relevance for the class at the "
        "input (red positive, blue negative)</figcaption></figure>"
        "<div><table class='facts'>"
        f"<tr><th>prediction</th><td>{_escape(prediction['name'])} "
        f"(p {_shown(prediction['probability'], _number(prediction['probability'], 3))})</td>"
        f"</tr><tr><th>explained class</th><td id='explained'>{_escape(explained['name'])} "
        f"({_shown(explained['index'])}), {'given' if explained['given'] else 'the prediction'}"
        f", rank {_shown(explained['rank'])}</td></tr>"
        f"<tr><th>logit</th><td>{_shown(explained['logit'], cls='logit')}</td></tr>"
        f"<tr><th>relevance at {_escape(explanation.layer)}</th><td>"
        f"{_shown(explanation.total, cls='total')} over {channels} channels "
        f"(absolute {_shown(explanation.absolute_total)})</td></tr>"
        f"<tr><th>reaching the input</th><td>"
        f"{_shown(reaching, _percent(reaching), cls='reaching')} of it (the heatmap's "
        f"{_shown(explanation.heatmap.get('total'))}; see the notes)</td></tr>"
        f"<tr><th>shown channels</th><td>{len(explanation.top)}, together "
        f"{_shown(shown_share, _percent(shown_share), cls='shown-share')} of the absolute "
        "relevance</td></tr></table>"
        f"<h3>Top 5</h3><table class='top5'><tr><th>class</th><th>index</th><th>p</th>"
        f"<th>logit</th></tr>{top5}</table></div></section>"
        f"<h2>The channels that carried it</h2><p class='muted'>relevance: the channel's "
        "relevance for the class, summed over positions; share: of the absolute relevance of "
        "all channels; each conditional heatmap (the relevance that flows through that channel "
        "only, at the input) and each map at the layer (the channel's relevance over the "
        "layer's positions, scaled up) is scaled to its own largest value. Pictures: VITAL "
        "on the channel's mined "
        f"images; examples: the best patches of {_escape(mining.get('scanned', 0))} scanned "
        "images.</p>"
        "<table class='channels'><tr><th>#</th><th>channel</th><th>conditional heatmap</th>"
        f"<th>at {_escape(explanation.layer)}</th><th>VITAL picture</th>"
        f"<th>dataset examples</th></tr>{''.join(rows)}</table>"
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
    )
    return _page(f"explanation: {explained['name']}", body, depth=1)


def _explanations(atlas: Atlas) -> list[Explanation]:
    found = []
    for path in sorted((atlas.folder / "explanations").glob("*.json")):
        if atlas.ledger.owns(path):
            found.append(Explanation.from_json(path.read_text("utf-8")))
    return found


def _write(atlas: Atlas, pages: dict[Path, str]) -> None:
    atlas.ledger.claim(pages)
    for path, text in pages.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text, "utf-8")
        temporary.replace(path)
    atlas.ledger.seal(pages)


def render_site(folder: str | Path, examples: int = 8) -> Path:
    """Write ``index.html``, the unit and explanation pages and the assets; return the index.

    Parameters
    ----------
    folder
        The atlas folder.
    examples
        Dataset examples shown per unit.

    Raises
    ------
    VitalError
        When the folder holds files that vital did not write where the site goes.
    """
    atlas = Atlas(folder)
    records = []
    for stored in atlas.units().values():
        path = atlas.store.folder / stored.record
        if path.is_file():
            records.append(Record.from_json(path.read_text("utf-8")))
    records.sort(key=lambda r: (_layer_of(r) != "output", _layer_of(r), _index_of(r), r.unit))
    units = [_Unit(record) for record in records]
    by_id = {unit.id: unit for unit in units}
    explanations = _explanations(atlas)
    for explanation in explanations:
        for evidence in explanation.top:
            unit = by_id.get(f"{explanation.layer}/{evidence.channel}")
            if unit is not None:
                unit.explanations.append((explanation, evidence))
    for unit in units:
        unit.examples, unit.mining, unit.sheet = _mined(atlas, unit.record, examples)
    failures = [f for f in atlas.store.failures() if f["unit"] not in by_id]

    pages: dict[Path, str] = {}
    for position, unit in enumerate(units):
        layer = _layer_of(unit.record)
        neighbours = [
            units[p] if 0 <= p < len(units) and _layer_of(units[p].record) == layer else None
            for p in (position - 1, position + 1)
        ]
        pages[atlas.folder / unit.page] = _unit_page(unit, *neighbours)
    unit_pages = {unit.id: unit.page for unit in units}
    for explanation in explanations:
        pages[atlas.folder / explanation.files["page"]] = _explain_page(explanation, unit_pages)
    index = atlas.folder / "index.html"
    pages[index] = _index(units, failures, explanations)
    for name in ("atlas.css", "atlas.js"):
        source = resources.files("vital.atlas") / "static" / name
        pages[atlas.folder / "static" / name] = source.read_text("utf-8")
    _write(atlas, pages)
    return index
