"""``vital concepts``: what a class is made of at a layer, each concept weighed and pictured."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from vital.cli import options, session
from vital.cli.options import (
    Batch,
    Classes,
    Device,
    ModelName,
    Out,
    Relevance,
    SettingName,
    Steps,
    Weights,
)
from vital.concepts.crops import DEFAULT_CROPS, DEFAULT_SCALE
from vital.concepts.discovery import DEFAULT_COUNT
from vital.concepts.pipeline import DEFAULT_EXAMPLES
from vital.errors import VitalError
from vital.optimize import DEFAULT_SETTING

Count = Annotated[int, options.option("--count", "Number of concepts K.")]
Crops = Annotated[int, typer.Option("--crops", help="Random crops in all.")]
CropScale = Annotated[
    str,
    typer.Option(
        "--crop-scale", help="LOW,HIGH: a crop's area as a fraction of the image's square."
    ),
]
DEFAULT_CROP_SCALE = ",".join(str(v) for v in DEFAULT_SCALE)


def crop_scale(text: str) -> tuple[float, float]:
    """``--crop-scale LOW,HIGH`` as two fractions."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError as error:
        raise VitalError(
            f"--crop-scale is LOW,HIGH (fractions of the image's largest square), not {text!r}."
        ) from error
    return low, high


DATA_HELP = (
    "The class's images: one image, a folder (ImageNet-style tree, class sub-folders, or a plain "
    "folder, e.g. one photo per class), a list file (one image path a line) or "
    "OUT/mining.sqlite. Default: the embedded photos of the class."
)
# The options only the concepts' pictures use; --seed also draws the crops and the NMF.
PICTURE_ONLY = ("pictured", "setting", "steps", "batch")
EXAMPLES_HELP = "Examples per concept: squares around its peak in its best crops."


def concepts_command(
    context: typer.Context,
    classes: Classes,
    layer: Annotated[str, options.option("--layer", "Layer whose activations are factorised.")],
    data: Annotated[Path | None, options.option("--data", DATA_HELP)] = None,
    count: Count = DEFAULT_COUNT,
    crops: Crops = DEFAULT_CROPS,
    scale: CropScale = DEFAULT_CROP_SCALE,
    examples: Annotated[int, typer.Option("--examples", help=EXAMPLES_HELP)] = DEFAULT_EXAMPLES,
    relevance: Relevance = "lrp",
    no_pictures: Annotated[
        bool, typer.Option("--no-pictures", help="Skip the concepts' VITAL pictures.")
    ] = False,
    pictured: Annotated[
        int | None,
        typer.Option("--pictured", help="Picture only the N concepts with the largest shares."),
    ] = None,
    model: ModelName = "mobilenet_v2",
    weights: Weights = None,
    setting: SettingName = DEFAULT_SETTING,
    steps: Steps = None,
    seed: Annotated[int, options.option("--seed", "Seed of crops, NMF and pictures.")] = 0,
    out: Out = Path("vital-out"),
    device: Device = "auto",
    batch: Batch = 8,
) -> None:
    """Find what --class is made of at --layer: K concepts, their shares, maps and pictures.

    Random crops of the class's images are factorised (NMF) into concepts; each concept's share
    of the class's relevance at the layer (LRP from the logit), where it sits on each image,
    its examples (the part around its peak in its best crops) and its VITAL picture. Writes
    OUT/concepts.json, OUT/overview.png, OUT/directions.npy (the concepts' directions, one a
    row), OUT/maps/, OUT/pictures/, OUT/examples/.
    """
    from vital.concepts import concepts

    names = options.names(classes)
    if len(names) != 1:
        raise VitalError("concepts are found for one class at a time: give one --class.")
    if no_pictures:  # what only the pictures use would be dropped unseen
        options.refuse_unused(context, PICTURE_ONLY, "--no-pictures makes no pictures")
    if pictured is not None and pictured < 1:
        raise VitalError(f"--pictured N pictures at least 1 concept (or give --no-pictures), "
                         f"not {pictured}.")  # fmt: skip
    session.check_out(out)
    loaded = session.load(model, weights, device)
    session.Session.out = out
    session.Session.message = lambda: _interrupted(out)
    report = concepts(
        loaded,
        names[0],
        data,
        layer=layer,
        count=count,
        crops=crops,
        crop_scale=crop_scale(scale),
        examples=examples,
        pictures=not no_pictures,
        pictured=pictured,
        setting=options.setting_value(setting),
        settings=options.overrides(steps=steps),
        seed=seed,
        relevance=relevance,
        out=out,
        batch_size=batch,
    )
    print_concepts(json.loads(report.to_json()))
    typer.echo(f"record: {out / 'concepts.json'}")
    typer.echo(f"overview: {out / 'overview.png'}")


def _interrupted(out: Path) -> str:
    """What a stopped run keeps: only pictures that were finished are named (there may be none)."""
    if not any((out / "pictures").glob("*.json")):
        return "interrupted: the analysis was not finished; the same command again runs it anew."
    return (
        f"interrupted: the concepts' pictures finished so far are in {out / 'pictures'}; the "
        "same command again finds the concepts anew and takes those pictures, not making them "
        "again."
    )


def print_concepts(record: Mapping) -> None:
    """The concepts' shares and pictures, from a ``concepts.json`` record."""
    explained = record["class"]
    typer.echo(
        f"{explained['name']} (class {explained['index']}) at {record['layer']}: "
        f"{len(record['concepts'])} concepts from {record['crops']} crops of {record['images']} "
        f"image(s) carry {record['explained_share']:.1%} of its relevance"
    )
    for entry in record["concepts"]:
        picture = (
            f"picture {entry['activation'] / entry['reference_activation']:.2f}x its references"
            if entry["activation"] is not None and entry["reference_activation"]
            else "no picture"
        )
        if entry.get("shortfall"):  # a report written before the field: nothing to say
            picture += f" ({entry['shortfall']}: it does not show the concept)"
        typer.echo(
            f"  concept {entry['index']:3d}  share {entry['share']:6.1%}  "
            f"{len(entry['examples'])} examples  {picture}"
        )
    for note in record["notes"]:
        typer.echo(f"note: {note}")


def report_added(added, out: Path) -> None:
    """What :func:`vital.concepts.add_concepts` did: reused, or the concepts found; their page."""
    explained = added.record["class"]
    where = f"{explained['name']} (class {explained['index']}) at {added.record['layer']}"
    if added.reused:
        typer.echo(f"reused the concepts of {where}, stored with the same inputs")
    else:
        if added.forced:
            typer.echo(f"recomputing the concepts of {where} (--force)")
        elif added.changed:
            typer.echo(f"recomputed the concepts of {where}: " + "; ".join(added.changed[:3]))
        print_concepts(added.record)
    typer.echo(f"page: {added.page} (or: vital atlas serve {out})")


def explain_by_concepts(
    loaded, image: Path, layer: str, target, count: int, out: Path, **arguments
) -> None:
    """``explain --by concepts``: the photo's own concepts for a class (default: the prediction).

    They go into the atlas ``out`` (:func:`vital.concepts.add_concepts`) with their pages.
    """
    from vital.api import classify
    from vital.concepts import add_concepts
    from vital.explanation import load_image

    if target is None:
        pixels, _ = load_image(image, loaded.preprocessing.input_size)
        normalised = loaded.preprocessing.normalize(pixels[None].to(loaded.device, loaded.dtype))
        target = int(classify(loaded, normalised)[0].argmax())
    session.Session.out, session.Session.resumable = out, True
    added = add_concepts(loaded, target, image, layer=layer, count=count, out=out, **arguments)
    report_added(added, out)
