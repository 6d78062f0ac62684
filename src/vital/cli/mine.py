"""``vital mine``: the top images and patches of a layer's units over a dataset."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from vital.cli import options, session
from vital.cli.options import (
    Address,
    ChannelSelection,
    Device,
    Engine,
    MiningPatch,
    Out,
    TopImages,
)
from vital.errors import VitalError
from vital.mining.scan import (
    DEFAULT_MINING_BATCH,
    DEFAULT_PATCH,
    DEFAULT_SHARD,
    DEFAULT_TOP_IMAGES,
)
from vital.references import DEFAULT_REFERENCES

DATA_HELP = "Image folder (any depth, ImageNet-style trees too) or list file."
SHEETS_HELP = (
    "Contact sheets: 'all', 'none', channel numbers (3,17; with --direction the file's row "
    "numbers), or 'auto' (all when at most 32 units)."
)
REF_COUNT_HELP = "Stage 2: images kept per unit by their best patch (the unit's references)."
BATCH_HELP = "Images per forward pass (stage 2: their patches, at least one image's)."
WORKERS_HELP = "Local engine's decoding processes (default: cores - 1)."


@options.sharing(options.model_options)
def mine_command(
    layer: Annotated[str, options.option("--layer", "Layer to mine (see `vital layers`).")],
    data: Annotated[Path, options.option("--data", DATA_HELP)],
    channels: ChannelSelection = None,
    direction: Annotated[
        Path | None,
        options.option("--direction", "Concept direction(s): a .npy of shape (C,) or (D, C)."),
    ] = None,
    top_images: TopImages = DEFAULT_TOP_IMAGES,
    ref_count: Annotated[int, options.option("--ref-count", REF_COUNT_HELP)] = DEFAULT_REFERENCES,
    patch: MiningPatch = DEFAULT_PATCH,
    out: Out = Path("vital-out"),
    sheets: Annotated[str, typer.Option("--sheets", help=SHEETS_HELP)] = "auto",
    batch: Annotated[int, options.option("--batch", BATCH_HELP, callback=options.at_least_one)] = (
        DEFAULT_MINING_BATCH
    ),
    workers: Annotated[int | None, typer.Option("--workers", help=WORKERS_HELP)] = None,
    device: Device = "auto",
    engine: Engine = "local",
    address: Address = None,
    shard_size: Annotated[
        int,
        typer.Option(
            "--shard-size", help="Images per shard: the unit of distribution and of resuming."
        ),
    ] = DEFAULT_SHARD,
    **common,
) -> None:
    """Mine the top images and patches of every channel of a layer in one pass over a dataset."""
    from vital.files import load_vectors
    from vital.mining import contact_sheet, mine

    if direction is not None and channels:
        raise VitalError(
            "--channel and --direction choose what to mine; give one of them (a direction "
            "file is mined instead of channels)."
        )
    chosen_channels = options.channel_list(channels)
    numbers = None if sheets in ("auto", "all", "none") else _sheet_numbers(sheets)
    if numbers is not None and chosen_channels is not None:  # before the model loads
        _refuse_unmined(numbers, chosen_channels, "channels mined (--channel)")
    loaded = session.load(common["model"], common["weights"], device)
    directions = None
    if direction is not None:
        directions = load_vectors(direction)
    if numbers is not None and chosen_channels is None:  # before the pass, not after it
        if directions is not None:
            rows = len(directions) if directions.ndim == 2 else 1  # a (D, C) file, or one (C,)
            _refuse_unmined(numbers, range(rows), f"rows of {direction.name}")
        else:
            from vital.taps import list_layers

            size = loaded.preprocessing.input_size
            found = [i for i in list_layers(loaded.module, size) if i.name == layer]
            if found:  # an unknown layer is mine's to refuse, in its words
                _refuse_unmined(numbers, range(found[0].channels), f"channels of {layer}")
    session.Session.out, session.Session.resumable = out, True
    report = mine(
        loaded,
        layer,
        data,
        out,
        channels=chosen_channels,
        directions=directions,
        direction_name=direction.stem if direction is not None else "direction",
        top_images=top_images,
        reference_count=ref_count,
        patch_side=patch,
        batch_size=batch,
        workers=workers,
        engine=engine,
        address=address,
        shard_size=shard_size,
    )
    # The contact sheets are saved before the summary prints: printing can fail (a closed pipe)
    # and the work must be saved by then.
    many = sheets == "auto" and len(report.units) > 32
    if sheets == "auto":
        sheets = "none" if many else "all"
    folder, chosen = out / "sheets", []
    if sheets != "none":
        chosen = report.units if sheets == "all" else _sheet_units(numbers, report.units)
        from vital.files import save_image

        for unit in chosen:
            path = folder / f"{layer}-{unit.replace(':', '-')}.png"
            save_image(path, contact_sheet(report.database, loaded, layer, unit, count=ref_count))
    typer.echo(
        f"{len(report.units)} unit(s) of {layer} over {report.images} images "
        f"({report.unreadable} unreadable skipped, {report.not_images} other files ignored)"
    )
    if report.unreadable_examples:
        more = report.unreadable - len(report.unreadable_examples)
        named = ", ".join(report.unreadable_examples) + (f" and {more} more" if more > 0 else "")
        typer.echo(f"  unreadable: {named}")
    if report.reused:
        typer.echo(f"  reused {len(report.reused)} finished list(s) from the index")
    if report.scanned:
        typer.echo(
            f"  stage 1: {report.seconds['stage1']:.1f} s ({report.images_per_second:.1f} img/s), "
            f"stage 2: {report.seconds['stage2']:.1f} s"
        )
    typer.echo(f"index: {report.database}")
    if many:
        typer.echo("no contact sheets for more than 32 units; ask with --sheets 3,17 or all")
    if sheets != "none":
        typer.echo(f"contact sheets: {folder} ({len(chosen)})")


def _sheet_numbers(text: str) -> list[int]:
    """``--sheets`` numbers, each once; a typo is refused before the pass, not after."""
    try:
        numbers = list(dict.fromkeys(options.integers([text], "--sheets")))
    except VitalError:
        numbers = []
    if not numbers:
        raise VitalError(f"--sheets takes auto, all, none or channel numbers (3,17), not {text!r}.")
    return numbers


def _refuse_unmined(numbers: list[int], mined: Iterable[int], what: str) -> None:
    """Refuse sheet numbers that name no unit of the pass."""
    mined = list(mined)
    known = set(mined)
    unmined = [n for n in numbers if n not in known]
    if unmined:
        shown = ", ".join(map(str, mined[:8])) + (" …" if len(mined) > 8 else "")
        raise VitalError(
            f"--sheets {unmined}: not among the {what}: {shown}; a sheet is of a mined unit."
        )


def _sheet_units(numbers: list[int], units: list[str]) -> list[str]:
    """The mined units the ``--sheets`` numbers name: channels by number, directions by row."""
    channel_numbers = {
        int(unit.removeprefix("channel:")): unit for unit in units if unit.startswith("channel:")
    }
    by_number = channel_numbers or dict(enumerate(units))
    _refuse_unmined(numbers, sorted(by_number), "units mined")
    return [by_number[n] for n in numbers]
