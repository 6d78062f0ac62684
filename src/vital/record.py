"""The documents vital writes: the record of one visualisation and of one explanation.

One typed :class:`Record` per picture, written by the driver (:mod:`vital.driver`) and read by
the store, the atlas, the comparison and the command line; one :class:`Explanation` per explained
prediction, written by :mod:`vital.explanation` and shown by the atlas site. Each goes to and
from JSON with its schema version; numbers that are not finite (a loss that overflowed) are
written as ``null``, so every record file is valid JSON.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from vital.errors import VitalError, plain
from vital.files import printable
from vital.targets import target_from_record
from vital.version import __version__

SCHEMA_VERSION = 2
EXPLANATION_SCHEMA_VERSION = 1


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) inside it replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default=`` for vital's documents: numpy's scalars as Python numbers.

    The entry points unwrap numbers that come from numpy or torch (:func:`vital.errors.plain`);
    this is the second guard, so a number that slipped through cannot fail the record's writing
    after the work is done (the picture already saved). Anything else is refused as json would.
    """
    number = plain(value)
    if number is value:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
    return finite(number)


def model_info(model) -> dict:
    """The identity of a :class:`vital.zoo.Model` for records: name, weights, fingerprint, input."""
    return {
        "name": model.name,
        "weights": model.weights_source,
        "fingerprint": model.fingerprint,
        "preprocessing": dataclasses.asdict(model.preprocessing),
    }


def now() -> str:
    """The current UTC time, to the second, in ISO 8601."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# What an inner picture's record says it failed at (``evaluation`` flags the driver sets), in
# the words grids, overviews and atlas pages show under the picture.
SHORTFALLS = {
    "silent": "silent",
    "below_start": "below start",
}


def shortfall(evaluation: Mapping[str, Any] | None) -> str | None:
    """Why an inner picture does not show its target, in two words; ``None`` if nothing failed.

    ``"silent"``: the unit fires on neither its references, its start nor its picture;
    ``"below start"``: its activation ended below that of its starting noise, so the picture
    does not show what drives it up. Both come from the record's ``evaluation`` (the driver
    warns of each when the picture is made); a view of the picture names it with them, as
    the warning is long gone by the time someone looks at a grid or a page.
    """
    for flag, words in SHORTFALLS.items():
        if (evaluation or {}).get(flag) is True:
            return words
    return None


def told_apart(first: float, second: float, digits: int = 3) -> tuple[str, str]:
    """Two different numbers in as few significant digits (``digits`` or more) as tell them apart.

    A picture that "ended at 0.477, below the 0.477 of its start" reads as a contradiction.
    """
    for shown_digits in range(digits, 10):
        shown = f"{first:.{shown_digits}g}", f"{second:.{shown_digits}g}"
        if shown[0] != shown[1]:
            return shown
    return f"{first!r}", f"{second!r}"


class Document:
    """JSON in and out with a schema version: what every document vital writes shares.

    Subclasses are dataclasses with ``vital_version`` and ``schema`` fields, a ``to_dict`` and
    a class attribute ``version`` (their current schema) and ``kind`` (for messages).
    """

    kind: ClassVar[str] = "record"
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not self.vital_version:
            self.vital_version = __version__

    def to_json(self, indent: int | None = 2) -> str:
        """Valid JSON (no NaN or Infinity)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, default=json_default)

    @classmethod
    def known_fields(cls, data: Any) -> dict:
        """The entries of ``data`` that are fields, after checking it is a readable version."""
        if not isinstance(data, dict):
            article = "an" if cls.kind[0] in "aeiou" else "a"
            raise VitalError(f"{article} {cls.kind} is a JSON object, not {type(data).__name__}.")
        schema = data.get("schema", 1)
        if isinstance(schema, bool) or not isinstance(schema, int):
            raise VitalError(f"this {cls.kind}'s schema is {schema!r}, not a version number.")
        if schema > cls.version:
            raise VitalError(
                f"this {cls.kind} has schema {schema}, newer than this vital's {cls.version}; "
                "upgrade vital to read it."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        return {key: value for key, value in data.items() if key in names}

    @classmethod
    def from_json(cls, text: str, source: str | None = None) -> Document:
        """Parse :meth:`to_json` output.

        Parameters
        ----------
        text
            The JSON text.
        source
            Where the text was read (a file, an index's row): a damaged one is then refused
            naming it and saying what to do, not only what is wrong.
        """
        try:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise VitalError(f"the {cls.kind} is not valid JSON: {error}") from error
            return cls.from_dict(data)
        except VitalError as error:
            if source is None:
                raise
            raise VitalError(
                f"{source} is damaged: {str(error).rstrip('.')}. Move it away (or delete it) "
                "and run again."
            ) from error

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Document:
        """Read a document file; one that cannot be read is refused naming it.

        Raises
        ------
        VitalError
            When the file cannot be read or is not a readable document.
        """
        try:
            text = Path(path).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise VitalError(
                f"cannot read {printable(path)} ({error}); move it away (or delete it) and "
                "run again."
            ) from error
        return cls.from_json(text, printable(path))


def check_fields(kind: str, data: dict, types: Mapping[str, tuple[type, ...]]) -> None:
    """Refuse a field of ``data`` whose value is not of its types, naming the field.

    ``None`` is allowed where ``types`` lists ``type(None)``; a bool is never a number (JSON
    tells ``true`` from ``1``, and a seed of ``true`` is a mistake).
    """
    for name, allowed in types.items():
        if name not in data:
            continue
        value = data[name]
        wrong = not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
        if wrong:
            names = " or ".join(_TYPE_NAMES[t] for t in allowed)
            raise VitalError(
                f"the {kind}'s {name} is {_TYPE_NAMES.get(type(value), type(value).__name__)} "
                f"{_shown(value)}, not {names}; it is not a vital {kind}."
            )


def check_items(kind: str, name: str, items: list, allowed: tuple[type, ...]) -> None:
    """Refuse an item of the list field ``name`` that is not of the ``allowed`` types."""
    for position, item in enumerate(items):
        check_fields(kind, {f"{name}[{position}]": item}, {f"{name}[{position}]": allowed})


def _as_lists(value: Any) -> Any:
    """``value`` with every tuple inside it (in dicts and lists) as a list, as JSON reads it."""
    if isinstance(value, dict):
        return {key: _as_lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_lists(item) for item in value]
    return value


_NUMBER = (int, float)
_NONE = type(None)
# What each field of a record holds, as JSON gives it back (checked when one is read).
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "model": (dict,),
    "target": (dict,),
    "settings": (dict,),
    "seed": (int,),
    "evaluation": (dict,),
    "final_loss": (dict,),
    "final_total": (*_NUMBER, _NONE),
    "loss_history": (list,),
    "seconds": (*_NUMBER, _NONE),
    "batch_size": (int,),
    "device": (str,),
    "setting": (str, int, _NONE),
    "taps": (list, _NONE),
    "taps_source": (str, _NONE),
    "references": (dict, _NONE),
    "relevance": (str, _NONE),
    "options": (dict, _NONE),
    "activation_trace": (list, _NONE),
    "unit": (str, _NONE),
    "files": (dict,),
    "vital_version": (str,),
    "created": (str,),
}
_RECORD_ITEMS: dict[str, tuple[type, ...]] = {
    "loss_history": (*_NUMBER, _NONE),
    "activation_trace": (list,),
}
# Fields holding structures: tuples in them become lists when a record is made.
_STRUCTURED = ("model", "target", "settings", "evaluation", "final_loss", "loss_history")
_STRUCTURED += ("taps", "references", "options", "activation_trace", "files")

_TYPE_NAMES = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    dict: "a JSON object",
    list: "a list",
    type(None): "null",
}


def _shown(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Record(Document):
    """What ran and what came out, for one target.

    Attributes
    ----------
    method
        The method's registry name (``vital``, ``fourier`` ...).
    model
        :func:`model_info` of the explained model.
    target
        The target as data (``kind`` and its fields).
    settings
        The effective optimisation settings (after the method's defaults and the user's
        overrides; the warm-up as it ran), with this image's seed.
    setting
        The named setting they came from (VITAL: ``"fast"``, 0, 1, 2); ``None`` for a
        baseline's published defaults or settings given complete.
    seed
        The image's seed.
    evaluation
        Scores of the final image as saved (the 8-bit PNG: ``probability``, ``rank``,
        ``top5`` or ``activation``), of the float image before rounding (``float_*``) and of
        the starting image (``initial_*``).
    final_loss, final_total, loss_history
        Each loss term at the last step, the total, and the total at every step.
    seconds
        Wall time of the image's batch.
    batch_size
        Images optimised together.
    device
        Where it ran.
    taps, taps_source
        Matched feature taps with weights, and where they came from (VITAL).
    references
        Where the references came from and how many (methods that use references).
    relevance
        The relevance backend (inner neurons).
    options
        The method's own options (baselines).
    activation_trace
        About 50 ``[step, activation]`` points of the run (inner neurons).
    unit
        The unit id inside an atlas.
    files
        Files written for it, by kind (set by the store).
    vital_version, created, schema
        The library version, creation time and record schema.
    """

    method: str
    model: dict
    target: dict
    settings: dict
    seed: int
    evaluation: dict
    final_loss: dict[str, float]
    final_total: float | None
    loss_history: list[float | None]
    seconds: float
    batch_size: int
    device: str
    setting: str | int | None = None
    taps: list[dict] | None = None
    taps_source: str | None = None
    references: dict | None = None
    relevance: str | None = None
    options: dict | None = None
    activation_trace: list[list[float]] | None = None
    unit: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    vital_version: str = ""
    created: str = field(default_factory=now)
    schema: int = SCHEMA_VERSION

    version: ClassVar[int] = SCHEMA_VERSION

    def __post_init__(self) -> None:
        super().__post_init__()
        # As JSON gives them back: a record made now equals the same record read back (the
        # settings' and preprocessing's tuples would otherwise differ from the file's lists).
        for name in _STRUCTURED:
            setattr(self, name, _as_lists(getattr(self, name)))

    def to_dict(self) -> dict:
        """Plain data, with non-finite numbers as ``None``; empty optional fields left out."""
        data = dataclasses.asdict(self)
        optional = ("setting", "taps", "taps_source", "references", "relevance", "options")
        optional += ("activation_trace", "unit")
        return finite({k: v for k, v in data.items() if not (k in optional and v is None)})

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        """Read a record written by :meth:`to_dict` (this schema or the unversioned first one)."""
        known = cls.known_fields(data)
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in known
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise VitalError(f"the record lacks {', '.join(missing)}; it is not a vital record.")
        check_fields("record", known, _RECORD_TYPES)
        for name in ("loss_history", "activation_trace"):
            check_items("record", name, known.get(name) or [], _RECORD_ITEMS[name])
        check_items("record", "files", list((known.get("files") or {}).values()), (str,))
        # The target is read by every later run (the store's unit ids, the atlas's pages): one
        # of an unknown kind is refused here, naming it, not read as valid and failing there.
        target_from_record(known["target"])
        known["schema"] = SCHEMA_VERSION
        return cls(**known)


@dataclass
class ChannelEvidence:
    """One of the channels that carried the prediction.

    Attributes
    ----------
    channel, rank
        Channel index in the layer; 0 for the most relevant.
    relevance
        The channel's relevance for the class, summed over the layer's positions (signed).
    share
        ``relevance`` divided by the sum of the absolute relevances of all channels.
    activation_mean, activation_max
        The channel's mean and largest activation on the image.
    heatmap
        File of the conditional heatmap (relevance through this channel only).
    heatmap_total
        The conditional heatmap's sum over the input pixels.
    layer_map
        File of the channel's relevance at the layer itself (its positions, scaled up to the
        image): where in the layer's map the channel was relevant; ``None`` for token layers.
    examples
        Mined dataset examples, best first: ``image`` (path), ``label``, ``score`` (the best
        patch's mean activation), ``image_score`` (the crop's largest activation), ``box``
        ([left, top, side] on the centre crop), ``crop`` (its side), ``thumbnail`` and
        ``patch`` (files).
    picture
        The channel's VITAL picture: ``unit``, ``record``/``png``/``rgba`` (files),
        ``source`` (``atlas``, ``store …`` or ``computed``), ``key``; ``None`` when there
        is none.
    """

    channel: int
    rank: int
    relevance: float
    share: float
    activation_mean: float
    activation_max: float
    heatmap: str
    heatmap_total: float
    layer_map: str | None = None
    examples: list[dict] = field(default_factory=list)
    picture: dict | None = None


@dataclass
class Explanation(Document):
    """Why a model gave an image its class, in terms of one layer's channels.

    Attributes
    ----------
    slug
        File-name stem of the explanation inside the atlas.
    model
        :func:`vital.record.model_info` of the model.
    image
        ``source`` (path or description), ``identity``, ``crop`` (side of the centre crop the
        model saw), ``file`` (that crop, in the atlas).
    layer, relevance
        The explained layer and the relevance backend.
    prediction
        The top class: ``index``, ``name``, ``probability``, ``logit``.
    top5
        The five most probable classes, each like ``prediction``.
    explained
        The explained class (the prediction unless one was given): like ``prediction``, with
        ``rank`` and ``given``.
    channels
        Every channel's relevance, summed over positions, in channel order.
    total, absolute_total
        Sum of ``channels`` and of their absolute values.
    heatmap
        ``file`` of the input heatmap, its ``total`` and ``reaching_input``: that total as a
        fraction of ``total`` (the relevance at the layer); below 1 where the rules give biases
        and BatchNorm shifts below the layer no relevance (a note says so).
    top
        The most relevant channels, best first.
    mining
        Where the dataset examples came from: ``database``, ``data``, ``settings``,
        ``scanned`` (``None`` without data).
    pictures
        How pictures are made: ``method``, ``setting``, ``overrides``, ``seed``,
        ``references`` (count and mode).
    notes
        Caveats.
    files
        ``json`` (this record) and ``page``.
    """

    slug: str
    model: dict
    image: dict
    layer: str
    relevance: str
    prediction: dict
    top5: list[dict]
    explained: dict
    channels: list[float]
    total: float
    absolute_total: float
    heatmap: dict
    top: list[ChannelEvidence]
    mining: dict | None = None
    pictures: dict | None = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    vital_version: str = ""
    created: str = field(default_factory=now)
    schema: int = EXPLANATION_SCHEMA_VERSION

    kind: ClassVar[str] = "explanation"
    version: ClassVar[int] = EXPLANATION_SCHEMA_VERSION

    def to_dict(self) -> dict:
        """Plain data, with non-finite numbers as ``None``."""
        return finite(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Any) -> Explanation:
        """Read :meth:`to_dict` output."""
        known = cls.known_fields(data)
        check_fields("explanation", known, _EXPLANATION_TYPES)
        check_items("explanation", "top", known.get("top", []), (dict,))
        try:
            evidence = {f.name for f in dataclasses.fields(ChannelEvidence)}
            known["top"] = [
                ChannelEvidence(**{k: v for k, v in item.items() if k in evidence})
                for item in known.get("top", [])
            ]
            return cls(**known)
        except TypeError as error:
            raise VitalError(f"not a vital explanation record: {error}") from error


# What each field of an explanation holds, as JSON gives it back (checked when one is read).
_EXPLANATION_TYPES: dict[str, tuple[type, ...]] = {
    "slug": (str,),
    "model": (dict,),
    "image": (dict,),
    "layer": (str,),
    "relevance": (str,),
    "prediction": (dict,),
    "top5": (list,),
    "explained": (dict,),
    "channels": (list,),
    "total": (*_NUMBER, _NONE),
    "absolute_total": (*_NUMBER, _NONE),
    "heatmap": (dict,),
    "top": (list,),
    "mining": (dict, _NONE),
    "pictures": (dict, _NONE),
    "notes": (list,),
    "files": (dict,),
    "vital_version": (str,),
    "created": (str,),
}
