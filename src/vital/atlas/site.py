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
``concepts/<set>/index.html``
    A class's concepts at a layer (:mod:`vital.concepts.atlas`): the explained share and the
    residual, the concepts ranked by share with their pictures, the deletion and insertion
    curves against channels.
``concepts/<set>/concept-<k>.html``
    One concept: its picture and transparency view, its coefficient on the picture against its
    references', its share, its maps on the images, its examples, the direction's top channels
    (linked to their unit pages), the picture's curves and record.

The pages are Jinja2 templates in ``vital/atlas/templates`` with autoescaping (a class name is
text, whatever characters it holds): ``base.html`` is the layout, ``macros.html`` the shared
pieces, and each page kind one template extending the layout, rendered by :func:`render_page`.
A new page kind is one template and one :func:`render_page` call.

Every number on a page is read from a record (the unit's :class:`~vital.record.Record`, an
:class:`~vital.record.Explanation`, a ``concepts.json``, or the mining index); elements that
show one carry the exact value in ``data-value``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from vital.atlas.charts import Series, line_chart
from vital.atlas.folder import Atlas, StoredConcepts
from vital.atlas.thumbnails import example_entry, write_example
from vital.errors import VitalError, warn_at_caller
from vital.files import exclusive, printable, save_image, write_file
from vital.record import Explanation, Record, shortfall, told_apart

_ENVIRONMENT = Environment(
    loader=PackageLoader("vital.atlas", "templates"),
    autoescape=True,  # every value from a record, a label or a file name is text, never markup
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def _number(value: Any, digits: int = 4) -> str:
    """A number as pages show it: ``digits`` significant digits; ``–`` when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


_ENVIRONMENT.filters.update(
    number=_number,
    percent=_percent,
    exact=lambda value, indent=None: json.dumps(value, indent=indent),  # data-value, settings
    filename=lambda path: Path(path).name,
    step=lambda value: f"{value:g}",
    # A concepts record names each image by its maps' stem, "000-coffee": the image is "coffee".
    image_name=lambda stem: stem.split("-", 1)[-1],
    shortfall=shortfall,
    # the picture's and its start's activations, as many digits as tell them apart (at least 4)
    told_apart=lambda first, second: told_apart(first, second, digits=4),
)


def render_page(template: str, depth: int = 0, **context: Any) -> str:
    """Render the page kind ``template`` (it extends ``base.html``) with ``context``.

    Parameters
    ----------
    template
        A template in ``vital/atlas/templates``.
    depth
        Folders between the page and the atlas folder (``index.html``: 0, ``units/``: 1).
    **context
        What the template shows; values are escaped unless they are :class:`markupsafe.Markup`.
    """
    return _ENVIRONMENT.get_template(template).render(up="../" * depth, **context)


def _macro(name: str):
    return getattr(_ENVIRONMENT.get_template("macros.html").module, name)


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


# --- charts ----------------------------------------------------------------------------------


def loss_curve_svg(history: list[float | None], width: int = 520, height: int = 210) -> str:
    """The loss at every step, on a log axis when it spans more than a factor of 20."""
    values = [(i + 1, v) for i, v in enumerate(history) if v is not None and math.isfinite(v)]
    if len(values) < 2:
        return _macro("loss_curve")(None, None, None, len(history))
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
    # line_chart escapes every text it draws: its SVG is markup.
    return _macro("loss_curve")(Markup(chart), levels[0], levels[-1], len(history))


def activation_curve_svg(
    trace: list[list[float]], reference: float | None, width: int = 520, height: int = 210
) -> str:
    """A neuron's activation over its run, with its references' mean as a dashed line."""
    pairs = [(s, v) for s, v in trace if v is not None and math.isfinite(v)]
    if len(pairs) < 2:
        return _macro("activation_curve")(None, None, None, None)
    series = [Series(pairs, "#dc2626", "activation")]
    if reference is not None and math.isfinite(reference):
        steps = [pairs[0][0], pairs[-1][0]]
        series.append(Series([(s, reference) for s in steps], "#6b7280", "references", "4 3"))
    chart = line_chart(series, "step", "activation", "activation over the run", width, height)
    return _macro("activation_curve")(Markup(chart), pairs[0], pairs[-1], reference)


def fidelity_svg(fidelity: dict | None, kind: str, width: int = 420, height: int = 210) -> str:
    """The class logit as the top n concepts (red) or channels (grey) are deleted or kept."""
    if not fidelity:
        return Markup("<p class='muted'>no deletion or insertion curves recorded</p>")
    series = [
        Series(list(enumerate(fidelity[f"{what}_{kind}"])), colour, what, dash)
        for what, colour, dash in (("concepts", "#dc2626", ""), ("channels", "#6b7280", "4 3"))
    ]
    title = {"deletion": "deleting the top n", "insertion": "keeping only the top n"}[kind]
    # line_chart escapes every text it draws: its SVG is markup.
    return Markup(line_chart(series, "n", "class logit", title, width, height))


# --- what the pages are made from ------------------------------------------------------------


TOP_CHANNELS = 8  # a concept's largest direction weights shown


@dataclass
class _Concepts:
    """One concept set: its ``concepts.json``, directions and pictures' records."""

    stored: StoredConcepts
    record: dict
    directions: np.ndarray | None
    pictures: dict[int, Record]  # concept index → its picture's record

    @property
    def folder(self) -> str:
        return self.stored.folder

    @property
    def page(self) -> str:
        return f"{self.folder}/index.html"

    @property
    def name(self) -> str:
        return self.record["class"]["name"]

    @property
    def layer(self) -> str:
        return self.record["layer"]

    @property
    def concepts(self) -> list[dict]:
        return self.record["concepts"]

    @staticmethod
    def concept_page(entry: dict) -> str:
        """A concept's page, relative to the set's folder."""
        return f"concept-{entry['index']}.html"

    def held(self, entry: dict) -> float | None:
        """The part of the direction's squared length its :meth:`top_channels` hold."""
        if self.directions is None or entry["index"] >= len(self.directions):
            return None
        row = self.directions[entry["index"]]
        top = [c for c, _ in self.top_channels(entry)]
        total = float((row**2).sum())
        return float((row[top] ** 2).sum()) / total if total > 0 else None

    def top_channels(self, entry: dict) -> list[tuple[int, float]]:
        """The direction's largest weights (by size; a signed layer's may be negative)."""
        if self.directions is None or entry["index"] >= len(self.directions):
            return []
        row = self.directions[entry["index"]]
        order = np.argsort(-np.abs(row), kind="stable")[:TOP_CHANNELS]
        return [(int(c), float(row[c])) for c in order if row[c] != 0]


def _concept_sets(atlas: Atlas) -> list[_Concepts]:
    """The atlas's current concept sets whose record vital wrote and nobody changed."""
    found = []
    for stored in atlas.concept_sets().values():
        folder = atlas.folder / stored.folder
        path = folder / "concepts.json"
        if not path.is_file():
            continue
        if not atlas.ledger.owns(path):
            _skipped(f"the concepts {printable(path)}: it was changed since vital wrote it")
            continue
        record = json.loads(path.read_text("utf-8"))
        directions = folder / record.get("files", {}).get("directions", "directions.npy")
        pictures = {}
        for entry in record["concepts"]:
            picture = folder / entry["record"] if entry.get("record") else None
            if picture is None or not picture.is_file():
                continue
            if not atlas.ledger.owns(picture):
                _skipped(f"the picture {printable(picture)}: it was changed since vital wrote it")
                continue
            try:
                pictures[entry["index"]] = Record.from_file(picture)
            except VitalError as error:
                warn_at_caller(f"leaving out of the atlas's pages: {error}")
        found.append(
            _Concepts(
                stored, record, np.load(directions) if directions.is_file() else None, pictures
            )
        )
    return found


@dataclass
class _Unit:
    record: Record
    examples: list[dict] = field(default_factory=list)
    mining: dict | None = None
    sheet: str | None = None
    explanations: list[tuple[Any, Any]] = field(default_factory=list)  # (explanation, evidence)
    # A class: its concept sets; a channel: the concepts it is among the top channels of.
    concepts: list[tuple[_Concepts, dict | None]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.record.unit or ""

    @property
    def page(self) -> str:
        return f"units/{_slug(self.record)}.html"

    # What a card and a unit page show (the templates read these).
    @property
    def layer(self) -> str:
        return _layer_of(self.record)

    @property
    def label(self) -> str:
        return _label_of(self.record)

    @property
    def channel(self) -> int:
        return _index_of(self.record)

    @property
    def activation(self) -> float | None:
        return _activation(self.record)

    @property
    def share(self) -> float:
        """Its summed share of the relevance in the explanations it is among the top of."""
        return sum(evidence.share for _, evidence in self.explanations)


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
            save_image(sheet, image)
            atlas.ledger.seal([sheet])
    mining = {"scanned": info["scanned"], "settings": info["settings"], "count": len(ranked)}
    return entries, mining, sheet.relative_to(atlas.folder).as_posix() if sheet.is_file() else None


# --- pages ---------------------------------------------------------------------------------


def _index(
    units: list[_Unit], failures: list[dict], explanations: list, concept_sets: list[_Concepts]
) -> str:
    layers = [u.layer for u in units]
    layers += [f["unit"].rpartition("/")[0] for f in failures if f["unit"].rpartition("/")[0]]
    layers = list(dict.fromkeys(layers))
    return render_page(
        "index.html",
        units=units,
        failures=failures,
        explanations=explanations,
        concept_sets=concept_sets,
        layers=layers,
        counts={layer: sum(u.layer == layer for u in units) for layer in layers},
        methods=sorted({u.record.method for u in units} | {f["method"] for f in failures}),
        models=sorted(
            {u.record.model["name"] for u in units}
            | {e.model["name"] for e in explanations}
            | {c.record["model"] for c in concept_sets}
        ),
    )


def _unit_page(unit: _Unit, previous: _Unit | None, following: _Unit | None) -> str:
    record = unit.record
    activation = None
    if record.activation_trace:
        activation = activation_curve_svg(
            record.activation_trace, record.evaluation.get("reference_activation")
        )
    return render_page(
        "unit.html",
        depth=1,
        unit=unit,
        previous=previous,
        following=following,
        activation=activation,
        loss=loss_curve_svg(record.loss_history),
    )


def _concept_pages(found: _Concepts, pages: dict[str, str]) -> dict[str, str]:
    """The set's overview and one page per concept, by their paths in the atlas."""
    written = {
        found.page: render_page(
            "concepts.html",
            depth=2,
            found=found,
            pages=pages,
            deletion=fidelity_svg(found.record.get("fidelity"), "deletion"),
            insertion=fidelity_svg(found.record.get("fidelity"), "insertion"),
        )
    }
    entries = found.concepts
    for position, entry in enumerate(entries):
        picture = found.pictures.get(entry["index"])
        activation = loss = None
        if picture is not None:
            activation = activation_curve_svg(
                picture.activation_trace, picture.evaluation.get("reference_activation")
            )
            loss = loss_curve_svg(picture.loss_history)
        written[f"{found.folder}/{found.concept_page(entry)}"] = render_page(
            "concept.html",
            depth=2,
            found=found,
            entry=entry,
            picture=picture,
            channels=found.top_channels(entry),
            held=found.held(entry),
            pages=pages,
            previous=entries[position - 1] if position > 0 else None,
            following=entries[position + 1] if position + 1 < len(entries) else None,
            activation=activation,
            loss=loss,
        )
    return written


def _explain_page(explanation: Explanation, pages: dict[str, str]) -> str:
    return render_page("explanation.html", depth=1, explanation=explanation, pages=pages)


def _explanations(atlas: Atlas) -> list[Explanation]:
    """The explanations whose record vital wrote and nobody changed (the others are named)."""
    found = []
    for path in sorted((atlas.folder / "explanations").glob("*.json")):
        if not atlas.ledger.owns(path):
            _skipped(f"the explanation {printable(path)}: it was changed since vital wrote it")
            continue
        try:
            found.append(Explanation.from_file(path))
        except VitalError as error:
            warn_at_caller(f"leaving out of the atlas's pages: {error}")
    return found


def _skipped(what: str, gone: bool = False) -> None:
    """Warn, in one line, that ``what`` is left out of the pages, and what to do about it."""
    advice = (
        "run the build again to make it anew"
        if gone
        else "move the file away (or delete it) and run the build again to make it anew"
    )
    warn_at_caller(f"leaving out of the atlas's pages {what.rstrip('.')}; {advice}.")


# Held while pages are written and sealed: two builds into one folder at once (threads or
# processes) could otherwise seal a page with one's digest after the other had replaced it, and
# the next build would refuse the page as changed since vital wrote it.
PAGES_LOCK = ".vital-pages.lock"


def _write(atlas: Atlas, pages: dict[Path, str]) -> None:
    with exclusive(atlas.folder / PAGES_LOCK, "writing of this atlas's pages"):
        atlas.ledger.claim(pages)
        for path, text in pages.items():
            write_file(path, text)
        atlas.ledger.seal(pages)


def render_site(folder: str | Path, examples: int = 8) -> Path:
    """Write ``index.html``, the unit, explanation and concept pages, the assets; return the index.

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
        problem = atlas.unit_problem(stored)
        if problem is None:
            records.append(Record.from_file(atlas.store.folder / stored.record))
        else:
            _skipped(f"{stored.unit}: {problem}", gone=problem.endswith("is gone"))
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
    concept_sets = _concept_sets(atlas)
    for found in concept_sets:
        owner = by_id.get(f"class/{found.record['class']['index']}")
        if owner is not None:
            owner.concepts.append((found, None))
        for entry in found.concepts:
            for channel, _ in found.top_channels(entry):
                unit = by_id.get(f"{found.layer}/{channel}")
                if unit is not None:
                    unit.concepts.append((found, entry))
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
    for found in concept_sets:
        for path, text in _concept_pages(found, unit_pages).items():
            pages[atlas.folder / path] = text
    index = atlas.folder / "index.html"
    pages[index] = _index(units, failures, explanations, concept_sets)
    for name in ("atlas.css", "atlas.js"):
        source = resources.files("vital.atlas") / "static" / name
        pages[atlas.folder / "static" / name] = source.read_text("utf-8")
    _write(atlas, pages)
    return index
