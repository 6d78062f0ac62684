"""``vital explain``: which channels of a layer carried an image's class, with their pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vital.cli import options, session
from vital.cli.concepts import explain_by_concepts
from vital.cli.options import (
    MinedAs,
    MiningPatch,
    Relevance,
    TopImages,
)
from vital.concepts.crops import DEFAULT_CROPS
from vital.concepts.discovery import DEFAULT_COUNT
from vital.errors import VitalError
from vital.explanation.pipeline import DEFAULT_TOP
from vital.mining.scan import DEFAULT_PATCH, DEFAULT_TOP_IMAGES
from vital.references import DEFAULT_REFERENCES

# What only the channels' way (mining, their references) or only the pictures use.
CHANNEL_OPTIONS = ("top", "data", "ref_count", "mined_as", "top_images", "patch", "stores")
PICTURE_OPTIONS = (
    "setting", "steps", "seed", "precision", "resolution", "channels_last", "batch", "force",
)  # fmt: skip

# What the channels' way uses only when --data gives it images to mine.
DATA_ONLY_OPTIONS = (
    tuple(name for name in CHANNEL_OPTIONS if name not in ("top", "data")) + PICTURE_OPTIONS
)
DATA_HELP = (
    "Images to mine the channels' dataset examples and picture references from "
    "(folder or list file)."
)


@options.sharing(options.model_options, options.picture_options, batch=4)
def explain_command(
    context: typer.Context,
    image: Annotated[
        Path, typer.Argument(metavar="IMAGE", help="The image to explain (its centre crop).")
    ],
    layer: Annotated[
        str, options.option("--layer", "Layer whose channels explain the prediction.")
    ],
    data: Annotated[Path | None, options.option("--data", DATA_HELP)] = None,
    top: Annotated[
        int, typer.Option("--top", help="Most relevant channels to show.")
    ] = DEFAULT_TOP,
    by: Annotated[
        str,
        typer.Option(
            "--by",
            help="channels (default) or concepts: the concepts found in the photo's crops.",
            callback=options.by_choice,
        ),
    ] = "channels",
    count: Annotated[
        int, options.option("--count", "With --by concepts: the number of concepts K.")
    ] = DEFAULT_COUNT,
    classes: Annotated[
        list[str] | None,
        options.option(
            "--class",
            "Class to explain (default: the prediction); several (repeat or use commas) are "
            "explained one after the other.",
        ),
    ] = None,
    relevance: Relevance = "lrp",
    out: Annotated[
        Path,
        options.option(
            "--out", "Atlas folder the explanation is written to.", callback=options.out_folder
        ),
    ] = Path("vital-out"),
    ref_count: Annotated[
        int,
        options.option("--ref-count", "Mined images per channel (picture references)."),
    ] = DEFAULT_REFERENCES,
    mined_as: MinedAs = "image",
    top_images: TopImages = DEFAULT_TOP_IMAGES,
    patch: MiningPatch = DEFAULT_PATCH,
    stores: Annotated[
        list[Path] | None,
        typer.Option("--store", help="Another atlas or result folder to reuse pictures from."),
    ] = None,
    no_pictures: Annotated[
        bool, typer.Option("--no-pictures", help="Skip the channels' VITAL pictures.")
    ] = False,
    force: Annotated[
        bool, options.option("--force", "Compute the pictures again even if stored.")
    ] = False,
    **common,
) -> None:
    """Explain why the model gives IMAGE its class: the channels of --layer that carried it.

    For the top channels: their relevance (LRP from the class logit) and share, a heatmap of
    the relevance through each, their dataset examples mined from --data, and their VITAL
    pictures (reused from the atlas or --store when stored with the same settings). Writes a
    JSON record and a page into the atlas folder --out. With --by concepts: the --count
    concepts found in the photo's own crops, their shares of the class's relevance, maps on the
    photo, examples and VITAL pictures (as `vital concepts`), with their pages in the atlas.
    """
    if no_pictures:
        # With --by concepts the seed also draws the crops and the factorisation, and --force
        # finds the concepts again.
        kept = ("seed", "force") if by == "concepts" else ()
        unused = tuple(name for name in PICTURE_OPTIONS if name not in kept)
        options.refuse_unused(context, unused, "--no-pictures makes no pictures")
    if by == "concepts":
        options.refuse_unused(
            context,
            CHANNEL_OPTIONS,
            "--by concepts finds the concepts, their examples and references in the photo's own "
            "crops (for a class's concepts over a data set: `vital concepts --data`)",
        )
        if count > DEFAULT_CROPS:
            raise VitalError(
                f"--by concepts factorises {DEFAULT_CROPS} crops of the photo: --count is at most "
                f"{DEFAULT_CROPS}, not {count}."
            )
    else:
        options.refuse_unused(
            context, ("count",), "--count is the number of concepts of --by concepts"
        )
        if data is None:
            # The channels' examples, references and pictures all come from mining --data.
            options.refuse_unused(
                context,
                DATA_ONLY_OPTIONS,
                "without --data there is nothing to mine the channels' examples and picture "
                "references from, so no pictures are made (give --data FOLDER to make them)",
            )
    loaded = session.load(common["model"], common["weights"], common["device"])
    settings = options.settings_of(common, seed=False)
    if by == "concepts":
        for target in options.names(classes) or [None]:
            explain_by_concepts(
                loaded, image, layer, target, count, out, relevance=relevance,
                pictures=not no_pictures, setting=options.setting_value(common["setting"]),
                settings=settings, seed=common["seed"], batch_size=common["batch"], force=force,
            )  # fmt: skip
        return
    session.Session.out, session.Session.resumable = out, True
    for target in options.names(classes) or [None]:
        _explain_one(
            loaded,
            image,
            out,
            layer=layer,
            top=top,
            data=data,
            target=target,
            relevance=relevance,
            setting=options.setting_value(common["setting"]),
            settings=settings,
            seed=common["seed"],
            reference_count=ref_count,
            mined_as=mined_as,
            top_images=top_images,
            patch_side=patch,
            pictures=not no_pictures,
            store=stores or (),
            force=force,
            batch_size=common["batch"],
        )


def _explain_one(loaded, image: Path, out: Path, **arguments) -> None:
    """Explain one class of ``image`` (the prediction's for ``target=None``) and say where."""
    from vital.explanation import explain

    record = explain(loaded, image, out=out, **arguments)
    explained = record.explained
    typer.echo(
        f"{Path(record.image['source']).name}: {explained['name']} (class {explained['index']}, "
        f"p={explained['probability']:.3f}{', given' if explained['given'] else ''}); "
        f"relevance at {record.layer} ({record.relevance}) {record.total:.4g}"
    )
    for evidence in record.top:
        picture = evidence.picture
        where = f"picture {picture['source']}" if picture else "no picture"
        if picture and picture["source"] != "computed" and picture["seed"] != arguments["seed"]:
            # a stored picture is reused whatever its seed: say so, as --seed named another
            where += f" (seed {picture['seed']}; --force makes one with --seed {arguments['seed']})"
        typer.echo(
            f"  #{evidence.rank + 1} channel {evidence.channel:5d}  relevance "
            f"{evidence.relevance:9.4g}  share {100 * evidence.share:5.2f}%  "
            f"{len(evidence.examples)} examples  {where}"
        )
    for note in record.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"record: {out / record.files['json']}")
    typer.echo(f"page:   {out / record.files['page']} (or: vital atlas serve {out})")
