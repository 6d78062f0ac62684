"""What to visualise: an output class, an inner channel, or a concept direction."""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vital.errors import VitalError, plain


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


@dataclass(frozen=True)
class ClassTarget:
    """Output unit ``index`` of the classifier; ``name`` is for display only."""

    index: int
    name: str = ""

    @property
    def layer(self) -> None:
        """Class targets live at the output, not in a named layer."""
        return None

    def unit(self) -> str:
        """Stable id for stores and atlases, e.g. ``class/967``."""
        return f"class/{self.index}"

    def slug(self) -> str:
        """File-name stem, e.g. ``class-967-espresso``."""
        return f"class-{self.index}" + (f"-{_slug(self.name)}" if self.name else "")

    def describe(self) -> str:
        """Human-readable label."""
        if not self.name or self.name in (f"class {self.index}", str(self.index)):
            return f"class {self.index}"  # a model without class names: the number once
        return f"{self.name} ({self.index})"


class _Inner:
    """What channels and directions share: a layer, and names built from a short label."""

    layer: str

    def _label(self) -> tuple[str, str, str]:
        """(unit suffix, file-name suffix, description suffix)."""
        raise NotImplementedError

    def unit(self) -> str:
        """Stable id for stores and atlases, e.g. ``layer4.2/1935`` or ``layer3/striped``."""
        return f"{self.layer}/{self._label()[0]}"

    def slug(self) -> str:
        """File-name stem, e.g. ``layer4.2-ch1935``."""
        return f"{_slug(self.layer)}-{self._label()[1]}"

    def describe(self) -> str:
        """Human-readable label."""
        return f"{self.layer} {self._label()[2]}"


@dataclass(frozen=True)
class Channel(_Inner):
    """Channel ``index`` of the inner layer ``layer`` (a module name)."""

    layer: str
    index: int

    def __post_init__(self) -> None:
        _check_layer_name(self.layer)
        # numpy's integers and 0-d tensors (an argsort, a loop over an array) are the index
        # they hold, kept as Python's int: records are JSON.
        index = plain(self.index)
        if isinstance(index, bool) or not isinstance(index, int):
            raise VitalError(
                f"a channel index is a whole number, not {type(self.index).__name__} "
                f"({self.index!r})."
            )
        object.__setattr__(self, "index", index)

    def _label(self) -> tuple[str, str, str]:
        return str(self.index), f"ch{self.index}", f"channel {self.index}"

    def vector(self, channels: int) -> np.ndarray:
        """The one-hot direction of this channel."""
        one_hot = np.zeros(channels, dtype=np.float32)
        one_hot[self.index] = 1.0
        return one_hot


@dataclass(frozen=True)
class Direction(_Inner):
    """A concept: a direction ``values`` in the channel space of ``layer``."""

    layer: str
    values: tuple[float, ...]
    name: str = "direction"

    def __post_init__(self) -> None:
        _check_layer_name(self.layer)
        try:
            values = tuple(float(v) for v in self.values)
        except (TypeError, ValueError) as error:
            shape = getattr(self.values, "shape", None)  # an array's repr runs over lines
            what = f"an array of shape {tuple(shape)}" if shape is not None else repr(self.values)
            raise VitalError(
                f"a direction is one vector of numbers over the layer's channels, not {what}."
            ) from error
        object.__setattr__(self, "values", values)
        if not isinstance(self.name, str) or not self.name:
            raise VitalError(f"a direction's name is a non-empty text, not {self.name!r}.")

    def _label(self) -> tuple[str, str, str]:
        return self.name, _slug(self.name), self.name

    def vector(self, channels: int) -> np.ndarray:
        """The direction as an array (its length must equal the layer's channels)."""
        return np.asarray(self.values, dtype=np.float32)


Target = ClassTarget | Channel | Direction

# The kinds of target a record may hold (``record.target["kind"]``), and the fields each needs.
TARGET_KINDS = ("class", "channel", "direction")
_TARGET_FIELDS = {
    "class": ("index",),
    "channel": ("layer", "index"),
    "direction": ("layer", "name"),
}


# A refused object is shown up to this many characters: a Result's repr holds its pixels
# (3,800 characters for one 64 px picture), which buried the sentence around it.
_SHOWN = 80


def _described(value: object) -> str:
    """``value`` named in a refusal: its type and a short repr, or what to give instead.

    A finished :class:`~vital.store.Result` or a :class:`~vital.record.Record` given where a
    target goes (to make a picture again) is pointed at the target it holds.
    """
    kind = type(value).__name__
    held = getattr(value, "target", None)
    if isinstance(held, (ClassTarget, Channel, Direction)):  # a Result
        return f"a {kind} (a finished picture): give its target (result.target)"
    if isinstance(held, Mapping) and "kind" in held:  # a Record
        return (
            f"a {kind}: give the target it holds (vital.targets.target_from_record(record.target))"
        )
    shown = repr(value)
    if len(shown) > _SHOWN:
        shown = f"{shown[: _SHOWN - 1]}…"
    return f"{kind} ({shown})"


def target_record(target: Target) -> dict:
    """A target as records store it (``record.target``); :func:`target_from_record` reads it."""
    if isinstance(target, ClassTarget):
        return {"kind": "class", "index": target.index, "name": target.name}
    if isinstance(target, Channel):
        return {"kind": "channel", "layer": target.layer, "index": target.index}
    return {
        "kind": "direction",
        "layer": target.layer,
        "name": target.name,
        "direction": [float(v) for v in target.values],
    }


def target_from_record(data: Mapping[str, Any]) -> Target:
    """The target of a record's ``target`` field (as :func:`target_record` wrote it).

    Raises
    ------
    VitalError
        When ``data`` is not a target :func:`target_record` could have written: an unknown
        ``kind`` (a hand edit, or a record of another program), a missing or mistyped field.
        A record is read by every later run (the store, the atlas, ``explain``); refused here,
        it is named once, not taken as valid and failing deep inside one of them.
    """
    if not isinstance(data, Mapping):
        raise VitalError(f"a record's target is a JSON object, not {type(data).__name__}.")
    kind = data.get("kind")
    if kind not in TARGET_KINDS:
        raise VitalError(
            f"a record's target.kind is {kind!r}, not a kind vital knows "
            f"({', '.join(TARGET_KINDS)})."
        )
    missing = [name for name in _TARGET_FIELDS[kind] if name not in data]
    if missing:
        raise VitalError(f"a record's {kind} target lacks {', '.join(missing)}.")
    index = data.get("index")
    if kind != "direction" and (isinstance(index, bool) or not isinstance(index, int)):
        # int() would take 1.5 as 1 and true as 1: another unit than the one recorded
        raise VitalError(f"a record's target.index is a whole number, not {index!r}.")
    if kind == "class":
        name = data.get("name") or ""
        if not isinstance(name, str):
            raise VitalError(f"a record's target.name is text, not {name!r}.")
        return ClassTarget(index, name)
    if kind == "channel":
        return Channel(data["layer"], index)
    values = data.get("direction") or ()
    if not isinstance(values, (list, tuple)):
        raise VitalError(f"a record's target.direction is a list of numbers, not {values!r}.")
    return Direction(data["layer"], tuple(values), data["name"])


def _check_layer_name(layer: object) -> None:
    if not isinstance(layer, str) or not layer:
        raise VitalError(f"a layer is named by its module name (text), not {layer!r}.")


def class_target(model, query: ClassTarget | int | str) -> ClassTarget:
    """Resolve ``967``, ``"espresso"``, ``"n07920052"`` or a ``ClassTarget`` for ``model``."""
    if isinstance(query, ClassTarget):
        index = plain(query.index)
        if isinstance(index, bool) or not isinstance(index, int):
            raise VitalError(f"a ClassTarget's index is a whole number, not {query.index!r}.")
        query = ClassTarget(index, query.name)  # Python's int: records are JSON
        if model.labels is not None:
            model.labels.resolve(query.index)  # in range, or one line saying the range
            _check_named_as(model.labels, query)
        return query
    query = plain(query)  # numpy's integers and 0-d tensors, as an argmax gives them
    if isinstance(query, numbers.Integral) and not isinstance(query, bool):
        query = int(query)
    if isinstance(query, float):  # from a float array or tensor, or a division
        raise VitalError(
            f"a class index is a whole number, not float ({query!r}): give an int (or an "
            "integer array or tensor)."
        )
    if isinstance(query, bool) or not isinstance(query, (int, str)):
        raise VitalError(f"a class is an index, a name or a WordNet id, not {_described(query)}.")
    labels = model.labels
    if labels is None and hasattr(model, "probed_labels"):
        labels = model.probed_labels()  # a head that is no nn.Linear: its output tells
    if labels is None:
        raise VitalError("this model has no classifier output; visualise channels instead.")
    index = labels.resolve(query)
    return ClassTarget(index, labels.name(index))


def _check_named_as(labels, target: ClassTarget) -> None:
    """Refuse a ``ClassTarget`` whose name is another class's: records would name the wrong one.

    A name the labels do not know is the user's own (their classes, generic labels) and is
    kept; only a name that resolves to a different index is a contradiction.
    """
    if not isinstance(target.name, str):
        raise VitalError(f"a ClassTarget's name is text, not {target.name!r}.")
    typed = " ".join(target.name.replace("_", " ").split()).lower()
    own = {" ".join(n.replace("_", " ").split()).lower() for n in labels.synonyms[target.index]}
    if typed in own or typed == labels.name(target.index).lower():
        return  # one of the class's own names ("crane" is 134's too, though 517's display name)
    try:
        named = labels.resolve(target.name)
    except VitalError:  # unknown or ambiguous: the user's own word for the class
        return
    if named != target.index:
        raise VitalError(
            f"ClassTarget({target.index}, {target.name!r}) names class {named} "
            f"({labels.name(named)!r}), but its index {target.index} is "
            f"{labels.name(target.index)!r}; give the index alone (or the name alone) so the "
            "records name the class that ran."
        )


def resolve_targets(model, targets) -> list[Target]:
    """One target or a sequence of them → checked targets (classes resolved by ``model``).

    An array or tensor of class indices is taken as the list of numbers it holds (a 0-d one
    as the number), so ``np.array(967)``, ``torch.tensor(967)`` and ``torch.tensor([967,
    285])`` are taken as ``967`` and ``[967, 285]``; floats and bools among them are refused
    one by one, as in a list.
    """
    if isinstance(targets, (np.ndarray, torch.Tensor)):
        targets = targets.tolist()  # Python numbers (a nested list for 2-d: refused below)
    if isinstance(targets, (bytes, bytearray)):
        # bytes iterate as their byte values: b"cat" would be the classes 99, 97 and 116
        raise VitalError(
            f"targets are classes (index, name, WordNet id), Channel or Direction objects, or a "
            f"list of them, not bytes ({targets!r}); give the name as text "
            f"({targets.decode(errors='replace')!r})."
        )
    if isinstance(targets, Mapping):
        # a mapping iterates as its keys: references given in the targets' place
        raise VitalError(
            f"targets are classes (index, name, WordNet id), Channel or Direction objects, or a "
            f"list of them, not a mapping ({targets!r}); a mapping of target → images goes to "
            "references=."
        )
    if isinstance(targets, (str, numbers.Integral, float, ClassTarget, Channel, Direction)):
        targets = [targets]
    if targets is None or not hasattr(targets, "__iter__"):
        raise VitalError(
            f"targets are classes (index, name, WordNet id), Channel or Direction objects, or "
            f"a list of them, not {_described(targets)}."
        )
    resolved = [
        t if isinstance(t, (Channel, Direction)) else class_target(model, t) for t in targets
    ]
    if not resolved:
        raise VitalError("no targets given; name at least one class (targets=C) or channel.")
    return resolved
