"""``vital explain``: which channels of a layer carried an image's class, with their pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vital.cli import options, session
from vital.cli.options import Batch, Device, ModelName, Resolution, SettingName, Steps, Weights


def explain_command(
    image: Annotated[Path, typer.Argument(help="The image to explain (its centre crop).")],
    layer: Annotated[
        str, typer.Option("--layer", "-l", help="Layer whose channels explain the prediction.")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Images to mine the channels' dataset examples and picture references from "
            "(folder or list file).",
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", help="Most relevant channels to show.")] = 5,
    class_name: Annotated[
        str | None,
        typer.Option("--class", "-c", help="Class to explain (default: the prediction)."),
    ] = None,
    relevance: Annotated[
        str,
        typer.Option(
            "--relevance", help="lrp (default), epsilon-plus, guided-backprop, grad-x-act, …"
        ),
    ] = "lrp",
    model: ModelName = "mobilenet_v2",
    weights: Weights = None,
    out: Annotated[
        Path, typer.Option("--out", help="Atlas folder the explanation is written to.")
    ] = Path("vital-atlas"),
    references: Annotated[
        int, typer.Option("--references", help="Mined images per channel (picture references).")
    ] = 50,
    mined_as: Annotated[
        str, typer.Option("--mined-as", help="Picture references: 'image' or 'patch'.")
    ] = "image",
    top_images: Annotated[
        int, typer.Option("--top-images", help="Mining stage 1: images kept per channel.")
    ] = 10000,
    patch: Annotated[int, typer.Option("--patch", help="Mining patch side (0: whole).")] = 64,
    stores: Annotated[
        list[Path] | None,
        typer.Option("--store", help="Another atlas or result folder to reuse pictures from."),
    ] = None,
    no_pictures: Annotated[
        bool, typer.Option("--no-pictures", help="Skip the channels' VITAL pictures.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Compute the pictures again even if stored.")
    ] = False,
    setting: SettingName = None,
    steps: Steps = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of pictures that are computed.")] = 0,
    device: Device = "auto",
    resolution: Resolution = None,
    batch: Batch = 4,
) -> None:
    """Explain why the model gives IMAGE its class: the channels of --layer that carried it.

    For the top channels: their relevance (LRP from the class logit) and share, a heatmap of
    the relevance through each, their dataset examples mined from --data, and their VITAL
    pictures (reused from the atlas or --store when stored with the same settings). Writes a
    JSON record and a page into the atlas folder --out.
    """
    from vital.explanation import explain

    loaded = session.load(model, weights, device)
    session.Session.out, session.Session.resumable = out, True
    record = explain(
        loaded,
        image,
        layer=layer,
        top=top,
        data=data,
        out=out,
        target=class_name,
        relevance=relevance,
        setting=options.setting_value(setting),
        settings=options.overrides(steps=steps, resolution=resolution),
        seed=seed,
        references=references,
        mined_as=mined_as,
        top_images=top_images,
        patch=patch,
        pictures=not no_pictures,
        stores=stores or (),
        force=force,
        batch_size=batch,
    )
    explained = record.explained
    typer.echo(
        f"{Path(record.image['source']).name}: {explained['name']} (class {explained['index']}, "
        f"p={explained['probability']:.3f}{', given' if explained['given'] else ''}); "
        f"relevance at {record.layer} ({record.relevance}) {record.total:.4g}"
    )
    for evidence in record.top:
        picture = evidence.picture
        where = f"picture {picture['source']}" if picture else "no picture"
        typer.echo(
            f"  #{evidence.rank + 1} channel {evidence.channel:5d}  relevance "
            f"{evidence.relevance:9.4g}  share {100 * evidence.share:5.2f}%  "
            f"{len(evidence.examples)} examples  {where}"
        )
    for note in record.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"record: {out / record.files['json']}")
    typer.echo(f"page:   {out / record.files['page']} (or: vital atlas serve {out})")
