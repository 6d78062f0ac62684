"""The ``vital`` command: parses options, calls the library, prints where results went."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vital.errors import VitalError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="VITAL feature visualisation: see what a vision model's classes and neurons encode.",
)

# Options every generating command shares.
Steps = Annotated[int | None, typer.Option("--steps", help="Optimisation steps (full resolution).")]
Out = Annotated[Path, typer.Option("--out", help="Output folder.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the first image; image i uses seed+i.")]
Device = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
Resolution = Annotated[
    int | None, typer.Option("--resolution", help="Image side (default: the model's input size).")
]
Batch = Annotated[int, typer.Option("--batch", help="Targets optimised together.")]
ModelName = Annotated[str, typer.Option("--model", "-m", help="Model name (see `vital models`).")]
Weights = Annotated[
    str | None,
    typer.Option("--weights", help="State-dict file; 'random' for an untrained network."),
]
SettingNumber = Annotated[
    int, typer.Option("--setting", help="The authors' setting: 0 (half-res first), 1, 2.")
]
TapOption = Annotated[
    list[str] | None,
    typer.Option("--tap", help="NAME=WEIGHT; repeat for each tap (default: preset or discovered)."),
]


def _settings(setting: int, steps: int | None, seed: int, resolution: int | None, **extra):
    from vital.optimize import Settings

    overrides = {"seed": seed, "resolution": resolution, **extra}
    if steps is not None:
        overrides["steps"] = steps
    return Settings.setting(setting, **overrides)


def _load(model: str, weights: str | None, device: str):
    from vital.zoo import load_model

    return load_model(model, weights=weights, device=device)


def _report(results, out: Path, title: str) -> None:
    from vital.grids import grid

    for result in results:
        evaluation = result.record.get("evaluation", {})
        line = f"  {result.target.describe():32s} -> {result.paths.get('png', '')}"
        if "probability" in evaluation:
            line += f"  p={evaluation['probability']:.3f} rank={evaluation['rank']}"
        if "activation" in evaluation:
            line += (
                f"  activation={evaluation['activation']:.3g} (references "
                f"{evaluation['reference_activation']:.3g}, noise "
                f"{evaluation['initial_activation']:.3g})"
            )
        typer.echo(line)
    sheet = grid([r.image for r in results], [r.target.describe() for r in results])
    path = out / f"{title}-grid.png"
    sheet.save(path)
    typer.echo(f"grid: {path}")


@app.command("class")
def class_command(
    classes: Annotated[
        list[str], typer.Option("--class", "-c", help="Class index, name or WordNet id; repeat.")
    ],
    model: ModelName = "mobilenet_v2",
    refs: Annotated[
        str | None,
        typer.Option(
            "--refs",
            help="Reference folder: ImageNet-style tree, class sub-folders, or (one class) "
            "a plain folder. Default: the embedded photos of the class.",
        ),
    ] = None,
    references: Annotated[int, typer.Option("--references", help="Reference views (N).")] = 50,
    weights: Weights = None,
    taps: TapOption = None,
    setting: SettingNumber = 1,
    steps: Steps = None,
    out: Out = Path("vital-out"),
    seed: Seed = 0,
    device: Device = "cpu",
    resolution: Resolution = None,
    batch: Batch = 8,
) -> None:
    """Visualise output classes with VITAL."""
    from vital.api import visualize

    loaded = _load(model, weights, device)
    results = visualize(
        loaded,
        classes,
        refs,
        settings=_settings(setting, steps, seed, resolution),
        taps=taps,
        out=out,
        batch_size=batch,
        reference_count=references,
    )
    _report(results, out, "class")


@app.command()
def neuron(
    layer: Annotated[str, typer.Option("--layer", "-l", help="Target layer (module name).")],
    channels: Annotated[
        list[int] | None, typer.Option("--channel", "-k", help="Channel index; repeat.")
    ] = None,
    direction: Annotated[
        list[Path] | None,
        typer.Option("--direction", help="A concept: .npy vector over the layer's channels."),
    ] = None,
    refs: Annotated[
        str | None,
        typer.Option(
            "--refs",
            help="Folder of images that activate the targets (e.g. mined top-k); "
            "'samples' for the embedded photos.",
        ),
    ] = None,
    relevance: Annotated[
        str, typer.Option("--relevance", help="lrp, lrp-restricted, guided-backprop, grad-x-act…")
    ] = "lrp",
    patches: Annotated[
        int | None,
        typer.Option("--patches", help="Use the best patch of this side (32 or 64) per image."),
    ] = None,
    rank: Annotated[
        bool, typer.Option("--rank", help="Keep the references that activate the target most.")
    ] = False,
    model: ModelName = "mobilenet_v2",
    references: Annotated[int, typer.Option("--references", help="Reference views (N).")] = 50,
    weights: Weights = None,
    taps: TapOption = None,
    setting: SettingNumber = 1,
    steps: Steps = None,
    out: Out = Path("vital-out"),
    seed: Seed = 0,
    device: Device = "cpu",
    resolution: Resolution = None,
    batch: Batch = 8,
) -> None:
    """Visualise inner channels or concept directions with relevance-weighted VITAL."""
    from vital.neurons import NEURON_PRIOR, direction_target, visualize_neurons
    from vital.targets import Channel

    if refs is None:
        raise VitalError(
            "give reference images with --refs DIR (images that activate the channel, e.g. "
            "from `vital mine`), or --refs samples for the embedded photos."
        )
    targets = [Channel(layer, k) for k in channels or []]
    targets += [direction_target(layer, path) for path in direction or []]
    if not targets:
        raise VitalError("name at least one target: --channel K or --direction FILE.npy.")
    loaded = _load(model, weights, device)
    results = visualize_neurons(
        loaded,
        targets,
        refs,
        settings=_settings(setting, steps, seed, resolution, tv_l2=NEURON_PRIOR, l2=NEURON_PRIOR),
        taps=taps,
        relevance=relevance,
        patch_side=patches,
        rank=rank,
        out=out,
        batch_size=batch,
        reference_count=references,
    )
    typer.echo(f"relevance backend: {results[0].record['relevance']}")
    _report(results, out, "neuron")


@app.command()
def demo(
    steps: Steps = 300,
    out: Out = Path("vital-out"),
    seed: Seed = 0,
    device: Device = "cpu",
) -> None:
    """Visualise espresso, Egyptian cat and moped on the embedded MobileNetV2 (a few minutes)."""
    from vital.api import visualize
    from vital.references import from_samples

    typer.echo(
        "Demo: VITAL class visualisations of the embedded MobileNetV2 (ImageNet weights).\n"
        "References: the embedded photos, each expanded to 50 views by random resized crops "
        "and flips (one photo per class, not 50 distinct photos)."
    )
    loaded = _load("mobilenet_v2", None, device)
    photos = {967: "coffee", 285: "chelsea", 665: "motorcycle"}
    references = {index: from_samples([name], seed=seed) for index, name in photos.items()}
    results = visualize(
        loaded,
        list(photos),
        references,
        settings=_settings(1, steps, seed, None),
        out=out,
        batch_size=len(photos),
    )
    _report(results, out, "demo")


@app.command()
def layers(
    model: Annotated[str, typer.Argument(help="Model name.")],
    weights: Weights = "random",
    match: Annotated[
        str | None, typer.Option("--match", help="Only names containing this.")
    ] = None,
) -> None:
    """List the tappable layers of MODEL with their output shapes, and the default taps."""
    from vital.api import resolve_taps
    from vital.taps import list_layers

    loaded = _load(model, weights, "cpu")
    for info in list_layers(loaded.module, loaded.preprocessing.input_size):
        if match and match not in info.name:
            continue
        note = "" if info.calls == 1 else f"  (runs {info.calls}x: not tappable)"
        typer.echo(f"{info.name:48s} {info.kind:24s} {tuple(info.shape)}{note}")
    chosen, source = resolve_taps(loaded, None)
    typer.echo(f"default taps ({source}): " + ", ".join(f"{t.layer}={t.weight:g}" for t in chosen))


@app.command()
def classes(
    model: Annotated[str, typer.Argument(help="Model name.")] = "mobilenet_v2",
    search: Annotated[str | None, typer.Option("--search", help="Filter by text.")] = None,
) -> None:
    """List MODEL's output classes (index, WordNet id, name)."""
    loaded = _load(model, "random", "cpu")  # names depend on the architecture only
    labels = loaded.labels
    if labels is None:
        raise VitalError(f"{model} has no classifier output.")
    for index, name in enumerate(labels.names):
        wnid = labels.wnids[index] if labels.wnids else ""
        if search and search.lower() not in " ".join(labels.synonyms[index]) + wnid:
            continue
        typer.echo(f"{index:5d}  {wnid:10s}  {name}")


@app.command()
def models() -> None:
    """List the models with embedded weights; any torchvision/timm name works with --weights."""
    from vital.zoo import available_models

    for name in available_models():
        typer.echo(name)


def main() -> None:
    """Entry point: user mistakes end with a one-line message and exit status 2."""
    try:
        app()
    except VitalError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished results are in the output folder.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
