"""Every option more than one command takes, declared once, and the parsers of their values.

Names and defaults come from :mod:`vital.cli.vocabulary` (one name per concept, everywhere).
Every list option can be repeated and takes commas (``--channel 3 --channel 17`` or
``--channel 3,17``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from vital.cli.vocabulary import BY_OPTION, OLD_SPELLINGS, OLD_SPELLINGS_ON
from vital.errors import VitalError, check_count
from vital.methods import DEFAULT_METHOD, METHODS
from vital.optimize import DEFAULT_SETTING, PRECISIONS, Settings
from vital.references import DEFAULT_REFERENCES
from vital.relevance import BACKENDS


def option(name: str, help: str, **extra: Any) -> Any:
    """A ``typer.Option`` spelled as the vocabulary spells ``name`` (e.g. ``"--refs"``)."""
    return typer.Option(*BY_OPTION[name].option, help=help, **extra)


def _flags_without_type(params: list) -> list:
    # typer >= 0.29 shows every option's type, flags included ("--force <bool>"): a flag
    # takes no value, so it shows none.
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


# Help narrower than this is unreadable: rich splits option names and squeezes their help into
# a column a word or two wide. Wider terminals keep their own width, up to MAX_HELP_WIDTH:
# rich pads every line to the width, so COLUMNS=100000 would write megabytes of blanks.
MIN_HELP_WIDTH = 80
MAX_HELP_WIDTH = 200


@contextmanager
def _readable(command: click.Command) -> Iterator[None]:
    """While ``command``'s help renders: 80 columns at least, its paragraphs as flowing text."""
    written = command.help
    if written:
        command.help = reflowed(written)
    try:
        with _readable_width():
            yield
    finally:
        command.help = written


def reflowed(text: str) -> str:
    r"""``text`` with the line breaks inside each paragraph made spaces.

    typer (>= 0.29) keeps a docstring's line breaks after its first paragraph, so a docstring
    wrapped at 95 columns shows on an 80-column terminal as every other line cut short. A
    paragraph that is laid out on purpose (indented lines, a list, click's ``\b`` marker)
    keeps its breaks.
    """
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        paragraph if _laid_out(paragraph) else " ".join(paragraph.split("\n"))
        for paragraph in paragraphs
    )


def _laid_out(paragraph: str) -> bool:
    lines = paragraph.split("\n")
    return paragraph.startswith("\b") or any(
        line[:1].isspace() or line.lstrip().startswith(("- ", "* ", "$ ")) for line in lines
    )


@contextmanager
def _readable_width() -> Iterator[None]:
    # typer's rich help takes its width from `rich_utils.MAX_WIDTH` (set from TERMINAL_WIDTH)
    # or else from the terminal (rich reads COLUMNS); it has no minimum and ignores click's
    # `terminal_width` / `max_content_width`. So the width is fixed here while help renders.
    try:
        from rich.console import Console
        from typer import rich_utils
    except ImportError:  # without rich, click's formatter: it keeps 50 columns at least
        yield
        return
    chosen = rich_utils.MAX_WIDTH
    rich_utils.MAX_WIDTH = min(max(chosen or Console().width, MIN_HELP_WIDTH), MAX_HELP_WIDTH)
    try:
        yield
    finally:
        rich_utils.MAX_WIDTH = chosen


class Command(TyperCommand):
    """A command: flags print as flags, its own old spellings work, help flows in 80 columns+."""

    def get_params(self, ctx: click.Context) -> list:
        """The parameters, flags without a value type."""
        return _flags_without_type(super().get_params(ctx))

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The help at the terminal's width, within ``MIN_HELP_WIDTH`` and ``MAX_HELP_WIDTH``."""
        with _readable(self):
            super().format_help(ctx, formatter)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Rewrite this command's old spellings (``mine --top`` → ``--ref-count``) first.

        Only this command's: the same spelling may be another option elsewhere (``explain
        --top``, the channels shown).
        """
        spellings = OLD_SPELLINGS_ON.get(_command_words(ctx))
        if spellings:
            names = {arg.partition("=")[0] for arg in args}
            for old, new in spellings.items():
                if old in names and new in names:  # else the later one would win unseen
                    raise VitalError(f"{old} is the old name of {new}: give one of them.")
            args = [_today(arg, spellings) for arg in args]
        if not set(ctx.help_option_names) & set(args):  # help is shown whatever else is typed
            _refuse_repeated(self.get_params(ctx), args)
        return super().parse_args(ctx, args)


class Group(TyperGroup):
    """A command group whose flags print as flags and that accepts old option spellings."""

    def get_params(self, ctx: click.Context) -> list:
        """The parameters, flags without a value type."""
        return _flags_without_type(super().get_params(ctx))

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The help at the terminal's width, within ``MIN_HELP_WIDTH`` and ``MAX_HELP_WIDTH``."""
        with _readable(self):
            super().format_help(ctx, formatter)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Rewrite old spellings (``--classes`` → ``--class``) before any command parses."""
        return super().parse_args(ctx, [_today(arg, OLD_SPELLINGS) for arg in args])


def _refuse_repeated(params: list, args: list[str]) -> None:
    """Refuse an option of one value given more than once (``--steps 1 --steps 2``).

    click keeps the last value without a word, and the run would not be the one asked for.
    List options (``--class``) repeat by design; a flag given twice asks the same thing twice.
    ``--opt=value``, ``--opt value``, a short alias (``-c``) and ``-cVALUE`` are all read.
    """
    single = {}  # every spelling of a one-value option -> its long name
    takes_value = set()  # every spelling of an option that takes a value (so skips one word)
    for param in params:
        # typer >= 0.29's options are not click's own class: their kind is what tells.
        if param.param_type_name != "option" or param.is_flag or param.count:
            continue
        spellings = [*param.opts, *param.secondary_opts]
        takes_value.update(spellings)
        if not param.multiple and param.nargs == 1:
            long = max(param.opts, key=len)
            single.update(dict.fromkeys(spellings, long))
    given: dict[str, list[str]] = {}
    words = iter(args)
    for word in words:
        if word == "--":  # what follows is arguments, not options
            break
        name, value = _option_and_value(word, takes_value)
        if name is None:
            continue
        if value is None:
            value = next(words, "")
        if name in single:
            given.setdefault(single[name], []).append(value)
    for name, values in given.items():
        if len(values) > 1:
            times = "twice" if len(values) == 2 else f"{len(values)} times"
            raise VitalError(f"{name} was given {times} ({', '.join(values)}): give it once.")


def _option_and_value(word: str, takes_value: set[str]) -> tuple[str | None, str | None]:
    """The value-taking option ``word`` names and the value it carries (``None``: the next word).

    ``(None, None)`` for a word that is no such option (an argument, a flag, a value).
    """
    if word.startswith("--"):
        name, equals, value = word.partition("=")
        if name in takes_value:
            return name, value if equals else None
        return None, None
    if word.startswith("-") and len(word) > 1 and word[:2] in takes_value:
        return word[:2], word[2:] or None  # -c espresso or -cespresso
    return None, None


def _command_words(ctx: click.Context) -> str:
    """The command's words after the program's name: ``"mine"``, ``"atlas build"``."""
    words = []
    while ctx.parent is not None:
        words.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(reversed(words))


def _today(arg: str, spellings: dict[str, str]) -> str:
    """``arg`` with an old spelling of ``spellings`` replaced by today's, with a warning."""
    name, equals, value = arg.partition("=")
    if name not in spellings:
        return arg
    typer.secho(
        f"warning: {name} is now {spellings[name]}; the old spelling will go.",
        fg=typer.colors.YELLOW,
        err=True,
    )
    return spellings[name] + equals + value


WEIGHTS_HELP = (
    "'DEFAULT' or a named weight (IMAGENET1K_V2, a timm tag): the library's pretrained weights, "
    "downloaded once then cached; a state-dict file; 'random'. Default: the embedded or "
    "already cached weights."
)
CLASSES_HELP = "Class index, name or WordNet id; repeat or use commas."
CHANNELS_HELP = "Channel indices of --layer; repeat or use commas."
RELEVANCE_HELP = "Relevance backend: " + ", ".join(BACKENDS) + "."

ModelName = Annotated[str, option("--model", "Model name (see `vital models`).")]
Weights = Annotated[str | None, option("--weights", WEIGHTS_HELP)]
Classes = Annotated[list[str] | None, option("--class", CLASSES_HELP)]
Channels = Annotated[list[str] | None, option("--channel", CHANNELS_HELP)]
ChannelSelection = Annotated[
    list[str] | None,
    option("--channel", "'all' (the default) or channel indices; repeat or use commas."),
]
ReferenceCount = Annotated[int, option("--ref-count", "Reference images (views) per target.")]
Relevance = Annotated[str, typer.Option("--relevance", help=RELEVANCE_HELP)]
STEPS_HELP = (
    "Optimisation steps (default: the setting's); setting 0 runs its 2000 half-resolution "
    "steps before these."
)
Steps = Annotated[int | None, option("--steps", STEPS_HELP)]


def out_folder(value: Path) -> Path:
    """``--out`` as the folder it names (``~`` expanded), refused where it names no folder.

    Checked where typed, so that every command writes where :func:`vital.store.output_folder`
    checks (a quoted ``"~/x"`` is the home's ``x``, not a folder ``~`` here).
    """
    from vital.store import folder_path

    return folder_path(value)


Out = Annotated[Path, option("--out", "Output folder.", callback=out_folder)]
Seed = Annotated[int, option("--seed", "Seed of the first image; image i uses seed+i.")]
Device = Annotated[str, option("--device", "auto (CUDA when present), cpu, cuda or cuda:N.")]
Precision = Annotated[
    str | None,
    option(
        "--precision",
        f"The model's forward: {' or '.join(PRECISIONS)} (autocast, for GPUs); default float32.",
    ),
]
Resolution = Annotated[
    int | None, option("--resolution", "Image side (default: the model's input size).")
]
ChannelsLast = Annotated[
    bool,
    option(
        "--channels-last",
        "Run the model in the channels-last memory format: faster on GPUs and, on the CPU, "
        "for networks of depthwise convolutions (docs/throughput.md).",
    ),
]


def at_least_one(value: int) -> int:
    """A ``--batch`` (or other count) of at least 1, refused as the library refuses it."""
    check_count(value, "batch_size")
    return value


BATCH_HELP = "Targets optimised together: pictures per optimisation batch."
Batch = Annotated[int, option("--batch", BATCH_HELP, callback=at_least_one)]
SettingName = Annotated[
    str,
    option(
        "--setting",
        f"{DEFAULT_SETTING} (the default: {Settings.setting(DEFAULT_SETTING).steps} steps through "
        f"a Fourier parametrisation), or the authors' 1 ({Settings.setting(1).steps} steps), 0 "
        f"(half resolution first) or 2 ({Settings.setting(2).steps} steps).",
    ),
]
Engine = Annotated[
    str,
    option(
        "--engine",
        "local (in this process) or ray (Ray tasks, on the cluster's GPUs when it has them; "
        "needs Ray: pip install 'vital\\[ray]').",
    ),
]
Address = Annotated[
    str | None, option("--address", "Ray cluster for --engine ray (default: start a local one).")
]
Force = Annotated[bool, option("--force", "Compute again even what is stored.")]
TopImages = Annotated[
    int, typer.Option("--top-images", help="Mining stage 1: images kept per channel.")
]
MiningPatch = Annotated[
    int,
    option(
        "--patch", "Mining stage 2's patch side in pixels on the centre crop (0: whole images)."
    ),
]


def _mined_as(value: str) -> str:
    """The way mined references are read, checked where it is typed.

    Taken in any case, as method and setting names are.
    """
    value = value.strip().lower()
    if value not in ("image", "patch"):
        raise VitalError(
            f"--mined-as takes 'image' (the whole mined images) or 'patch' (their best "
            f"patches), not {value!r}."
        )
    return value


def by_choice(value: str) -> str:
    """``--by`` of explain and atlas build, checked where typed (any case, as ``--mined-as``)."""
    chosen = value.strip().lower()
    if chosen not in ("channels", "concepts"):
        raise VitalError(f"--by is 'channels' or 'concepts', not {value!r}.")
    return chosen


MinedAs = Annotated[
    str,
    typer.Option(
        "--mined-as",
        help="With mined references: 'image' (whole images) or 'patch'.",
        callback=_mined_as,
    ),
]
LearningRate = Annotated[
    float | None, typer.Option("--lr", help="Peak learning rate (default: the method's).")
]
Jitter = Annotated[
    int | None,
    typer.Option("--jitter", help="Largest random shift in pixels (default: the method's)."),
]
TapOption = Annotated[
    list[str] | None,
    typer.Option("--tap", help="NAME=WEIGHT; repeat for each tap (default: preset or discovered)."),
]
Method = Annotated[
    str,
    option(
        "--method",
        f"{DEFAULT_METHOD}, or a baseline to compare with: "
        + ", ".join(name for name in METHODS if name != DEFAULT_METHOD)
        + ".",
    ),
]


def typed(context: typer.Context, *names: str) -> list[str]:
    """The options among the parameters ``names`` that the user typed (or set in the environment).

    Their values alone cannot tell: ``--count 10`` typed is the default, and still asks for
    something.
    """
    by_name = {param.name: param for param in context.command.params}
    return [
        by_name[name].opts[0]
        for name in names
        if name in by_name
        and getattr(context.get_parameter_source(name), "name", None)
        in ("COMMANDLINE", "ENVIRONMENT")
    ]


def refuse_unused(context: typer.Context, names: tuple[str, ...], why: str) -> None:
    """Refuse the options among ``names`` the user typed where ``why`` says they do nothing.

    An option that changes nothing would be dropped unseen: the run would not be what was asked.
    """
    given = typed(context, *names)
    if given:
        raise VitalError(f"{why}: leave out {' and '.join(given)}.")


def overrides(**given) -> dict:
    """The settings the user gave (``None``: not given)."""
    return {name: value for name, value in given.items() if value is not None}


def setting_value(text: str) -> int | str:
    """``--setting``'s text as the library takes it: a number (``"1"`` → 1) or a name."""
    return int(text) if text.strip().lstrip("-").isdigit() else text.strip()


def patch_side(text: str | None) -> int | str | None:
    """``--patch``'s text as the library takes it: ``"auto"``, a side in pixels, or not given."""
    if text is None:
        return None
    text = text.strip()
    if text == "auto":
        return text
    if text.isdigit():
        return int(text)
    raise VitalError(f"--patch takes 'auto' or a side in pixels (0: whole images), not {text!r}.")


def integers(values: list[str] | None, option: str) -> list[int]:
    """Repeated and/or comma-separated integers: ``["3", "17,200"]`` → ``[3, 17, 200]``."""
    numbers = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                numbers.append(int(part))
            except ValueError as error:
                raise VitalError(
                    f"{option} takes whole numbers (repeat it, or separate them with commas), "
                    f"not {part!r}."
                ) from error
    return numbers


def names(values: list[str] | None) -> list[str]:
    """Repeated and/or comma-separated class names: ``["espresso,daisy", "967"]``."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def channel_list(values: list[str] | None) -> list[int] | None:
    """``all`` (or nothing) → ``None``; else the channel indices."""
    if not values or [v.strip().lower() for v in values] == ["all"]:
        return None
    return integers(values, "--channel")


def picture_options(
    setting: SettingName = DEFAULT_SETTING,
    steps: Steps = None,
    seed: Seed = 0,
    device: Device = "auto",
    precision: Precision = None,
    resolution: Resolution = None,
    channels_last: ChannelsLast = False,
    batch: Batch = 8,
) -> None:
    """The options of every command that makes pictures, declared once (:func:`sharing`)."""


def model_options(model: ModelName = "mobilenet_v2", weights: Weights = None) -> None:
    """The explained model, for every command that loads one (:func:`sharing`)."""


def generation_options(
    ref_count: ReferenceCount = DEFAULT_REFERENCES,
    taps: TapOption = None,
    out: Out = Path("vital-out"),
    lr: LearningRate = None,
    jitter: Jitter = None,
    method: Method = DEFAULT_METHOD,
    force: Force = False,
) -> None:
    """The options ``vital class`` and ``vital neuron`` also share (:func:`sharing`)."""


def sharing(*bundles: Callable, **defaults: Any) -> Callable:
    """Give a command the options of ``bundles`` after its own; it receives them as ``**common``.

    typer reads a command's options from its signature: this one becomes the command's own
    parameters followed by each bundle's. ``defaults`` change a bundle's defaults for this
    command (``batch=4``).
    """

    def give(command: Callable) -> Callable:
        own = [
            parameter
            for parameter in inspect.signature(command, eval_str=True).parameters.values()
            if parameter.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        shared = [
            parameter.replace(default=defaults.get(parameter.name, parameter.default))
            for bundle in bundles
            for parameter in inspect.signature(bundle, eval_str=True).parameters.values()
        ]
        command.__signature__ = inspect.Signature([*own, *shared])
        hints = [typing.get_type_hints(bundle, include_extras=True) for bundle in bundles]
        command.__annotations__ = {
            **{name: hint for bundle in hints for name, hint in bundle.items()},
            **command.__annotations__,
        }
        return command

    return give


def settings_of(common: dict, *extra: str, seed: bool = True) -> dict:
    """The settings the user gave among the shared options (``None``: not given).

    ``seed=False`` leaves the seed out, for commands that pass it on by itself.
    """
    names = ("steps", "seed", "resolution", "precision", *extra)
    given = {name: common[name] for name in names if seed or name != "seed"}
    # A flag left off is not given: the setting's own layout stays, and so do stored results.
    return overrides(**given, channels_last=common["channels_last"] or None)
