"""One name per concept: the command-line option, the Python API parameter, the default.

This table is the source of :mod:`vital.cli.options` (every shared option takes its names
from it), of docs/cli.md, and of the test that walks every command and API signature
against it (tests/test_vocabulary.py), so that a new command cannot drift into its own words.
Old spellings are still accepted on the command line, hidden from the help, with a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vital.concepts.crops import DEFAULT_SCALE
from vital.references import DEFAULT_REFERENCES

# A default that each command chooses for itself (e.g. the batch: targets vs. images).
PER_COMMAND = "per command"


@dataclass(frozen=True)
class Term:
    """One concept, named the same way everywhere.

    Attributes
    ----------
    concept
        What it is, in words (docs/cli.md's first column).
    option
        The command-line spellings, long first (``("--class", "-c")``).
    api
        The Python API's name for it (a parameter, or how to pass it).
    default
        The default wherever the option appears, or :data:`PER_COMMAND`.
    repeat
        A list option: it repeats and takes commas.
    flag
        An on/off switch: ``--force``, never ``--force true``.
    old
        Earlier spellings: accepted with a warning, never shown in the help.
    old_on
        Earlier spellings of one command only, as (command, spelling) pairs
        (``("mine", "--top")``): the same spelling means something else on another command
        (``explain --top``: the channels shown), so only that command rewrites it.
    note
        What the default is in words, where the value alone does not say it.
    """

    concept: str
    option: tuple[str, ...]
    api: str
    default: object = None
    repeat: bool = False
    flag: bool = False
    old: tuple[str, ...] = ()
    old_on: tuple[tuple[str, str], ...] = ()
    note: str = ""


TERMS: tuple[Term, ...] = (
    Term("model", ("--model", "-m"), "model", "mobilenet_v2"),
    Term("weights", ("--weights",), "weights", None, note="the embedded or cached weights"),
    Term("classes", ("--class", "-c"), "targets (ints, names, wnids)", None, repeat=True,
         old=("--classes",)),
    Term("layer", ("--layer", "-l"), "layer", None),
    Term("channels", ("--channel", "-k"), "Channel(layer, k)", None, repeat=True,
         old=("--channels",)),
    Term("concept direction file", ("--direction",), "Direction", None),
    Term("reference image folder", ("--refs",), "references", None, old=("--class-refs",)),
    Term("image set to mine, explain or discover over", ("--data",), "data", None),
    Term("reference count", ("--ref-count",), "reference_count", DEFAULT_REFERENCES,
         old=("--references",), old_on=(("mine", "--top"),),
         note=f"{DEFAULT_REFERENCES} (mine: images kept per unit)"),
    Term("patch side", ("--patch",), "patch_side", PER_COMMAND, old=("--patches",),
         note="64 when mining; neuron: whole images"),
    Term("output folder", ("--out",), "out", "vital-out"),
    Term("engine", ("--engine",), "engine", "local"),
    Term("engine address", ("--address",), "address", None, old=("--ray-address",)),
    Term("setting", ("--setting",), "setting", "fast"),
    Term("method", ("--method",), "method", PER_COMMAND, old=("--methods",),
         note="vital (compare: every method that can)"),
    Term("steps", ("--steps",), "settings={'steps': N}", None, note="the setting's (fast: 300)"),
    Term("seed", ("--seed",), "seed (settings={'seed': S} in visualize)", 0),
    Term("batch (at least 1)", ("--batch",), "batch_size", PER_COMMAND,
         note="8 pictures (atlas build, explain: 4; demo: 3); mine: 32 images per pass"),
    Term("device", ("--device",), "device", "auto"),
    Term("precision", ("--precision",), "settings={'precision': P}", None, note="float32"),
    Term("image side", ("--resolution",), "settings={'resolution': R}", None,
         note="the model's input size"),
    Term("channels-last memory format", ("--channels-last",),
         "settings={'channels_last': True}", False, flag=True),
    Term("number of concepts", ("--count",), "count", PER_COMMAND),
    Term("mined references as", ("--mined-as",), "mined_as ('image' or 'patch')", "image"),
    Term("crops' area range", ("--crop-scale",), "crop_scale=(LOW, HIGH)",
         ",".join(str(v) for v in DEFAULT_SCALE)),
    Term("concepts pictured", ("--pictured",), "pictured", None, note="every concept"),
    Term("no pictures", ("--no-pictures",), "pictures=False", False, flag=True),
    Term("store to reuse pictures from", ("--store",), "store (a folder or a list)", None),
    Term("force recompute", ("--force",), "force", False, flag=True),
)  # fmt: skip

BY_OPTION: dict[str, Term] = {name: term for term in TERMS for name in term.option}

# Old spelling → today's long option.
OLD_SPELLINGS: dict[str, str] = {old: term.option[0] for term in TERMS for old in term.old}

# Command (its words after ``vital``) → its own old spellings → today's long option.
OLD_SPELLINGS_ON: dict[str, dict[str, str]] = {
    command: {
        old: term.option[0] for term in TERMS for where, old in term.old_on if where == command
    }
    for command in sorted({where for term in TERMS for where, _ in term.old_on})
}

# API parameter → command-line option, for messages the library words for Python callers.
API_TO_OPTION: dict[str, str] = {
    "references": "--refs",
    "reference_count": "--ref-count",
    "patch_side": "--patch",
    "targets": "--class",
    "steps": "--steps",
    "seed": "--seed",
    "batch_size": "--batch",
    "precision": "--precision",
    "resolution": "--resolution",
    "channels_last": "--channels-last",
    "out": "--out",
    "address": "--address",
    "engine": "--engine",
    "setting": "--setting",
    "device": "--device",
    "weights": "--weights",
    "layer": "--layer",
    "data": "--data",
    "relevance": "--relevance",
    "relevance_floor": "--relevance-floor",
    "method": "--method",
    "top_images": "--top-images",
    "mined_as": "--mined-as",
    "crop_scale": "--crop-scale",
    "crops": "--crops",
    "count": "--count",
    "examples": "--examples",
    "pictured": "--pictured",
    "store": "--store",
    "top": "--top",
    "shard_size": "--shard-size",
    "workers": "--workers",
    "lr": "--lr",
    "jitter": "--jitter",
}
_API_WORD = re.compile(r"\b(" + "|".join(API_TO_OPTION) + r")=(?=[\w'\"<(\[{./~-])")


# API flags → command-line flags: ``force=True`` → ``--force``.
API_FLAG_TO_OPTION: dict[str, str] = {"force": "--force", "channels_last": "--channels-last"}
_API_FLAG = re.compile(r"\b(" + "|".join(API_FLAG_TO_OPTION) + r")=True\b")


# API lists → a repeated command-line option: ``taps=['A=1', 'B']`` → ``--tap A=1 --tap B``.
API_LIST_TO_OPTION: dict[str, str] = {"taps": "--tap"}
_API_LIST = re.compile(r"\b(" + "|".join(API_LIST_TO_OPTION) + r")=\[([^\]]*)\]")


def _repeated(match: re.Match[str]) -> str:
    option = API_LIST_TO_OPTION[match.group(1)]
    items = [item.strip().strip("'\"") for item in match.group(2).split(",") if item.strip()]
    return " ".join(f"{option} {item}" for item in items)


def cli_wording(message: str) -> str:
    """A library message for the command line: ``references=DIR`` → ``--refs DIR``.

    Flags lose their value: ``force=True`` → ``--force``; a list becomes a repeated option:
    ``taps=['A=1', 'B']`` → ``--tap A=1 --tap B``.
    """
    message = _API_FLAG.sub(lambda match: API_FLAG_TO_OPTION[match.group(1)], message)
    message = _API_LIST.sub(_repeated, message)
    return _API_WORD.sub(lambda match: API_TO_OPTION[match.group(1)] + " ", message)


def markdown_table() -> str:
    """The table of docs/cli.md (a test keeps the file equal to it)."""
    rows = ["| concept | option | Python API | default |", "|---|---|---|---|"]
    for term in TERMS:
        names = "/".join(term.option) + (" (repeat or commas)" if term.repeat else "")
        names += " (a flag)" if term.flag else ""
        default = term.note or ("" if term.default is None else str(term.default))
        rows.append(f"| {term.concept} | `{names}` | `{term.api}` | {default} |")
    return "\n".join(rows)
