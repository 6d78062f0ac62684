"""``vital atlas build``, ``import`` and ``serve``: many units into a browsable folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vital.cli import options, session
from vital.cli.concepts import (
    DEFAULT_CROP_SCALE,
    Count,
    Crops,
    CropScale,
    crop_scale,
    print_concepts,
    report_added,
)
from vital.cli.options import (
    Address,
    ChannelSelection,
    Classes,
    Engine,
    Force,
    MinedAs,
    MiningPatch,
    Out,
    TopImages,
)
from vital.concepts.crops import DEFAULT_CROPS
from vital.concepts.discovery import DEFAULT_COUNT
from vital.errors import VitalError, check_count
from vital.methods import DEFAULT_METHOD
from vital.mining.scan import DEFAULT_PATCH, DEFAULT_TOP_IMAGES
from vital.references import DEFAULT_REFERENCES

atlas_app = typer.Typer(
    cls=options.Group,
    no_args_is_help=True,
    help="Visualise many units, record them, browse them as a web page.",
)


LAYER_HELP = "Layer whose channels to visualise."
DATA_HELP = (
    "Images to mine the layer's channels' references from; with --by concepts, the classes' "
    "images (as for `vital concepts`; default: their embedded photos)."
)
BY_HELP = (
    "What shows --layer: channels (default), or concepts: each --class's --count concepts at "
    "--layer, each with its page, and the class's concept overview."
)
REF_COUNT_HELP = (
    "Reference images (views) per target; for channels, the images mining keeps per channel."
)
REFS_HELP = (
    "References of the classes: an ImageNet-style tree or class sub-folders (default: the "
    "embedded photos)."
)


@options.sharing(options.model_options, options.picture_options, batch=4)
def atlas_build(
    context: typer.Context,
    out: Out = Path("vital-out"),
    layer: Annotated[str | None, options.option("--layer", LAYER_HELP)] = None,
    channels: ChannelSelection = None,
    class_list: Classes = None,
    data: Annotated[str | None, options.option("--data", DATA_HELP)] = None,
    by: Annotated[str, typer.Option("--by", help=BY_HELP, callback=options.by_choice)] = "channels",
    count: Count = DEFAULT_COUNT,
    crops: Crops = DEFAULT_CROPS,
    scale: CropScale = DEFAULT_CROP_SCALE,
    refs: Annotated[str | None, options.option("--refs", REFS_HELP)] = None,
    ref_count: Annotated[int, options.option("--ref-count", REF_COUNT_HELP)] = DEFAULT_REFERENCES,
    top_images: TopImages = DEFAULT_TOP_IMAGES,
    patch: MiningPatch = DEFAULT_PATCH,
    mined_as: MinedAs = "image",
    engine: Engine = "local",
    address: Address = None,
    force: Force = False,
    **common,
) -> None:
    """Visualise every selected unit into an atlas folder and write its web pages.

    Channels of --layer get references mined from --data (`vital mine`, stored in the atlas
    folder); --class targets get references from --refs or the embedded photos. With --by
    concepts, each --class's concepts at --layer are found in --data (`vital concepts`) and
    get their pages. Re-running reuses units and concepts stored with the same settings,
    references and model, recomputes the others, and resumes mining and visualisation where
    they stopped. vital never writes over a file in --out that it did not write.
    """
    from vital.atlas import ModelSpec, build_atlas, render_site
    from vital.atlas.build import check_once
    from vital.atlas.ledger import prepare_folder
    from vital.concepts import add_concepts
    from vital.driver import resolve_settings
    from vital.engines import make_engine
    from vital.methods import get_method
    from vital.methods.vital_class import class_references
    from vital.mining import mine, mined_references, plan_mining
    from vital.references import check_apart
    from vital.taps import check_layer, list_layers
    from vital.targets import Channel, class_target

    by_concepts = by == "concepts"
    if by_concepts and not (layer and class_list):
        raise VitalError("--by concepts finds each --class's concepts at --layer; name both.")
    if by_concepts and channels:
        raise VitalError(
            "with --by concepts --layer shows concepts, not channels: build the channels in a "
            "second run into the same --out (concept pages link to their unit pages)."
        )
    if channels and not layer:
        raise VitalError("--channel selects channels of --layer; name the layer too.")
    if layer and data is None and not by_concepts:
        raise VitalError("channels need images to mine references from: --data DIR.")
    crop_range = crop_scale(scale)
    if by_concepts:  # refused before the classes' pictures are made, not after
        from vital.concepts.crops import check_data, check_sampling
        from vital.concepts.discovery import check_concept_count

        check_sampling(crops, crop_range)
        check_concept_count(count, crops)
        check_data(data)
        options.refuse_unused(
            context,
            ("top_images", "patch", "mined_as"),
            "--by concepts mines nothing (these options choose the channels' mined references)",
        )
    else:
        options.refuse_unused(
            context,
            ("count", "crops", "scale"),
            "--count, --crops and --crop-scale choose the concepts of --by concepts",
        )
    setting_name = options.setting_value(common["setting"])
    if layer and not by_concepts:
        check_apart(data, out)  # before the atlas's own files make the photos' folder vital's
    chosen_engine = make_engine(engine, address)
    spec = ModelSpec(common["model"], common["weights"], common["device"])
    loaded = spec()
    classes = [class_target(loaded, name) for name in options.names(class_list)]
    if not classes and not layer:
        raise VitalError("name the units to visualise: --layer L [--channel ...] or --class C.")
    overrides = options.settings_of(common)
    # A wrong setting is refused before mining, not after it: each kind of unit, its method.
    for kind in (classes, [Channel(layer, 0)] if layer else []):
        if kind:
            resolve_settings(get_method(DEFAULT_METHOD, kind), loaded, setting_name, overrides)
    selected = []
    if layer:
        check_layer(layer, loaded.module, loaded.zoo_name)
    if by_concepts:  # before the classes' pictures, which the concepts step came after
        from vital.concepts.pipeline import check_concept_layer

        check_concept_layer(layer, loaded)
    if layer and not by_concepts:
        selected = options.channel_list(channels)
        if selected is None:
            shapes = {
                i.name: i for i in list_layers(loaded.module, loaded.preprocessing.input_size)
            }
            selected = list(range(shapes[layer].channels))
    # a class or channel named twice is refused now, not after the mining pass
    check_once([*classes, *(Channel(layer, index) for index in selected)])
    # The classes' references and what mining refuses (a layer without positions, images that
    # are not there, --ref-count 10**23) are checked before the folder too: refused after it,
    # they left an atlas.sqlite, a mining.lock or the site's skeleton behind.
    ref_count = check_count(ref_count, "reference_count")
    class_sets = {target: class_references(loaded, target, refs, ref_count) for target in classes}
    mining = None
    if layer and not by_concepts:
        mining = plan_mining(
            loaded, layer, data, selected, patch_side=patch, engine=chosen_engine,
            top_images=top_images, reference_count=ref_count,
        )  # fmt: skip
    # the folder once what was typed is checked (a refused seed, class or layer made an atlas
    # folder), and before mining writes into it: a folder with files of the user's is refused
    prepare_folder(out)
    if mining is not None:
        session.Session.out, session.Session.resumable = out, True
        mine(
            loaded,
            layer,
            mining.images,  # listed once, above
            out,
            channels=selected,
            top_images=top_images,
            reference_count=ref_count,
            patch_side=patch,
            engine=chosen_engine,
        )

    def reference_set(target):
        if target.layer is None:
            return class_sets[target]
        return mined_references(out, loaded, target.layer, target, mined_as, ref_count)

    session.Session.out, session.Session.resumable = out, True
    try:
        result = build_atlas(
            spec,
            [*classes, *(Channel(layer, index) for index in selected)],
            reference_set,
            out,
            overrides,
            setting=setting_name,
            engine=chosen_engine,
            batch_size=common["batch"],
            force=force,
            render=False,
        )
        _report_reuse(result)
        typer.echo(
            f"{result.finished} unit{'' if result.finished == 1 else 's'} visualised, "
            f"{result.failed} failed, {result.skipped} "
            f"already done ({result.units_per_minute:.1f} units/min)."
        )
        # Each class's concepts are one step, finished or not: an interrupted one runs again.
        for target in classes if by_concepts else []:
            added = add_concepts(
                loaded, target, data, layer=layer, count=count, crops=crops, crop_scale=crop_range,
                setting=setting_name, settings={k: v for k, v in overrides.items() if k != "seed"},
                seed=common["seed"], out=out, batch_size=common["batch"], force=force,
                render=False,
            )  # fmt: skip
            report_added(added, out)
    finally:
        render_site(out)
    typer.echo(f"Browse: vital atlas serve {out}")


def _report_reuse(report) -> None:
    """Say which stored units were reused, and why others were computed again."""
    if report.reused:
        shown = ", ".join(report.reused[:6]) + (" …" if len(report.reused) > 6 else "")
        typer.echo(f"reused {len(report.reused)} unit(s) stored with the same inputs: {shown}")
    if report.forced:
        typer.echo(f"recomputing {len(report.forced)} stored unit(s) (--force)")
    for unit, problem in list(report.incomplete.items())[:6]:
        typer.echo(f"recomputing {unit}: {problem}")
    if len(report.incomplete) > 6:
        typer.echo(f"… and {len(report.incomplete) - 6} more unit(s) whose files are gone")
    for unit, changes in list(report.changed.items())[:6]:
        typer.echo(f"recomputing {unit}: " + "; ".join(changes[:3]))
    if len(report.changed) > 6:
        typer.echo(f"… and {len(report.changed) - 6} more unit(s) whose inputs changed")


def atlas_serve(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Atlas folder.")],
    port: Annotated[int, typer.Option("--port", help="Port (1-65535; 0: any free one).")] = 8000,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 or '::' for "
            "every interface, for a remote machine; IPv6 ones such as ::1 work too).",
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve an atlas on http://HOST:PORT (loopback by default) until Ctrl-C."""
    from vital.atlas.serve import check_host, check_port, is_loopback, make_server, url

    check_port(port)
    host = check_host(host)
    server = make_server(folder, port, verbose=True, host=host)
    if not is_loopback(host):
        typer.secho(
            f"warning: listening on {host}: anyone who can reach this machine can read the atlas "
            "(no password). For a private view use the default host and an SSH tunnel: "
            f"ssh -L {server.server_address[1]}:127.0.0.1:{server.server_address[1]} THIS_HOST",
            fg=typer.colors.YELLOW,
            err=True,
        )
    typer.echo(f"serving {folder} on {url(host, server.server_address[1])} (Ctrl-C stops)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


def atlas_import(
    folder: Annotated[
        Path, typer.Argument(metavar="FOLDER", help="The --out folder of a `vital concepts` run.")
    ],
    out: Annotated[
        Path, options.option("--out", "The atlas folder.", callback=options.out_folder)
    ] = Path("vital-out"),
) -> None:
    """Put a finished `vital concepts` result into an atlas, with its pages; nothing is computed."""
    from vital.atlas.site import render_site
    from vital.concepts import import_concepts

    added = import_concepts(folder, out, render=False)
    render_site(out)
    if added.reused:
        typer.echo(f"already in the atlas: {folder} (the same record)")
    else:
        if added.changed:
            typer.echo("replaced the atlas's copy: " + "; ".join(added.changed[:3]))
        print_concepts(added.record)
    typer.echo(f"page: {added.page} (or: vital atlas serve {out})")


atlas_app.command("build", cls=options.Command)(atlas_build)
atlas_app.command("import", cls=options.Command)(atlas_import)
atlas_app.command("serve", cls=options.Command)(atlas_serve)
