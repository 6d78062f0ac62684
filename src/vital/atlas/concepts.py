"""A class's concepts in an atlas: :func:`vital.concepts` run into the atlas, keyed like units.

A *concept set* is one class at one layer over one image set (``data``). Its result is keyed
on everything that changes it: the model's weights, the layer, the class, the identity of the
images (files, sizes, modification times), the discovery's options and the pictures' effective
settings with the seed. A re-run reuses a set whose key is unchanged, computes it again
otherwise (saying what changed), and ``force`` recomputes it. Each result goes into a folder of
its own, ``concepts/<class>-<layer>-<images>-<key>/``, and the atlas shows the current one; the
files of earlier results stay, as units' earlier results stay in ``results/``.

The analysis runs in a temporary folder outside the atlas; only a finished one is copied in,
every file claimed in the atlas's ledger first (:mod:`vital.atlas.ledger`), so an interrupted
run leaves nothing half-made in the atlas and loses no set finished before it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vital.atlas.folder import Atlas, StoredConcepts
from vital.atlas.keys import differences, picture_spec
from vital.concepts.crops import DEFAULT_CROPS, DEFAULT_SCALE, class_images
from vital.concepts.discovery import DEFAULT_COUNT
from vital.concepts.pipeline import DEFAULT_EXAMPLES, concepts
from vital.errors import VitalError
from vital.files import printable, write_file
from vital.optimize import DEFAULT_SETTING
from vital.targets import ClassTarget, Direction, class_target
from vital.zoo import Model, as_model

FOLDER = "concepts"  # inside the atlas: one sub-folder per concept set's result


@dataclass
class AddedConcepts:
    """What :func:`add_concepts` did.

    Attributes
    ----------
    id
        The concept set (layer, class and images), as the atlas keys it.
    folder
        The folder of its current result (absolute), holding ``concepts.json``.
    page
        Its overview page in the atlas (written when the site is rendered).
    record
        ``concepts.json`` as read back.
    reused
        Stored with the same inputs: nothing was computed.
    changed
        What changed since the stored result (``discovery.count 10 → 5``); empty when new.
    forced
        Computed again only because ``force`` was given.
    """

    id: str
    folder: Path
    page: Path
    record: dict
    reused: bool = False
    changed: list[str] = field(default_factory=list)
    forced: bool = False


def _slug(text: str, length: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length] or "x"


def _plain(value: object) -> object:
    return json.loads(json.dumps(value, sort_keys=True))


def concept_inputs(
    model: Model,
    explained: ClassTarget,
    images: list[str],
    layer: str,
    discovery: Mapping[str, object],
    pictures: bool | int,
    setting: int | str | None,
    settings: Mapping[str, object] | None,
    seed: int,
) -> dict:
    """Everything a concept set's result depends on, as plain data (stored and compared).

    ``images`` are the identities of the images the concepts are found in; the pictures'
    settings are the effective ones (VITAL's defaults for a direction under ``settings``), as
    for the atlas's units.
    """
    picture = None
    if pictures:
        spec = picture_spec(
            model, Direction(layer, (1.0,), name="concept"), None, seed, setting, settings
        )
        picture = {
            "pictured": "all" if pictures is True else int(pictures),
            "method": spec.method,
            "settings": spec.settings,
            "options": spec.options,
        }
    identity = hashlib.sha256("\n".join(sorted(images)).encode()).hexdigest()[:16]
    return _plain(
        {
            "model": model.fingerprint,
            "layer": layer,
            "class": explained.index,
            "images": identity,
            "discovery": {**discovery, "seed": seed},
            "pictures": picture,
        }
    )


def _key(inputs: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _check_free(atlas: Atlas, folder: Path) -> None:
    """Refuse, before any work, a result folder holding a file vital did not write there."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not atlas.ledger.owns(path):
            raise VitalError(
                f"{path} exists and vital did not write it (or it was changed since); vital "
                "never overwrites it. Move it away or choose another folder (out=DIR)."
            )


def add_concepts(
    model: Model | nn.Module | str,
    target: int | str | ClassTarget,
    data: str | Path | None = None,
    *,
    layer: str,
    count: int = DEFAULT_COUNT,
    crops: int = DEFAULT_CROPS,
    scale: tuple[float, float] = DEFAULT_SCALE,
    examples: int = DEFAULT_EXAMPLES,
    pictures: bool | int = True,
    setting: int | str | None = DEFAULT_SETTING,
    settings: Mapping[str, object] | None = None,
    seed: int = 0,
    relevance: str = "lrp",
    out: str | Path = "vital-out",
    batch_size: int = 8,
    device: str | torch.device | None = None,
    force: bool = False,
    progress: bool = True,
    render: bool = True,
) -> AddedConcepts:
    """Find a class's concepts at a layer (:func:`vital.concepts`) into the atlas ``out``.

    The atlas then has a page per concept (picture, transparency, share, maps, examples, the
    direction's top channels, record) and the class's concept overview, linked from the index
    and from the class's unit page.

    Parameters
    ----------
    model, target, data, layer, count, crops, scale, examples, pictures
        As for :func:`vital.concepts`.
    setting, settings, seed, relevance, batch_size, device, progress
        As for :func:`vital.concepts`.
    out
        The atlas folder (created if needed; refused when it holds files of the user's where
        the atlas writes).
    force
        Compute again even when a result with the same inputs is stored.
    render
        Write the site afterwards (a caller adding several sets renders once at the end).

    Returns
    -------
    AddedConcepts
        Where the result is, whether it was reused and what changed.
    """
    from vital.atlas.site import render_site

    model = as_model(model, device)
    explained = class_target(model, target)
    atlas = Atlas(out)
    images, _ = class_images(model, explained, data, seed=seed)
    discovery = {
        "count": count,
        "crops": crops,
        "scale": list(scale),
        "examples": examples,
        "relevance": relevance,
    }
    inputs = concept_inputs(
        model, explained, [s.identity for s in images], layer, discovery, pictures, setting,
        settings, seed,
    )  # fmt: skip
    key = _key(inputs)
    where = "embedded photos" if data is None else printable(Path(data).resolve())
    set_id = f"{layer}/{explained.unit()} on {where}"
    images_name = "embedded" if data is None else Path(data).stem
    name = f"{FOLDER}/{explained.slug()[:48]}-{_slug(layer)}-{_slug(images_name, 24)}-{key[:8]}"
    stored = atlas.concept_sets().get(set_id)
    folder = atlas.folder / name
    added = AddedConcepts(set_id, folder, folder / "index.html", {})
    record_file = folder / "concepts.json"
    if stored is not None and stored.key == key:
        if record_file.is_file() and atlas.ledger.owns(record_file) and not force:
            added.reused, added.record = True, json.loads(record_file.read_text("utf-8"))
            return added
        added.forced = force
    elif stored is not None:
        added.changed = differences(stored.inputs, inputs)
    _check_free(atlas, folder)
    with tempfile.TemporaryDirectory(prefix="vital-concepts-") as staging:
        concepts(
            model, explained.index, data, layer=layer, count=count, crops=crops, scale=scale,
            examples=examples, pictures=pictures, setting=setting, settings=settings, seed=seed,
            relevance=relevance, out=staging, batch_size=batch_size, progress=progress,
        )  # fmt: skip
        made = sorted(p for p in Path(staging).rglob("*") if p.is_file())
        copies = {source: folder / source.relative_to(staging) for source in made}
        atlas.ledger.claim(copies.values())
        for source, copy in copies.items():
            write_file(copy, source.read_bytes())
        atlas.ledger.seal(copies.values())
    atlas.register_concepts(StoredConcepts(set_id, key, inputs, name))
    added.record = json.loads(record_file.read_text("utf-8"))
    if render:
        render_site(atlas.folder)
    return added
