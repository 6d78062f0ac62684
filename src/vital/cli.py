"""The ``vital`` command: parses options, calls the library, prints where results went.

Commands pass the library only what the user gave (overrides); the defaults are the methods'
own (:func:`vital.driver.resolve_settings`). Every list option can be repeated and integer lists
may also be comma-separated (``--channel 3 --channel 17`` or ``--channel 3,17``).
"""

from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path
from typing import Annotated

import click
import typer

from vital.errors import VitalError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="VITAL feature visualisation: see what a vision model's classes and neurons encode.",
)


class _Session:
    """What a running command has saved, for the message after Ctrl-C."""

    out: Path | None = None
    finished: int = 0
    resumable: bool = False

    @classmethod
    def count(cls, _result) -> None:
        cls.finished += 1


def _version(value: bool) -> None:
    if value:
        from vital.version import __version__

        typer.echo(f"vital {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """VITAL feature visualisation: see what a vision model's classes and neurons encode."""


# --- options every generating command shares ---------------------------------------------------

Steps = Annotated[
    int | None, typer.Option("--steps", help="Optimisation steps (default: the method's).")
]
Out = Annotated[Path, typer.Option("--out", help="Output folder.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the first image; image i uses seed+i.")]
Device = Annotated[
    str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")
]
Resolution = Annotated[
    int | None, typer.Option("--resolution", help="Image side (default: the model's input size).")
]
Batch = Annotated[int, typer.Option("--batch", help="Targets optimised together.")]
ModelName = Annotated[str, typer.Option("--model", "-m", help="Model name (see `vital models`).")]
Weights = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="'DEFAULT' or a named weight (IMAGENET1K_V2, a timm tag): the library's pretrained "
        "weights, downloaded once then cached; a state-dict file; 'random'. Default: embedded "
        "or already cached weights.",
    ),
]
SettingName = Annotated[
    str | None,
    typer.Option(
        "--setting",
        help="VITAL's setting: fast (300 steps, Fourier parametrisation), or the authors' 0 "
        "(half resolution first), 1 (default), 2.",
    ),
]
LearningRate = Annotated[
    float | None, typer.Option("--lr", help="Peak learning rate (default: the method's).")
]
Jitter = Annotated[
    int | None, typer.Option("--jitter", help="Largest random shift in pixels (default: method's).")
]
TapOption = Annotated[
    list[str] | None,
    typer.Option("--tap", help="NAME=WEIGHT; repeat for each tap (default: preset or discovered)."),
]
ReferenceCount = Annotated[
    int | None, typer.Option("--references", help="Reference views per target (N, default 50).")
]
ChannelSelection = Annotated[
    list[str] | None,
    typer.Option(
        "--channel",
        "--channels",
        "-k",
        help="'all' (the default) or channel indices; repeat, or separate with commas.",
    ),
]
Method = Annotated[
    str,
    typer.Option(
        "--method", help="vital, or a baseline to compare with: fourier, maco, deepinversion."
    ),
]


def _overrides(**given) -> dict:
    """The settings the user gave (``None``: not given)."""
    return {name: value for name, value in given.items() if value is not None}


def _setting(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text.strip()


def _options(**given) -> dict:
    """Method options the user gave (``None``: not given, so the method's default)."""
    return {name: value for name, value in given.items() if value is not None}


def _integers(values: list[str] | None, option: str) -> list[int]:
    """Repeated and/or comma-separated integers: ``["3", "17,200"]`` → ``[3, 17, 200]``."""
    numbers = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                numbers.append(int(part))
            except ValueError as error:
                raise VitalError(
                    f"{option} takes whole numbers (repeat it, or separate them with commas), "
                    f"not {part!r}."
                ) from error
    return numbers


def _names(values: list[str] | None) -> list[str]:
    """Repeated and/or comma-separated class names: ``["espresso,daisy", "967"]``."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


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
        evaluation = result.record.evaluation
        line = f"  {result.target.describe():32s} -> {result.paths.get('png', '')}"
        if "probability" in evaluation:
            line += f"  p={evaluation['probability']:.3f} rank={evaluation['rank']}"
        if "activation" in evaluation:
            line += f"  activation={evaluation['activation']:.3g}"
            extras = [
                f"{label} {evaluation[key]:.3g}"
                for key, label in (("reference_activation", "references"),
                                   ("initial_activation", "noise"))
                if evaluation.get(key) is not None
            ]  # fmt: skip
            line += f" ({', '.join(extras)})" if extras else ""
        typer.echo(line)
    if any(r.alpha is not None for r in results):
        # Each image next to its RGBA view, where the transparency shows the evidence.
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


def _check_out(out: Path) -> Path:
    """Fail before any work when results could not be written."""
    from vital.store import output_folder

    return output_folder(out)


def _visualize(loaded, targets, references, out: Path, **arguments):
    """Run :func:`vital.visualize`, counting finished results for the interrupt message."""
    from vital.api import visualize

    _Session.out = out
    return visualize(loaded, targets, references, out=out, on_result=_Session.count, **arguments)


def _generation_options(
    model: ModelName = "mobilenet_v2",
    references: ReferenceCount = None,
    weights: Weights = None,
    taps: TapOption = None,
    setting: SettingName = None,
    steps: Steps = None,
    out: Out = Path("vital-out"),
    seed: Seed = 0,
    device: Device = "auto",
    resolution: Resolution = None,
    batch: Batch = 8,
    lr: LearningRate = None,
    jitter: Jitter = None,
    method: Method = "vital",
) -> None:
    """The options ``vital class`` and ``vital neuron`` share, declared once (``_generating``)."""


def _generating(command):
    """Give a command the shared options after its own; it receives them as ``**common``.

    typer reads a command's options from its signature: this one is the command's own
    parameters followed by :func:`_generation_options`'.
    """
    own = [
        parameter
        for parameter in inspect.signature(command, eval_str=True).parameters.values()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    shared = list(inspect.signature(_generation_options, eval_str=True).parameters.values())
    command.__signature__ = inspect.Signature([*own, *shared])
    command.__annotations__ = {**_generation_options.__annotations__, **command.__annotations__}
    return command


def _generate(targets, references, kind: str, common: dict, **options) -> list:
    """Load the model, run :func:`vital.visualize` with the shared options, report.

    The grid is ``KIND-grid.png`` for VITAL; a baseline's is ``METHOD-grid.png`` for classes,
    ``neuron-METHOD-grid.png`` for channels.
    """
    out, method = common["out"], common["method"]
    _check_out(out)
    loaded = _load(common["model"], common["weights"], common["device"])
    if callable(references):  # references that need the loaded model (mined lists)
        references = references(loaded)
    results = _visualize(
        loaded,
        targets,
        references,
        out,
        method=method,
        setting=_setting(common["setting"]),
        settings=_overrides(
            **{k: common[k] for k in ("steps", "seed", "resolution", "lr", "jitter")}
        ),
        batch_size=common["batch"],
        **_options(taps=common["taps"] or None, reference_count=common["references"], **options),
    )
    baseline = method if kind == "class" else f"{kind}-{method}"
    _report(results, out, kind if method == "vital" else baseline)
    return results


@app.command("class")
@_generating
def class_command(
    classes: Annotated[
        list[str],
        typer.Option(
            "--class", "-c", help="Class index, name or WordNet id; repeat or use commas."
        ),
    ],
    refs: Annotated[
        str | None,
        typer.Option(
            "--refs",
            help="Reference folder: ImageNet-style tree, class sub-folders, or (one class) "
            "a plain folder. Default: the embedded photos of the class.",
        ),
    ] = None,
    **common,
) -> None:
    """Visualise output classes with VITAL (or a baseline, --method)."""
    _generate(_names(classes), refs, "class", common)


@app.command("compare")
def compare_command(
    classes: Annotated[
        list[str] | None,
        typer.Option("--class", "-c", "--classes", help="Class index, name or WordNet id; repeat."),
    ] = None,
    layer: Annotated[
        str | None, typer.Option("--layer", "-l", help="With --channel: the channels' layer.")
    ] = None,
    channels: Annotated[
        list[str] | None,
        typer.Option(
            "--channel", "-k", help="Compare on inner channels instead (repeat or use commas)."
        ),
    ] = None,
    setting: SettingName = None,
    model: ModelName = "mobilenet_v2",
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            "--methods",
            help="vital, fourier, maco, deepinversion; repeat or separate with commas "
            "(default: all).",
        ),
    ] = None,
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
    device: Device = "auto",
    batch: Batch = 8,
    clip_weights: Annotated[
        str | None, typer.Option("--clip-weights", help="Local open_clip weights (optional).")
    ] = None,
) -> None:
    """Compare VITAL with the baselines on the same classes (or inner channels): table, grid."""
    from vital.compare import METHODS, compare, write_report
    from vital.targets import Channel

    if bool(classes) == bool(channels):
        raise VitalError("compare either classes (--class C) or channels (--layer L --channel K).")
    if channels and not layer:
        raise VitalError("--channel selects channels of --layer; name the layer too.")
    _check_out(out)
    loaded = _load(model, weights, device)
    chosen = [m.strip() for value in methods or [] for m in value.split(",") if m.strip()]
    if channels:
        targets = [Channel(layer, k) for k in _integers(channels, "--channel")]
        chosen = chosen or [m for m in METHODS if m != "deepinversion"]  # classes only
    else:
        targets = _names(classes)
    comparison = compare(
        loaded,
        targets,
        chosen or METHODS,
        judge=_load(judge, judge_weights, device) if judge else None,
        references=refs,
        real_references=real_refs,
        steps=steps,
        seed=seed,
        setting=_setting(setting),
        out=out,
        batch_size=batch,
        reference_count=references,
        clip_weights=clip_weights,
    )
    _print_report(write_report(comparison, out))


def _print_report(paths: dict[str, Path]) -> None:
    typer.echo(paths["table"].read_text().split("\n\n")[0])
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")


@app.command()
@_generating
def neuron(
    layer: Annotated[str, typer.Option("--layer", "-l", help="Target layer (module name).")],
    channels: Annotated[
        list[str] | None,
        typer.Option("--channel", "-k", help="Channel index; repeat, or separate with commas."),
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
        str | None,
        typer.Option("--relevance", help="lrp (default), lrp-restricted, guided-backprop, …"),
    ] = None,
    patches: Annotated[
        int | None,
        typer.Option("--patches", help="Use the best patch of this side (32 or 64) per image."),
    ] = None,
    rank: Annotated[
        bool, typer.Option("--rank", help="Keep the references that activate the target most.")
    ] = False,
    **common,
) -> None:
    """Visualise inner channels or concept directions with relevance-weighted VITAL."""
    from vital.methods.vital_neuron import direction_target
    from vital.mining import is_mining_database, mined_reference_sets
    from vital.targets import Channel

    targets = [Channel(layer, k) for k in _integers(channels, "--channel")]
    targets += [direction_target(layer, path) for path in direction or []]
    if not targets:
        raise VitalError("name at least one target: --channel K or --direction FILE.npy.")
    if common["method"] == "vital" and refs is None:
        raise VitalError(
            "give reference images with --refs DIR (images that activate the channel, e.g. "
            "from `vital mine`), or --refs samples for the embedded photos."
        )
    references = refs
    if refs == "mined" or (refs is not None and is_mining_database(refs)):
        database = common["out"] if refs == "mined" else Path(refs)
        count = common["references"] or 50
        references = lambda loaded: mined_reference_sets(  # noqa: E731
            database, loaded, targets, mined_mode, count
        )
    results = _generate(
        targets,
        references,
        "neuron",
        common,
        relevance=relevance,
        patch_side=patches,
        rank=rank or None,
    )
    if results and results[0].record.relevance:
        typer.echo(f"relevance backend: {results[0].record.relevance}")


@app.command()
def demo(
    setting: Annotated[
        str,
        typer.Option("--setting", help="fast (default: 300 steps) or the authors' 0, 1, 2."),
    ] = "fast",
    steps: Steps = None,
    out: Out = Path("vital-out"),
    seed: Seed = 0,
    device: Device = "auto",
    resolution: Resolution = None,
    batch: Batch = 3,
) -> None:
    """Visualise espresso, Egyptian cat and moped on the embedded MobileNetV2 (a few minutes).

    The fast setting by default: the authors' loss in 300 steps through a Fourier
    parametrisation (docs/method.md); --setting 1 for the authors' own 2000-step setting.
    """
    from vital.references import from_samples

    _check_out(out)
    loaded = _load("mobilenet_v2", None, device)
    typer.echo(
        f"Demo: VITAL class visualisations of the embedded {loaded.name} (ImageNet weights).\n"
        "References: the embedded photos, each expanded to 50 views by random resized crops "
        "and flips (one photo per class, not 50 distinct photos)."
    )
    photos = {967: "coffee", 285: "chelsea", 665: "motorcycle"}
    references = {index: from_samples([name], seed=seed) for index, name in photos.items()}
    results = _visualize(
        loaded,
        list(photos),
        references,
        out,
        setting=_setting(setting),
        settings=_overrides(steps=steps, seed=seed, resolution=resolution),
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
    from vital.methods.vital_class import resolve_taps
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


def _channel_list(values: list[str] | None) -> list[int] | None:
    """``all`` (or nothing) → ``None``; else the channel indices."""
    if not values or [v.strip().lower() for v in values] == ["all"]:
        return None
    return _integers(values, "--channel")


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
    channels: ChannelSelection = None,
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
        int | None,
        typer.Option("--workers", help="Local engine's decoding processes (default: cores - 1)."),
    ] = None,
    device: Device = "auto",
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local (shards in this process) or ray (shards as Ray tasks, the model on GPU "
            "workers when the cluster has GPUs; needs Ray: pip install 'vital\\[ray]').",
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Ray cluster for --engine ray (default: start a local one)."
        ),
    ] = None,
    shard_size: Annotated[
        int,
        typer.Option(
            "--shard-size", help="Images per shard: the unit of distribution and of resuming."
        ),
    ] = 1024,
) -> None:
    """Mine the top images and patches of every channel of a layer in one pass over a dataset."""
    import numpy as np

    from vital.mining import contact_sheet, mine

    if direction is not None and channels:
        raise VitalError(
            "--channel and --direction choose what to mine; give one of them (a direction "
            "file is mined instead of channels)."
        )
    loaded = _load(model, weights, device)
    directions = None
    if direction is not None:
        try:
            directions = np.load(direction, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise VitalError(f"cannot read direction file {direction}: {error}") from error
    _Session.out, _Session.resumable = out, True
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
        engine=engine,
        address=address,
        shard_size=shard_size,
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
    numbers = _integers([text], "--sheets")
    wrong = [n for n in numbers if not 0 <= n < units]
    if wrong:
        raise VitalError(f"--sheets {wrong}: there are {units} mined units (0..{units - 1}).")
    return numbers


@app.command("explain")
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
    by: Annotated[
        str,
        typer.Option(
            "--by", help="channels (default) or concepts: the concepts found in the photo's crops."
        ),
    ] = "channels",
    count: Annotated[int, typer.Option("--count", help="With --by concepts: K concepts.")] = 10,
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
    JSON record and a page into the atlas folder --out. With --by concepts: the --count
    concepts found in the photo's own crops, their shares of the class's relevance, maps on the
    photo, examples and VITAL pictures (as `vital concepts`), in OUT/concepts/.
    """
    from vital.explanation import explain

    if by not in ("channels", "concepts"):
        raise VitalError(f"--by is 'channels' or 'concepts', not {by!r}.")
    loaded = _load(model, weights, device)
    if by == "concepts":
        _explain_by_concepts(
            loaded, image, layer, class_name, count, out, relevance, not no_pictures,
            _setting(setting), _overrides(steps=steps, resolution=resolution), seed, batch,
        )  # fmt: skip
        return
    _Session.out, _Session.resumable = out, True
    record = explain(
        loaded,
        image,
        layer=layer,
        top=top,
        data=data,
        out=out,
        target=class_name,
        relevance=relevance,
        setting=_setting(setting),
        settings=_overrides(steps=steps, resolution=resolution),
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


def _scale(text: str) -> tuple[float, float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        low, high = (float(p) for p in parts)
    except ValueError as error:
        raise VitalError(
            f"--crop-scale is LOW,HIGH (fractions of the image's largest square), not {text!r}."
        ) from error
    return low, high


def _print_concepts(report, out: Path) -> None:
    """The concepts' shares and pictures, and where the record and overview are."""
    explained = report.target
    typer.echo(
        f"{explained['name']} (class {explained['index']}) at {report.layer}: "
        f"{len(report.concepts)} concepts from {report.crops} crops of {report.images} "
        f"image(s) carry {report.explained_share:.1%} of its relevance"
    )
    for entry in report.concepts:
        picture = (
            f"picture {entry.activation / entry.reference_activation:.2f}× its references"
            if entry.activation is not None and entry.reference_activation
            else "no picture"
        )
        typer.echo(
            f"  concept {entry.index:3d}  share {entry.share:6.1%}  "
            f"{len(entry.examples)} examples  {picture}"
        )
    for note in report.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"record: {out / 'concepts.json'}")
    typer.echo(f"overview: {out / 'overview.png'}")


@app.command("concepts")
def concepts_command(
    class_name: Annotated[
        str, typer.Option("--class", "-c", help="The class (index, name or WordNet id).")
    ],
    layer: Annotated[
        str, typer.Option("--layer", "-l", help="Layer whose activations are factorised.")
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="The class's images: one image, a folder (ImageNet-style tree, class "
            "sub-folders, or the class's images) or OUT/mining.sqlite. Default: the embedded "
            "photos of the class.",
        ),
    ] = None,
    count: Annotated[int, typer.Option("--count", help="Number of concepts K.")] = 10,
    crops: Annotated[int, typer.Option("--crops", help="Random crops in all.")] = 128,
    crop_scale: Annotated[
        str,
        typer.Option(
            "--crop-scale", help="LOW,HIGH: a crop's area as a fraction of the image's square."
        ),
    ] = "0.05,0.4",
    examples: Annotated[
        int, typer.Option("--examples", help="Crops per concept: examples and picture references.")
    ] = 16,
    relevance: Annotated[
        str, typer.Option("--relevance", help="Relevance backend from the class logit (lrp).")
    ] = "lrp",
    no_pictures: Annotated[
        bool, typer.Option("--no-pictures", help="Skip the concepts' VITAL pictures.")
    ] = False,
    pictured: Annotated[
        int | None,
        typer.Option("--pictured", help="Picture only the N concepts with the largest shares."),
    ] = None,
    model: ModelName = "mobilenet_v2",
    weights: Weights = None,
    setting: Annotated[
        str,
        typer.Option(
            "--setting", help="VITAL's setting for the pictures: fast (default), 0, 1, 2."
        ),
    ] = "fast",
    steps: Steps = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of crops, NMF and pictures.")] = 0,
    out: Out = Path("vital-out"),
    device: Device = "auto",
    batch: Batch = 8,
) -> None:
    """Find what --class is made of at --layer: K concepts, their shares, maps and pictures.

    Random crops of the class's images are factorised (NMF) into concepts; each concept's share
    of the class's relevance at the layer (LRP from the logit), where it sits on each image,
    its examples (the crops it was built from) and its VITAL picture. Writes OUT/concepts.json,
    OUT/overview.png, OUT/maps/, OUT/pictures/, OUT/examples/.
    """
    from vital.concepts import concepts

    names = _names([class_name])
    if len(names) != 1:
        raise VitalError(f"concepts are found for one class at a time, not {class_name!r}.")
    _check_out(out)
    loaded = _load(model, weights, device)
    _Session.out = out
    report = concepts(
        loaded,
        names[0],
        data,
        layer=layer,
        count=count,
        crops=crops,
        scale=_scale(crop_scale),
        examples=examples,
        pictures=False if no_pictures else (True if pictured is None else pictured),
        setting=_setting(setting),
        settings=_overrides(steps=steps),
        seed=seed,
        relevance=relevance,
        out=out,
        batch_size=batch,
    )
    _print_concepts(report, out)


def _explain_by_concepts(
    loaded, image: Path, layer: str, class_name, count, out, relevance, pictures, setting,
    overrides, seed, batch,
) -> None:  # fmt: skip
    """``explain --by concepts``: the photo's own concepts for its class (or the prediction)."""
    from vital.concepts import concepts
    from vital.explanation import load_image

    pixels, _ = load_image(image, loaded.preprocessing.input_size)
    if class_name is None:
        from vital.api import classify

        normalised = loaded.preprocessing.normalize(pixels[None].to(loaded.device, loaded.dtype))
        class_name = int(classify(loaded, normalised)[0].argmax())
    folder = out / "concepts" / f"{image.stem}-{layer}"
    _Session.out = folder
    report = concepts(
        loaded, class_name, image, layer=layer, count=count, pictures=pictures,
        setting="fast" if setting is None else setting, settings=overrides, seed=seed,
        relevance=relevance, out=folder, batch_size=batch,
    )  # fmt: skip
    _print_concepts(report, folder)


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
    channels: ChannelSelection = None,
    class_list: Annotated[
        list[str] | None,
        typer.Option("--class", "-c", "--classes", help="Class index, name or WordNet id; repeat."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="Images to mine the layer's channels' references from."),
    ] = None,
    refs: Annotated[
        str | None,
        typer.Option(
            "--refs",
            "--class-refs",
            help="References of the classes: an ImageNet-style tree or class sub-folders "
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
        typer.Option(
            "--address",
            "--ray-address",
            help="Ray cluster address (default: start a local one).",
        ),
    ] = None,
    setting: SettingName = None,
    steps: Steps = None,
    seed: Seed = 0,
    device: Device = "auto",
    resolution: Resolution = None,
    batch: Batch = 4,
    force: Annotated[
        bool, typer.Option("--force", help="Recompute every unit, even those already stored.")
    ] = False,
) -> None:
    """Visualise every selected unit into an atlas folder and write its web pages.

    Channels of --layer get references mined from --data (`vital mine`, stored in the atlas
    folder); --class targets get references from --refs or the embedded photos. Re-running
    reuses units stored with the same settings, references and model, recomputes the others,
    and resumes mining and visualisation where they stopped. vital never writes over a file
    in --out that it did not write.
    """
    from vital.atlas import ModelSpec, build_atlas
    from vital.atlas.ledger import prepare_folder
    from vital.engines import make_engine
    from vital.methods.vital_class import class_references
    from vital.mining import mine, mined_references
    from vital.optimize import Settings
    from vital.taps import check_layer, list_layers
    from vital.targets import Channel, class_target

    if channels and not layer:
        raise VitalError("--channel selects channels of --layer; name the layer too.")
    # A wrong setting name or number is refused before mining, not after it.
    named = _setting(setting)
    Settings.setting(
        1 if named is None else named, **_overrides(steps=steps, resolution=resolution)
    ).validate()
    prepare_folder(out)  # refuse a folder with files of the user's before mining writes
    chosen_engine = make_engine(engine, ray_address)
    spec = ModelSpec(model, weights, device)
    loaded = spec()
    targets = [class_target(loaded, name) for name in _names(class_list)]
    if layer:
        if data is None:
            raise VitalError("channels need images to mine references from: --data DIR.")
        check_layer(layer, loaded.module)
        selected = _channel_list(channels)
        if selected is None:
            shapes = {
                i.name: i for i in list_layers(loaded.module, loaded.preprocessing.input_size)
            }
            selected = list(range(shapes[layer].channels))
        _Session.out, _Session.resumable = out, True
        mine(
            loaded,
            layer,
            data,
            out,
            channels=selected,
            top_images=top_images,
            top=references,
            patch=patch,
            engine=chosen_engine,
        )
        targets += [Channel(layer, index) for index in selected]
    if not targets:
        raise VitalError("name the units to visualise: --layer L [--channel ...] or --class C.")

    def reference_set(target):
        if target.layer is None:
            return class_references(loaded, target, refs, references)
        return mined_references(out, loaded, target.layer, target, mined_as, references)

    _Session.out, _Session.resumable = out, True
    result = build_atlas(
        spec,
        targets,
        reference_set,
        out,
        _overrides(steps=steps, seed=seed, resolution=resolution),
        setting=_setting(setting),
        engine=chosen_engine,
        batch_size=batch,
        force=force,
    )
    _report_reuse(result)
    typer.echo(
        f"{result.finished} units visualised, {result.failed} failed, {result.skipped} already "
        f"done ({result.units_per_minute:.1f} units/min). Browse: vital atlas serve {out}"
    )


def _report_reuse(report) -> None:
    """Say which stored units were reused, and why others were computed again."""
    if report.reused:
        shown = ", ".join(report.reused[:6]) + (" …" if len(report.reused) > 6 else "")
        typer.echo(f"reused {len(report.reused)} unit(s) stored with the same inputs: {shown}")
    if report.forced:
        typer.echo(f"recomputing {len(report.forced)} stored unit(s) (--force)")
    for unit, changes in list(report.changed.items())[:6]:
        typer.echo(f"recomputing {unit}: " + "; ".join(changes[:3]))
    if len(report.changed) > 6:
        typer.echo(f"… and {len(report.changed) - 6} more unit(s) whose inputs changed")


@atlas_app.command("serve")
def atlas_serve(
    folder: Annotated[Path, typer.Argument(help="Atlas folder.")],
    port: Annotated[int, typer.Option("--port", help="Port (1-65535; 0: any free one).")] = 8000,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on (default 127.0.0.1, this machine only; 0.0.0.0: every "
            "interface, for a remote machine).",
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve an atlas on http://HOST:PORT (loopback by default) until Ctrl-C."""
    from vital.atlas.serve import check_port, is_loopback, make_server

    check_port(port)
    server = make_server(folder, port, verbose=True, host=host)
    if not is_loopback(host):
        typer.secho(
            f"warning: listening on {host}: anyone who can reach this machine can read the atlas "
            "(no password). For a private view use the default host and an SSH tunnel: "
            f"ssh -L {server.server_address[1]}:127.0.0.1:{server.server_address[1]} THIS_HOST",
            fg=typer.colors.YELLOW,
            err=True,
        )
    shown = "127.0.0.1" if host == "localhost" else host
    typer.echo(f"serving {folder} on http://{shown}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _interrupted() -> str:
    if _Session.out is None:
        return "interrupted: nothing was written."
    if _Session.resumable:
        return (
            f"interrupted: everything finished is saved in {_Session.out}; run the same command "
            "again to resume where it stopped."
        )
    return (
        f"interrupted: {_Session.finished} finished result(s) saved in {_Session.out} "
        "(each batch is written when it finishes)."
    )


# typer >= 0.29 carries its own copy of click, whose errors are not click's own classes.
_CLICKS = (click, *([typer._click] if hasattr(typer, "_click") else []))
_USAGE_ERRORS = tuple(module.exceptions.ClickException for module in _CLICKS)
_ABORTS = (KeyboardInterrupt, click.exceptions.Abort, typer.Abort)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each (``warning: …``), without the source line Python adds."""
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes end with a one-line message and exit status 2."""
    _Session.out, _Session.finished, _Session.resumable = None, 0, False
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        code = app(args=argv, standalone_mode=False)
    except VitalError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except _ABORTS:
        typer.echo(_interrupted(), err=True)
        sys.exit(130)
    except _USAGE_ERRORS as error:  # a missing or malformed option: click's usage message
        error.show()
        sys.exit(error.exit_code)
    finally:
        warnings.showwarning = shown
    if code == 130:  # typer turns Ctrl-C into this exit status before we see the interrupt
        typer.echo(_interrupted(), err=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
