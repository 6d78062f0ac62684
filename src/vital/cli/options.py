"""Every option more than one command takes, declared once, and the parsers of their values.

Every list option can be repeated and integer lists may also be comma-separated
(``--channel 3 --channel 17`` or ``--channel 3,17``).
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Annotated

import typer

from vital.errors import VitalError

Steps = Annotated[
    int | None, typer.Option("--steps", help="Optimisation steps (default: the method's).")
]
Out = Annotated[Path, typer.Option("--out", help="Output folder.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the first image; image i uses seed+i.")]
Device = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")
]
Resolution = Annotated[
    int | None, typer.Option("--resolution", help="Image side (default: the model's input size).")
]
Batch = Annotated[int, typer.Option("--batch", help="Targets optimised together.")]
ModelName = Annotated[str, typer.Option("--model", "-m", help="Model name (see `vital models`).")]
Weights = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="'DEFAULT' or a named weight (IMAGENET1K_V2, a timm tag): the library's pretrained "
        "weights, downloaded once then cached; a state-dict file; 'random'. Default: embedded "
        "or already cached weights.",
    ),
]
SettingName = Annotated[
    str | None,
    typer.Option(
        "--setting",
        help="VITAL's setting: fast (300 steps, Fourier parametrisation), or the authors' 0 "
        "(half resolution first), 1 (default), 2.",
    ),
]
LearningRate = Annotated[
    float | None, typer.Option("--lr", help="Peak learning rate (default: the method's).")
]
Jitter = Annotated[
    int | None, typer.Option("--jitter", help="Largest random shift in pixels (default: method's).")
]
TapOption = Annotated[
    list[str] | None,
    typer.Option("--tap", help="NAME=WEIGHT; repeat for each tap (default: preset or discovered)."),
]
ReferenceCount = Annotated[
    int | None, typer.Option("--references", help="Reference views per target (N, default 50).")
]
ChannelSelection = Annotated[
    list[str] | None,
    typer.Option(
        "--channel",
        "--channels",
        "-k",
        help="'all' (the default) or channel indices; repeat, or separate with commas.",
    ),
]
Method = Annotated[
    str,
    typer.Option(
        "--method", help="vital, or a baseline to compare with: fourier, maco, deepinversion."
    ),
]


def overrides(**given) -> dict:
    """The settings the user gave (``None``: not given)."""
    return {name: value for name, value in given.items() if value is not None}


def setting_value(text: str | None) -> int | str | None:
    """``--setting``'s text as the library takes it: a number (``"1"`` → 1) or a name."""
    if text is None:
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text.strip()


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


def generation_options(
    model: ModelName = "mobilenet_v2",
    references: ReferenceCount = None,
    weights: Weights = None,
    taps: TapOption = None,
    setting: SettingName = None,
    steps: Steps = None,
    out: Out = Path("vital-out"),
    seed: Seed = 0,
    device: Device = "auto",
    resolution: Resolution = None,
    batch: Batch = 8,
    lr: LearningRate = None,
    jitter: Jitter = None,
    method: Method = "vital",
) -> None:
    """The options ``vital class`` and ``vital neuron`` share, declared once (``generating``)."""


def generating(command):
    """Give a command the shared options after its own; it receives them as ``**common``.

    typer reads a command's options from its signature: this one is the command's own
    parameters followed by :func:`generation_options`'.
    """
    own = [
        parameter
        for parameter in inspect.signature(command, eval_str=True).parameters.values()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    shared = list(inspect.signature(generation_options, eval_str=True).parameters.values())
    command.__signature__ = inspect.Signature([*own, *shared])
    command.__annotations__ = {
        **typing.get_type_hints(generation_options, include_extras=True),
        **command.__annotations__,
    }
    return command
