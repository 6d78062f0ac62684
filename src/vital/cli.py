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
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="vital, or a baseline to compare with: fourier, maco, deepinversion "
            "(each with its published defaults; --setting, --refs and --tap are VITAL's).",
        ),
    ] = "vital",
) -> None:
    """Visualise output classes with VITAL (or a baseline, --method)."""
    from vital.api import visualize

    loaded = _load(model, weights, device)
    if method == "vital":
        settings = _settings(setting, steps, seed, resolution)
    else:
        from vital.baselines import settings_for

        settings = settings_for(method, loaded, steps=steps, seed=seed, resolution=resolution)
    results = visualize(
        loaded,
        classes,
        refs,
        settings=settings,
        taps=taps,
        out=out,
        batch_size=batch,
        reference_count=references,
        method=method,
    )
    _report(results, out, "class" if method == "vital" else method)


@app.command("compare")
def compare_command(
    classes: Annotated[
        str,
        typer.Option("--classes", help="Comma-separated classes: index, name or WordNet id."),
    ],
    model: ModelName = "mobilenet_v2",
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated: vital, fourier, maco, deepinversion.")
    ] = "vital,fourier,maco,deepinversion",
    judge: Annotated[
        str | None,
        typer.Option("--judge", help="A second model for top-1/top-5 and realism."),
    ] = None,
    judge_weights: Annotated[
        str | None, typer.Option("--judge-weights", help="State-dict file of the judge.")
    ] = None,
    refs: Annotated[
        str | None,
        typer.Option(
            "--refs", help="VITAL's references and the metrics' real images (default: photos)."
        ),
    ] = None,
    real_refs: Annotated[
        str | None,
        typer.Option("--real-refs", help="Held-out real images for FID/realism (default: --refs)."),
    ] = None,
    references: Annotated[int, typer.Option("--references", help="Images per class.")] = 50,
    weights: Weights = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="Steps for every method (default: each method's own)."),
    ] = None,
    out: Out = Path("vital-compare"),
    seed: Seed = 0,
    device: Device = "cpu",
    batch: Batch = 8,
    clip_weights: Annotated[
        str | None, typer.Option("--clip-weights", help="Local open_clip weights (optional).")
    ] = None,
) -> None:
    """Compare VITAL with the baselines on the same classes: table and grid."""
    from vital.compare import compare, write_report

    loaded = _load(model, weights, device)
    judged = _load(judge, judge_weights, device) if judge else None
    comparison = compare(
        loaded,
        [c.strip() for c in classes.split(",") if c.strip()],
        methods,
        judge=judged,
        references=refs,
        real_references=real_refs,
        steps=steps,
        seed=seed,
        out=out,
        batch_size=batch,
        reference_count=references,
        clip_weights=clip_weights,
    )
    paths = write_report(comparison, out)
    typer.echo(paths["table"].read_text().split("\n\n")[0])
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


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
