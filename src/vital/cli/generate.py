"""The commands that generate pictures: ``class``, ``neuron``, ``compare`` and ``demo``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from vital.cli import options, session
from vital.cli.options import (
    Batch,
    Channels,
    Classes,
    Device,
    ModelName,
    Out,
    ReferenceCount,
    Seed,
    SettingName,
    Weights,
)
from vital.errors import VitalError
from vital.methods import DEFAULT_METHOD, METHODS, method_class, method_name
from vital.optimize import DEFAULT_SETTING
from vital.references import DEFAULT_REFERENCES
from vital.targets import resolve_targets

COMPARE_REFS_HELP = (
    "VITAL's references and the metrics' real images (default: the embedded photos)."
)
REAL_REFS_HELP = "Held-out real images for FID/realism (default: --refs)."
COMPARE_STEPS_HELP = "Steps for every method (default: each method's own)."
NEURON_REFS_HELP = (
    "Folder of images that activate the targets; 'mined' for the top images that "
    "`vital mine` found (OUT/mining.sqlite) or a mining database path. Default: the "
    "embedded photos."
)
NEURON_PATCH_HELP = (
    "References: the best patch of this side (32, 64) of each image; 'auto': sized to the unit's "
    "receptive field (whole images where it covers most of the image); 0 or left out: whole "
    "images."
)
RELEVANCE_FLOOR_HELP = (
    "A floor F in [0, 1) under the normalised relevance at every position, F + (1 - F)·r: "
    "0.5 pictures a concept's examples (OUT/examples of `vital concepts`) as that command "
    "does. Default: 0, the authors' weights."
)


def _generate(targets, references, kind: str, common: dict, **method_options) -> list:
    """Load the model, run :func:`vital.visualize` with the shared options, report.

    The grid is ``KIND-grid.png`` for VITAL; a baseline's is ``METHOD-grid.png`` for classes,
    ``neuron-METHOD-grid.png`` for channels.
    """
    out, method = common["out"], method_name(common["method"])  # MACO-grid.png is maco's
    session.check_out(out)
    loaded = session.load(common["model"], common["weights"], common["device"])
    if callable(references):  # references that need the loaded model (mined lists)
        references = references(loaded)
    session.Session.resumable = not common["force"]
    results = session.visualize(
        loaded,
        targets,
        references,
        out,
        force=common["force"],
        method=method,
        setting=options.setting_value(common["setting"]),
        settings=options.settings_of(common, "lr", "jitter"),
        batch_size=common["batch"],
        **options.overrides(taps=common["taps"] or None, **method_options),
        **_reference_count(
            method, resolve_targets(loaded, targets), common["ref_count"], method_options
        ),
    )
    baseline = method if kind == "class" else f"{kind}-{method}"
    session.report(results, out, kind if method == DEFAULT_METHOD else baseline)
    return results


@options.sharing(options.model_options, options.generation_options, options.picture_options)
def class_command(
    classes: Annotated[list[str], options.option("--class", options.CLASSES_HELP)],
    refs: Annotated[
        str | None,
        options.option(
            "--refs",
            "Reference folder: ImageNet-style tree, class sub-folders, or (one class) a plain "
            "folder. Default: the embedded photos of the class.",
        ),
    ] = None,
    **common,
) -> None:
    """Visualise output classes with VITAL (or a baseline, --method)."""
    _generate(options.names(classes), refs, "class", common)


def compare_command(
    classes: Classes = None,
    layer: Annotated[
        str | None, options.option("--layer", "With --channel: the channels' layer.")
    ] = None,
    channels: Annotated[
        list[str] | None,
        options.option("--channel", "Compare on inner channels instead (repeat or use commas)."),
    ] = None,
    setting: SettingName = DEFAULT_SETTING,
    model: ModelName = "mobilenet_v2",
    methods: Annotated[
        list[str] | None,
        options.option(
            "--method",
            f"{', '.join(METHODS)}; repeat or use commas (default: all that can visualise "
            "the targets).",
        ),
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option("--judge", help="A second model for top-1/top-5 and realism."),
    ] = None,
    judge_weights: Annotated[
        str | None, typer.Option("--judge-weights", help="State-dict file of the judge.")
    ] = None,
    refs: Annotated[str | None, options.option("--refs", COMPARE_REFS_HELP)] = None,
    real_refs: Annotated[str | None, typer.Option("--real-refs", help=REAL_REFS_HELP)] = None,
    ref_count: ReferenceCount = DEFAULT_REFERENCES,
    weights: Weights = None,
    steps: Annotated[int | None, options.option("--steps", COMPARE_STEPS_HELP)] = None,
    out: Out = Path("vital-out"),
    seed: Seed = 0,
    device: Device = "auto",
    batch: Batch = 8,
    clip_weights: Annotated[
        str | None, typer.Option("--clip-weights", help="Local open_clip weights (optional).")
    ] = None,
    force: options.Force = False,
) -> None:
    """Compare VITAL with the baselines on the same classes (or inner channels): table, grid."""
    from vital.compare import compare, methods_for, write_report
    from vital.targets import Channel

    if bool(classes) == bool(channels):
        raise VitalError("compare either classes (--class C) or channels (--layer L --channel K).")
    if channels and not layer:
        raise VitalError("--channel selects channels of --layer; name the layer too.")
    if layer and not channels:  # it would be dropped: classes have no layer
        raise VitalError("--layer is the layer of --channel K; add the channels or leave it out.")
    if judge_weights and not judge:
        raise VitalError("--judge-weights are the weights of --judge MODEL; name the judge too.")
    session.check_out(out)
    loaded = session.load(model, weights, device)
    if channels:
        targets = [Channel(layer, k) for k in options.integers(channels, "--channel")]
    else:
        targets = options.names(classes)
    comparison = compare(
        loaded,
        targets,
        options.names(methods) or methods_for(resolve_targets(loaded, targets)),
        judge=session.load(judge, judge_weights, device) if judge else None,
        references=refs,
        real_references=real_refs,
        settings=options.overrides(steps=steps),
        seed=seed,
        setting=options.setting_value(setting),
        out=out,
        batch_size=batch,
        reference_count=ref_count,
        clip_weights=clip_weights,
        force=force,
    )
    _print_report(write_report(comparison, out))


# The method options that only choose or cut references, and the options that set them.
_REFERENCE_OPTIONS = {"patch_side": "--patch", "rank": "--rank"}


def _reference_count(method: str, targets, count: int, method_options: dict) -> dict:
    """``reference_count`` for a method that uses references; nothing for one that has none.

    A count, a patch side or a ranking given to a method without references would be dropped
    unseen (or refused in the API's words): each is refused, named as the option it came from.
    """
    if method_class(method, targets).uses_references:
        return {"reference_count": count}
    given = ["--ref-count"] if count != DEFAULT_REFERENCES else []
    given += [
        option
        for name, option in _REFERENCE_OPTIONS.items()
        if method_options.get(name) not in (None, False)
    ]
    if given:
        raise VitalError(
            f"--method {method} uses no reference images: leave out {' and '.join(given)}."
        )
    return {}


# The options of relevance-weighted VITAL, and the command-line options that set them.
_RELEVANCE_OPTIONS = {"relevance": "--relevance", "relevance_floor": "--relevance-floor"}


def _check_relevance_options(method: str, targets, method_options: dict) -> None:
    """Refuse relevance options given to a method that weighs nothing by relevance.

    The method would refuse them in the API's words (``fourier has no option relevance``);
    here they are named as the options they came from.
    """
    fields = {field.name for field in dataclasses.fields(method_class(method, targets))}
    given = [
        option
        for name, option in _RELEVANCE_OPTIONS.items()
        if method_options.get(name) is not None and name not in fields
    ]
    if given:
        raise VitalError(
            f"--method {method} weighs nothing by relevance: leave out {' and '.join(given)}."
        )


def _print_report(paths: dict[str, Path]) -> None:
    typer.echo(paths["table"].read_text().split("\n\n")[0])
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


@options.sharing(options.model_options, options.generation_options, options.picture_options)
def neuron(
    layer: Annotated[str, options.option("--layer", "Target layer (module name).")],
    channels: Channels = None,
    direction: Annotated[
        list[Path] | None,
        options.option("--direction", "A concept: .npy vector over the layer's channels."),
    ] = None,
    refs: Annotated[str | None, options.option("--refs", NEURON_REFS_HELP)] = None,
    mined_mode: options.MinedAs = "image",
    relevance: Annotated[
        str | None, typer.Option("--relevance", help=options.RELEVANCE_HELP + " Default: lrp.")
    ] = None,
    patch: Annotated[str | None, options.option("--patch", NEURON_PATCH_HELP)] = None,
    rank: Annotated[
        bool, typer.Option("--rank", help="Keep the references that activate the target most.")
    ] = False,
    relevance_floor: Annotated[
        float | None, typer.Option("--relevance-floor", help=RELEVANCE_FLOOR_HELP)
    ] = None,
    **common,
) -> None:
    """Visualise inner channels or concept directions with relevance-weighted VITAL."""
    from vital.methods.vital_neuron import check_relevance_floor, direction_target
    from vital.mining import is_mining_database, mined_reference_sets
    from vital.targets import Channel

    targets = [Channel(layer, k) for k in options.integers(channels, "--channel")]
    targets += [direction_target(layer, path) for path in direction or []]
    if not targets:
        raise VitalError("name at least one target: --channel K or --direction FILE.npy.")
    _check_relevance_options(
        method_name(common["method"]),
        targets,
        {"relevance": relevance, "relevance_floor": relevance_floor},
    )
    if relevance_floor is not None:
        check_relevance_floor(relevance_floor)  # before the model loads
    mined = refs == "mined" or (refs is not None and is_mining_database(refs))
    if mined_mode != "image" and not mined:  # "image" is the default: only another is a choice
        raise VitalError(
            f"--mined-as {mined_mode} chooses how mined references are read: give --refs mined "
            "(or a mining database), or leave --mined-as out."
        )
    references = refs
    if refs is None and method_class(common["method"], targets).uses_references:
        typer.echo("references: the embedded photos (no --refs given)")
    if mined:
        database = common["out"] if refs == "mined" else Path(refs)
        references = lambda loaded: mined_reference_sets(  # noqa: E731
            database, loaded, targets, mined_mode, common["ref_count"]
        )
    results = _generate(
        targets,
        references,
        "neuron",
        common,
        relevance=relevance,
        patch_side=options.patch_side(patch),
        rank=rank or None,
        relevance_floor=relevance_floor,
    )
    if results and results[0].record.relevance:
        typer.echo(f"relevance backend: {results[0].record.relevance}")


@options.sharing(options.picture_options, batch=3)
def demo(out: Out = Path("vital-out"), force: options.Force = False, **common) -> None:
    """Visualise espresso, Egyptian cat and moped on the embedded MobileNetV2 (about 40 s).

    About 40 s on an idle 2-core CPU, minutes on a busy one. The fast setting by default: the
    authors' loss in 300 steps through a Fourier parametrisation (docs/method.md); --setting 1
    for the authors' own 2000-step setting (about 250 s).
    """
    from vital.references import from_samples

    session.check_out(out)
    loaded = session.load("mobilenet_v2", None, common["device"])
    typer.echo(
        f"Demo: VITAL class visualisations of the embedded {loaded.name} (ImageNet weights).\n"
        f"References: the embedded photos, each expanded to {DEFAULT_REFERENCES} views by random "
        f"resized crops and flips (one photo per class, not {DEFAULT_REFERENCES} distinct photos)."
    )
    photos = {967: "coffee", 285: "chelsea", 665: "motorcycle"}
    references = {
        index: from_samples([name], seed=common["seed"]) for index, name in photos.items()
    }
    session.Session.resumable = not force
    results = session.visualize(
        loaded,
        list(photos),
        references,
        out,
        force=force,
        setting=options.setting_value(common["setting"]),
        settings=options.settings_of(common),
        batch_size=common["batch"],
    )
    session.report(results, out, "demo")
