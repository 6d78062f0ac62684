"""One explanation, start to end: relevance, dataset examples, pictures, record, page.

:func:`explain` writes into an atlas folder (:mod:`vital.atlas`): the explanation's record
(``explanations/<slug>.json``) and its images (``explanations/<slug>/``), the channels' mined
lists (``mining.sqlite``), their pictures (the atlas's store) and the site, where the
explanation has its page (``explain/<slug>.html``) next to the units it links to.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vital.atlas.folder import Atlas
from vital.atlas.thumbnails import example_entry, write_example
from vital.driver import checked_overrides
from vital.errors import VitalError, check_count, plain
from vital.explanation.attribution import ChannelRelevance, attributor
from vital.explanation.images import heatmap_image
from vital.explanation.pictures import channel_pictures, store_index
from vital.files import decoding, printable, save_image, to_rgb, write_file
from vital.grids import to_image
from vital.memory import check_fits
from vital.methods import DEFAULT_METHOD
from vital.mining.scan import DEFAULT_PATCH
from vital.optimize import DEFAULT_SETTING, check_seed
from vital.progress import progress_bar
from vital.record import ChannelEvidence, Explanation, model_info
from vital.references import DEFAULT_REFERENCES, ImageSource, center_crop, check_apart
from vital.renamed import renamed
from vital.targets import class_target
from vital.zoo import Model, as_model, frozen

# Fewer heatmaps than this take seconds: no progress bar for them.
_HEATMAPS_WITHOUT_BAR = 16

DEFAULT_TOP = 5
DEFAULT_EXAMPLES = 8


def load_image(image: str | Path | Image.Image, resolution: int) -> tuple[torch.Tensor, dict]:
    """The centre crop the model sees (as in ImageNet evaluation), and where it came from."""
    if isinstance(image, Image.Image):
        description = "an image given in memory"
        with decoding(description):
            digest = hashlib.sha256(_pixels_of(image)).hexdigest()[:16]
        source = ImageSource(f"image:{digest}", lambda: image, "image")
        recorded = description
    elif isinstance(image, (str, Path)):
        path = Path(image)
        if path.is_dir():
            raise VitalError(
                f"image {printable(path)} is a folder: explain one image file; a folder of "
                "images goes to data=DIR (the images mined for the top channels' references)."
            )
        if not path.is_file():
            raise VitalError(f"image {printable(path)} does not exist or is not a file.")
        source = ImageSource.from_path(path)
        description = source.where
        # The record says where the image is from any folder it is read in, not "coffee.jpg".
        recorded = printable(path.resolve())
    else:
        raise VitalError(
            f"the image to explain is a file path or a PIL image, not {type(image).__name__}."
        )
    with decoding(description):  # an unreadable or too large image is an error here
        rgb = to_rgb(source.open())
    info = {"source": recorded, "identity": source.identity, "crop": resolution}
    return center_crop(rgb, resolution), info


def _pixels_of(image: Image.Image) -> bytes:
    """The pixels of a PIL image handed in; one that was closed is refused in words."""
    try:
        image.load()  # a lazily opened file is decoded now, while it may still be open
        return image.tobytes()
    except (AssertionError, ValueError) as error:
        # Pillow's words for it: an assertion that its file is open (closed before loading),
        # or "Operation on closed image" (closed after).
        if isinstance(error, ValueError) and "closed" not in str(error):
            raise  # a damaged image: said as for a file
        raise VitalError(
            "the PIL image to explain was closed (Image.close(), or the end of its `with "
            "Image.open(...)` block), so its pixels are gone: pass it before closing it, or "
            "pass its file path."
        ) from error


def _slug(info: dict, explained: int, layer: str, backend: str) -> str:
    stem = Path(info["source"]).stem if info["source"] != "an image given in memory" else "image"
    clean = re.sub(r"[^a-z0-9]+", "-", f"{stem}-{explained}-{layer}-{backend}".lower())
    digest = hashlib.sha256(info["identity"].encode()).hexdigest()[:6]
    return f"{clean.strip('-')[:80]}-{digest}"


def reaching_input(at_input: float, at_layer: float) -> float | None:
    """The fraction of the relevance at the layer that arrives at the input (``None``: none)."""
    return at_input / at_layer if at_layer else None


def _conservation_note(reaching: float | None, layer: str, backend: str) -> list[str]:
    """Why the input heatmap holds less relevance than the layer, when it does."""
    if reaching is None or abs(reaching - 1) < 0.05:
        return []
    share = f"{100 * reaching:.3g} % of the relevance at {layer} reaches the input ({backend})"
    if backend != "lrp":
        return [f"{share}: this backend does not conserve relevance from layer to layer."]
    return [
        f"{share}: z⁺ hands a unit's relevance to the inputs that contribute positively to it, "
        "and a unit below the layer that fires through its bias or BatchNorm shift alone (no "
        "input with a positive weight active) has nobody to hand it to, so it stops there. The "
        "heatmaps show where the rest goes; each is scaled to its own largest value."
    ]


def _class_entry(model: Model, found: ChannelRelevance, index: int) -> dict:
    name = model.labels.name(index) if model.labels is not None else f"class {index}"
    return {
        "index": index,
        "name": name,
        "probability": float(found.probabilities[index]),
        "logit": float(found.logits[index]),
    }


def _mined_examples(atlas: Atlas, model: Model, layer: str, channel: int, slug: str, count: int):
    from vital.mining import mined

    info, ranked = mined(atlas.folder, model, layer, channel)
    folder = atlas.folder / "explanations" / slug / "examples"
    entries = [example_entry(e, write_example(e, folder, atlas.ledger)) for e in ranked[:count]]
    return info, entries


@renamed(stores="store")
def explain(
    model: Model | nn.Module | str,
    image: str | Path | Image.Image,
    *,
    layer: str,
    top: int = DEFAULT_TOP,
    data: str | Path | None = None,
    out: str | Path = "vital-out",
    target: int | str | None = None,
    relevance: str = "lrp",
    setting: int | str = DEFAULT_SETTING,
    settings: Mapping[str, object] | None = None,
    seed: int = 0,
    reference_count: int = DEFAULT_REFERENCES,
    mined_as: str = "image",
    top_images: int = 10_000,
    patch_side: int = DEFAULT_PATCH,
    examples: int = DEFAULT_EXAMPLES,
    pictures: bool = True,
    store: str | Path | Sequence[str | Path] = (),
    force: bool = False,
    batch_size: int = 4,
    workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Explanation:
    """Explain a prediction by the channels of ``layer`` that carried it, with VITAL pictures.

    Parameters
    ----------
    model
        A model name, a :class:`vital.Model` or an ``nn.Module`` classifier.
    image
        The image file (or a PIL image); the model sees its centre crop.
    layer
        The layer whose channels explain the prediction (``vital layers MODEL``).
    top
        How many of the most relevant channels to show with heatmaps, examples and pictures.
    data
        Images to mine the channels' dataset examples and picture references from (a folder
        or a list file, as for ``vital mine``); ``None``: no examples and no pictures.
    out
        The atlas folder the explanation is written to (created if needed).
    target
        The class to explain (index, name or WordNet id); default: the prediction.
    relevance
        Relevance backend from the class logit: ``lrp`` (default), an epsilon composite such
        as ``epsilon-plus``, ``guided-backprop`` or ``grad-x-act``.
    setting, settings
        VITAL's named setting and changes to its defaults for the pictures
        (``{"steps": 300}``).
    seed
        Seed of pictures that are computed.
    reference_count
        Mined images per channel: kept by the mining pass and used as picture references.
    mined_as
        The pictures' references: ``"image"`` (whole mined images) or ``"patch"``.
    top_images, patch_side
        Mining stage 1's images per channel and stage 2's patch side (as for ``vital mine``).
    examples
        Dataset examples shown per channel.
    pictures
        Make (or reuse) the channels' VITAL pictures.
    store
        Another atlas or result folder whose pictures may be reused, or a list of them
        (``--store``, repeated; ``stores=``, the old name, still works with a warning).
    force
        Compute the pictures again even when stored ones match.
    batch_size, workers
        Pictures optimised together; mining's decoding processes.
    device
        ``"cpu"`` or ``"cuda"``; default: where the model is.
    progress
        Show progress bars.

    Returns
    -------
    Explanation
        The record (also written as ``OUT/explanations/<slug>.json``; its page is
        ``OUT/explain/<slug>.html``).
    """
    from vital.atlas.site import render_site

    top = plain(top)  # numpy's integers are the number they hold, as every count
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise VitalError(f"top=N is the number of channels to show (at least 1), not {top!r}.")
    batch_size = check_count(batch_size, "batch_size")
    reference_count = check_count(reference_count, "reference_count")  # before any work
    # a seed no picture could take was accepted without pictures and refused after mining
    # with them; a Python int for the record either way
    seed = check_seed(seed)
    overrides = checked_overrides(settings)  # a misspelt setting: refused before mining
    if mined_as not in ("image", "patch"):
        raise VitalError(f"mined_as='image' or 'patch', not {mined_as!r}.")
    # One folder, not a sequence of one-letter names.
    stores = (store,) if isinstance(store, (str, Path)) else store
    if not isinstance(stores, (list, tuple)) or not all(
        isinstance(folder, (str, Path)) for folder in stores
    ):
        raise VitalError(
            f"store= is a folder or a list of folders to reuse pictures from, not {store!r}."
        )
    if data is not None:
        check_apart(data, out)  # before Atlas(out) writes its index into the user's photos
    for folder in stores:
        if not Path(folder).is_dir():
            raise VitalError(
                f"store={printable(folder)} is not a folder; give an atlas or result folder to "
                "reuse pictures from."
            )
        store_index(folder)  # one that is not vital's was refused after the mining pass
    with frozen(model):
        model = as_model(model, device)
        check_fits(model, overrides)  # every picture would be refused after the mining pass
        pixels, image_info = load_image(image, model.preprocessing.input_size)
        explained = None if target is None else class_target(model, target).index
        with attributor(model, layer, relevance) as attribute:
            found = attribute(pixels, explained)
            channels = found.channels.numel()
            if top > channels:  # each shown channel costs a relevance pass, mining, a picture
                raise VitalError(
                    f"top={top}, but {layer} has {channels} channels: show at most {channels}."
                )
            chosen = found.top(top)
            with progress_bar(
                len(chosen),
                "explain: heatmaps",
                desc="heatmaps",
                unit="channel",
                disable=not progress or len(chosen) < _HEATMAPS_WITHOUT_BAR,
            ) as bar:
                conditional = attribute.conditional(chosen, on_heatmap=bar.update)
        if data is not None:  # mining's refusals (the images, the patch side) too
            from vital.mining import plan_mining

            mined_images = plan_mining(
                model, layer, data, chosen, patch_side=patch_side, top_images=top_images,
                reference_count=reference_count, workers=workers,
            ).images  # fmt: skip
        atlas = Atlas(out)  # made once the layer is known to be one: a refusal leaves none
        slug = _slug(image_info, found.target, layer, found.backend)
        folder = atlas.folder / "explanations" / slug
        spatial = found.relevance.dim() == 3

        mining, mined_examples, picture_entries = None, {}, {}
        if data is not None:
            from vital.mining import mine, mined_references

            mine(
                model,
                layer,
                mined_images,  # listed once, above
                atlas.folder,
                channels=chosen,
                top_images=top_images,
                reference_count=reference_count,
                patch_side=patch_side,
                workers=workers,
                progress=progress,
            )
            for channel in chosen:
                info, mined_examples[channel] = _mined_examples(
                    atlas, model, layer, channel, slug, examples
                )
            mining = {
                "database": "mining.sqlite",
                # Resolved: a record read from elsewhere still says which images were mined.
                "data": printable(Path(data).resolve()),
                "settings": info["settings"],
                "scanned": info["scanned"],
            }
            if pictures:
                reference_sets = {
                    c: mined_references(atlas.folder, model, layer, c, mined_as, reference_count)
                    for c in chosen
                }
                picture_entries = channel_pictures(
                    atlas,
                    model,
                    layer,
                    reference_sets,
                    seed=seed,
                    setting=setting,
                    overrides=settings,
                    stores=stores,
                    force=force,
                    batch_size=batch_size,
                    progress=progress,
                )

        files = {
            "crop": folder / "image.jpg",
            "heatmap": folder / "heatmap.png",
            **{f"channel-{c}": folder / f"channel-{c}.png" for c in chosen},
            **{f"layer-{c}": folder / f"channel-{c}-layer.png" for c in chosen if spatial},
            "json": atlas.folder / "explanations" / f"{slug}.json",
        }
        atlas.ledger.claim(files.values())
        save_image(files["crop"], to_image(pixels), quality=92)
        save_image(files["heatmap"], heatmap_image(found.heatmap, pixels))
        for channel, heatmap in zip(chosen, conditional, strict=True):
            save_image(files[f"channel-{channel}"], heatmap_image(heatmap, pixels))
            if spatial:
                scaled = F.interpolate(
                    found.relevance[channel][None, None], size=pixels.shape[-2:], mode="bilinear"
                )[0, 0]
                save_image(files[f"layer-{channel}"], heatmap_image(scaled, pixels))

        relative = {k: p.relative_to(atlas.folder).as_posix() for k, p in files.items()}
        channels, shares = found.channels, found.shares
        activation = found.activation.flatten(1)
        # The logits, in a stable order: the first of tied classes, as the explained
        # prediction (`argmax`) takes it, so that the record's prediction is that class.
        order = torch.argsort(found.logits, descending=True, stable=True)
        reaching = reaching_input(float(found.heatmap.sum()), float(channels.sum()))
        record = Explanation(
            slug=slug,
            model=model_info(model),
            image={**image_info, "file": relative["crop"]},
            layer=layer,
            relevance=found.backend,
            prediction=_class_entry(model, found, int(order[0])),
            top5=[_class_entry(model, found, int(i)) for i in order[:5]],
            explained={
                **_class_entry(model, found, found.target),
                "rank": int((order == found.target).nonzero()[0, 0]) + 1,
                "given": target is not None,
            },
            channels=[float(v) for v in channels],
            total=float(channels.sum()),
            absolute_total=float(channels.abs().sum()),
            heatmap={
                "file": relative["heatmap"],
                "total": float(found.heatmap.sum()),
                "reaching_input": reaching,
            },
            top=[
                ChannelEvidence(
                    channel=channel,
                    rank=rank,
                    relevance=float(channels[channel]),
                    share=float(shares[channel]),
                    activation_mean=float(activation[channel].mean()),
                    activation_max=float(activation[channel].max()),
                    heatmap=relative[f"channel-{channel}"],
                    heatmap_total=float(heatmap.sum()),
                    layer_map=relative.get(f"layer-{channel}"),
                    examples=mined_examples.get(channel, []),
                    picture=picture_entries.get(channel),
                )
                for rank, (channel, heatmap) in enumerate(zip(chosen, conditional, strict=True))
            ],
            mining=mining,
            pictures={
                "method": DEFAULT_METHOD,
                "setting": setting,
                "overrides": dict(settings or {}),
                "seed": seed,
                "references": {"count": reference_count, "mode": mined_as},
            }
            if pictures and data is not None
            else None,
            notes=found.notes
            + found.sign_notes()
            + _conservation_note(reaching, layer, found.backend)
            + ([] if data is not None else ["no --data: no dataset examples and no pictures."]),
            files={"json": relative["json"], "page": f"explain/{slug}.html"},
        )
        text = record.to_json()
        write_file(files["json"], text)
        atlas.ledger.seal(files.values())
        render_site(atlas.folder)
    return Explanation.from_json(text)  # exactly what was stored (tuples as lists)
