"""``vital mine``: the top images and patches of a layer's units over a dataset."""

from __future__ import annotations

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
    if sheets not in ("auto", "all", "none"):
        try:  # a typo is refused before the pass, not after
            numbers = options.integers([sheets], "--sheets")
        except VitalError:
            raise VitalError(
                f"--sheets takes auto, all, none or channel numbers (3,17), not {sheets!r}."
            ) from None
        unmined = [n for n in numbers if chosen_channels is not None and n not in chosen_channels]
        if unmined:
            raise VitalError(
                f"--sheets {unmined}: not among the channels mined (--channel "
                f"{','.join(map(str, chosen_channels))}); a sheet is of a mined channel."
            )
    loaded = session.load(common["model"], common["weights"], device)
    directions = None
    if direction is not None:
        directions = load_vectors(direction)
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
        chosen = report.units if sheets == "all" else _sheet_units(sheets, report.units)
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


def _sheet_units(text: str, units: list[str]) -> list[str]:
    """The mined units ``--sheets`` names: channels by number, directions by row."""
    numbers = options.integers([text], "--sheets")
    channel_numbers = {
        int(unit.removeprefix("channel:")): unit for unit in units if unit.startswith("channel:")
    }
    by_number = channel_numbers or dict(enumerate(units))
    wrong = [n for n in numbers if n not in by_number]
    if wrong:
        kind = "channels" if channel_numbers else "direction rows"
        shown = sorted(by_number)
        listed = ", ".join(map(str, shown[:8])) + (" …" if len(shown) > 8 else "")
        raise VitalError(f"--sheets {wrong}: the mined {kind} are {listed}.")
    return [by_number[n] for n in numbers]
