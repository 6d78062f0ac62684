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
LearningRate = Annotated[
    float | None, typer.Option("--lr", help="Peak learning rate (default: the setting's, 1).")
]
Jitter = Annotated[
    int | None, typer.Option("--jitter", help="Largest random shift in pixels (default 30).")
]
TapOption = Annotated[
    list[str] | None,
    typer.Option("--tap", help="NAME=WEIGHT; repeat for each tap (default: preset or discovered)."),
]


def _settings(
    setting: int,
    steps: int | None,
    seed: int,
    resolution: int | None,
    lr: float | None = None,
    jitter: int | None = None,
    **extra,
):
    from vital.optimize import Settings

    overrides = {"seed": seed, "resolution": resolution, **extra}
    given = {"steps": steps, "lr": lr, "jitter": jitter}
    overrides.update({name: value for name, value in given.items() if value is not None})
    return Settings.setting(setting, **overrides)


def _load(model: str, weights: str | None, device: str):
    """Load a model; an embedded one whose weights are missing yields its fallback, said once."""
    from vital.zoo import load_model_or_fallback

    loaded, notice = load_model_or_fallback(model, weights=weights, device=device)
    if notice:
        typer.secho(f"note: {notice}", fg=typer.colors.YELLOW, err=True)
    return loaded


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
    if any(r.alpha is not None for r in results):
        # Neurons: each image next to its RGBA view, where the transparency shows the evidence.
        from vital.grids import display_pixels, to_image

        cells, captions = [], []
        for r in results:
            cells += [r.image, to_image(display_pixels(r.pixels), r.alpha)]
            captions += [r.target.describe(), "RGBA (transparency)"]
        sheet = grid(cells, captions, columns=min(4, len(cells)))
    else:
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
    lr: LearningRate = None,
    jitter: Jitter = None,
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
        settings = _settings(setting, steps, seed, resolution, lr, jitter)
    else:
        from vital.baselines import settings_for

        if lr is not None or jitter is not None:
            raise VitalError(
                f"--lr and --jitter set VITAL's optimisation; {method} runs with its published "
                "settings. Leave them out, or use --method vital."
            )

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
            help="Folder of images that activate the targets; 'mined' for the top images "
            "that `vital mine` found (OUT/mining.sqlite) or a mining database path; "
            "'samples' for the embedded photos.",
        ),
    ] = None,
    mined_mode: Annotated[
        str,
        typer.Option(
            "--mined-as", help="With mined references: 'image' (whole images) or 'patch'."
        ),
    ] = "image",
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
    lr: LearningRate = None,
    jitter: Jitter = None,
) -> None:
    """Visualise inner channels or concept directions with relevance-weighted VITAL."""
    from vital.mining import is_mining_database, mined_reference_sets
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
    references_given = refs
    if refs == "mined" or is_mining_database(refs):
        database = out if refs == "mined" else Path(refs)
        references_given = mined_reference_sets(database, loaded, targets, mined_mode, references)
    results = visualize_neurons(
        loaded,
        targets,
        references_given,
        settings=_settings(
            setting, steps, seed, resolution, lr, jitter, tv_l2=NEURON_PRIOR, l2=NEURON_PRIOR
        ),
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
    resolution: Resolution = None,
    batch: Batch = 3,
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
        settings=_settings(1, steps, seed, resolution),
        out=out,
        batch_size=batch,
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


@app.command()
def classes(
    model: Annotated[str, typer.Argument(help="Model name.")] = "mobilenet_v2",
    search: Annotated[
        str | None,
        typer.Option("--search", help="Filter by text in any of a class's names or its id."),
    ] = None,
) -> None:
    """List MODEL's output classes (index, WordNet id, name; other names in brackets)."""
    loaded = _load(model, "random", "cpu")  # names depend on the architecture only
    labels = loaded.labels
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


@app.command()
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


def _channel_list(text: str) -> list[int] | None:
    if text.strip().lower() == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise VitalError(
            f"--channels takes 'all' or indices like 3,17,200; got {text!r}."
        ) from error


@app.command("mine")
def mine_command(
    layer: Annotated[
        str, typer.Option("--layer", "-l", help="Layer to mine (see `vital layers`).")
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", help="Image folder (any depth, ImageNet-style trees too) or list file."
        ),
    ],
    model: ModelName = "mobilenet_v2",
    weights: Weights = None,
    channels: Annotated[
        str, typer.Option("--channels", help="'all' or channel indices: 3,17,200.")
    ] = "all",
    direction: Annotated[
        Path | None,
        typer.Option("--direction", help="Concept direction(s): a .npy of shape (C,) or (D, C)."),
    ] = None,
    top_images: Annotated[
        int, typer.Option("--top-images", help="Stage 1: images kept per unit (spatial max).")
    ] = 10_000,
    top: Annotated[
        int, typer.Option("--top", help="Stage 2: images kept per unit (best patch).")
    ] = 50,
    patch: Annotated[
        int,
        typer.Option(
            "--patch", help="Patch side on the centre crop; 0 ranks whole images (no stage 2)."
        ),
    ] = 64,
    out: Out = Path("vital-out"),
    sheets: Annotated[
        str,
        typer.Option(
            "--sheets",
            help="Contact sheets: 'all', 'none', unit numbers (3,17), or 'auto' (all when at most "
            "32 units).",
        ),
    ] = "auto",
    batch: Annotated[int, typer.Option("--batch", help="Images per forward pass.")] = 32,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Decoding processes (default: cores - 1).")
    ] = None,
    device: Device = "cpu",
) -> None:
    """Mine the top images and patches of every channel of a layer in one pass over a dataset."""
    import numpy as np

    from vital.mining import contact_sheet, mine

    loaded = _load(model, weights, device)
    directions = None
    if direction is not None:
        try:
            directions = np.load(direction, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise VitalError(f"cannot read direction file {direction}: {error}") from error
    report = mine(
        loaded,
        layer,
        data,
        out,
        channels=_channel_list(channels),
        directions=directions,
        direction_name=direction.stem if direction is not None else "direction",
        top_images=top_images,
        top=top,
        patch=patch,
        batch_size=batch,
        workers=workers,
    )
    typer.echo(
        f"{len(report.units)} unit(s) of {layer} over {report.images} images "
        f"({report.unreadable} unreadable skipped, {report.not_images} other files ignored)"
    )
    if report.reused:
        typer.echo(f"  reused {len(report.reused)} finished list(s) from the index")
    if report.scanned:
        typer.echo(
            f"  stage 1: {report.seconds['stage1']:.1f} s ({report.images_per_second:.1f} img/s), "
            f"stage 2: {report.seconds['stage2']:.1f} s"
        )
    typer.echo(f"index: {report.database}")
    if sheets == "auto":
        sheets = "all" if len(report.units) <= 32 else "none"
        if sheets == "none":
            typer.echo("no contact sheets for more than 32 units; ask with --sheets 3,17 or all")
    if sheets != "none":
        chosen = (
            report.units
            if sheets == "all"
            else [report.units[i] for i in _sheet_numbers(sheets, len(report.units))]
        )
        folder = out / "sheets"
        folder.mkdir(parents=True, exist_ok=True)
        for unit in chosen:
            path = folder / f"{layer}-{unit.replace(':', '-')}.png"
            contact_sheet(report.database, loaded, layer, unit, count=top).save(path)
        typer.echo(f"contact sheets: {folder} ({len(chosen)})")


def _sheet_numbers(text: str, units: int) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise VitalError(
            f"--sheets takes all, none, auto or numbers like 0,3; got {text!r}"
        ) from error
    wrong = [n for n in numbers if not 0 <= n < units]
    if wrong:
        raise VitalError(f"--sheets {wrong}: there are {units} mined units (0..{units - 1}).")
    return numbers


atlas_app = typer.Typer(
    no_args_is_help=True, help="Visualise many units, record them, browse them as a web page."
)
app.add_typer(atlas_app, name="atlas")


@atlas_app.command("build")
def atlas_build(
    out: Annotated[Path, typer.Option("--out", help="Atlas folder.")],
    model: ModelName = "mobilenet_v2",
    weights: Weights = None,
    layer: Annotated[
        str | None, typer.Option("--layer", "-l", help="Layer whose channels to visualise.")
    ] = None,
    channels: Annotated[
        str, typer.Option("--channels", help="'all' or channel indices like 3,17,200.")
    ] = "all",
    class_list: Annotated[
        str | None,
        typer.Option("--classes", help="Comma-separated classes (index, name or WordNet id)."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Images to mine the layer's channels' references from."),
    ] = None,
    class_refs: Annotated[
        str | None,
        typer.Option(
            "--class-refs",
            help="References of --classes: an ImageNet-style tree or class sub-folders "
            "(default: the embedded photos).",
        ),
    ] = None,
    references: Annotated[int, typer.Option("--references", help="References per unit.")] = 50,
    top_images: Annotated[
        int, typer.Option("--top-images", help="Mining stage 1: images kept per channel.")
    ] = 10000,
    patch: Annotated[int, typer.Option("--patch", help="Mining patch side (0: whole).")] = 64,
    mined_as: Annotated[
        str, typer.Option("--mined-as", help="Channel references: 'image' or 'patch'.")
    ] = "image",
    engine: Annotated[str, typer.Option("--engine", help="local or ray.")] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Ray cluster address (default: start a local one)."),
    ] = None,
    setting: SettingNumber = 1,
    steps: Steps = None,
    seed: Seed = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "auto",
    resolution: Resolution = None,
    batch: Batch = 4,
) -> None:
    """Visualise every selected unit into an atlas folder and write its web pages.

    Channels of --layer get references mined from --data (`vital mine`, stored in the atlas
    folder); --classes get references from --data or the embedded photos. Re-running skips
    finished units and resumes mining and visualisation where they stopped.
    """
    from vital.api import class_references, class_target
    from vital.atlas import ModelSpec, build_atlas
    from vital.engines import make_engine
    from vital.mining import mine, mined_references
    from vital.taps import check_layer, list_layers
    from vital.targets import Channel

    spec = ModelSpec(model, weights, device)
    loaded = spec()
    targets = []
    if class_list:
        targets += [class_target(loaded, name.strip()) for name in class_list.split(",") if name]
    if layer:
        if data is None:
            raise VitalError("channels need images to mine references from: --data DIR.")
        selected = _channel_list(channels)
        if selected is None:
            check_layer(layer, loaded.module)
            shapes = {
                i.name: i for i in list_layers(loaded.module, loaded.preprocessing.input_size)
            }
            selected = list(range(shapes[layer].channels))
        mine(
            loaded,
            layer,
            data,
            out,
            channels=selected,
            top_images=top_images,
            top=references,
            patch=patch,
        )
        targets += [Channel(layer, index) for index in selected]
    if not targets:
        raise VitalError("name the units to visualise: --layer L [--channels ...] or --classes.")

    def reference_set(target):
        if target.layer is None:
            return class_references(loaded, target, class_refs, references)
        return mined_references(out, loaded, target.layer, target, mined_as, references)

    result = build_atlas(
        spec,
        targets,
        reference_set,
        out,
        _settings(setting, steps, seed, resolution),
        engine=make_engine(engine, ray_address),
        batch_size=batch,
    )
    typer.echo(
        f"{result.finished} units visualised, {result.failed} failed, {result.skipped} already "
        f"done ({result.units_per_minute:.1f} units/min). Browse: vital atlas serve {out}"
    )


@atlas_app.command("serve")
def atlas_serve(
    folder: Annotated[Path, typer.Argument(help="Atlas folder.")],
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8000,
) -> None:
    """Serve an atlas on http://127.0.0.1:PORT (loopback only) until Ctrl-C."""
    from vital.atlas import make_server

    server = make_server(folder, port, verbose=True)
    typer.echo(f"serving {folder} on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


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
