"""A class's concepts in an atlas: :func:`vital.concepts` run into the atlas, keyed like units.

A *concept set* is one class at one layer over one image set (``data``). Its result is keyed
on everything that changes it: the model's weights, the layer, the class, the identity of the
images (files, sizes, modification times), the discovery's options and the pictures' effective
settings with the seed. A re-run reuses a set whose key is unchanged, computes it again
otherwise (saying what changed), and ``force`` recomputes it. Each result goes into a folder of
its own, ``concepts/<class>-<layer>-<images>-<key>/``, and the atlas shows the current one; the
files of earlier results stay, as units' earlier results stay in ``results/``.

The analysis runs in a staging folder of its own, ``.vital-staging/<name>`` inside the atlas
(on the disk the atlas is on, not in the system's temporary folder); only a finished one is
copied in, every file claimed in the atlas's ledger first (:mod:`vital.atlas.ledger`), and the
staging folder is then removed. An interrupted run leaves nothing half-made in the atlas's
pages and loses no set finished before it; its staging folder stays, and the same build again
takes the pictures finished there (:func:`vital.concepts` reuses a picture made with the same
inputs). A build holds a lock beside its staging folder while it works there; once a set is
finished, the staging folders its stopped builds with other inputs left are removed, unless
another build holds their lock.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import re
import shutil
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vital.atlas.folder import Atlas, StoredConcepts
from vital.atlas.keys import differences, picture_spec
from vital.atlas.ledger import Ledger
from vital.concepts.crops import check_sampling, class_images
from vital.concepts.pipeline import concepts, picture_choice
from vital.errors import VitalError, close_matches
from vital.files import exclusive, held_if_free, printable, write_file
from vital.optimize import check_seed
from vital.relevance.backends import backend_name
from vital.renamed import renamed
from vital.store import output_folder
from vital.targets import ClassTarget, Direction, class_target
from vital.zoo import Model, as_model, classes_command

FOLDER = "concepts"  # inside the atlas: one sub-folder per concept set's result
# Inside the atlas: a concept set's analysis until it is finished and copied in (not a page).
STAGING = ".vital-staging"
CONCEPT_PARAMETERS = inspect.signature(concepts).parameters  # add_concepts's **options


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


def concept_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` keywords of :func:`vital.concepts` completed with its defaults.

    The keywords that say where and how to run (``layer``, ``out``, ``device``, ``progress``)
    are :func:`add_concepts`'s own; an unknown one is a one-line error with the close names.
    """
    parameters = CONCEPT_PARAMETERS
    own = ("layer", "out", "device", "progress")
    allowed = [n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY and n not in own]
    for name in given:
        if name not in allowed:
            hint = close_matches(name, allowed)
            raise VitalError(
                f"add_concepts takes no {name}=; "
                + (
                    f"did you mean {', '.join(hint)}?"
                    if hint
                    else f"it takes {', '.join(allowed)}."
                )
            )
    return {name: given.get(name, parameters[name].default) for name in allowed}


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


@renamed(scale="crop_scale")
def add_concepts(
    model: Model | nn.Module | str,
    target: int | str | ClassTarget,
    data: str | Path | None = None,
    *,
    layer: str,
    out: str | Path = "vital-out",
    force: bool = False,
    render: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    **options: Any,
) -> AddedConcepts:
    """Find a class's concepts at a layer (:func:`vital.concepts`) into the atlas ``out``.

    The atlas then has a page per concept (picture, transparency, share, maps, examples, the
    direction's top channels, record) and the class's concept overview, linked from the index
    and from the class's unit page.

    Parameters
    ----------
    model, target, data, layer, device, progress
        As for :func:`vital.concepts`.
    out
        The atlas folder (created if needed; refused when it holds files of the user's where
        the atlas writes).
    force
        Compute again even when a result with the same inputs is stored.
    render
        Write the site afterwards (a caller adding several sets renders once at the end).
    **options
        The other keywords of :func:`vital.concepts` (``count``, ``crops``, ``crop_scale``,
        ``examples``, ``pictures``, ``pictured``, ``setting``, ``settings``, ``seed``,
        ``relevance``, ``batch_size``), with its defaults: one signature, so the two cannot
        drift (its old names, ``scale`` and ``pictures=N``, still work with a warning).

    Returns
    -------
    AddedConcepts
        Where the result is, whether it was reused and what changed.
    """
    from vital.atlas.site import render_site

    chosen = concept_options(options)
    # Checked before any work, and Python numbers: they key the set (as JSON) and reach NMF.
    chosen["seed"] = check_seed(chosen["seed"])
    chosen["crop_scale"] = check_sampling(chosen["crops"], chosen["crop_scale"])
    chosen["relevance"] = backend_name(chosen["relevance"])  # "LRP" keys the set as lrp
    model = as_model(model, device)
    explained = class_target(model, target)
    atlas = Atlas(out)
    shown = picture_choice(chosen["pictures"], chosen["pictured"])  # warned about once, here
    chosen["pictures"] = bool(shown)
    chosen["pictured"] = None if isinstance(shown, bool) else shown
    images, _ = class_images(model, explained, data, seed=chosen["seed"])
    discovery = {name: chosen[name] for name in ("count", "crops", "examples", "relevance")}
    discovery["scale"] = list(chosen["crop_scale"])  # the stored key: earlier keys still match
    inputs = concept_inputs(
        model, explained, [s.identity for s in images], layer, discovery, shown,
        chosen["setting"], chosen["settings"], chosen["seed"],
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
        if not force and _finished(atlas, set_id, key, record_file):
            added.reused, added.record = True, json.loads(record_file.read_text("utf-8"))
            return added
        added.forced = force
    elif stored is not None:
        added.changed = differences(stored.inputs, inputs)
    _check_free(atlas, folder)
    # Named by the result's folder (its key): only a build with the same inputs resumes there.
    staging = atlas.folder / STAGING / Path(name).name
    output_folder(staging.parent, "atlas's staging folder")
    with exclusive(_lock_of(staging), "concepts build of this set"):
        if not force and _finished(atlas, set_id, key, record_file):  # while this one waited
            added.reused, added.record = True, json.loads(record_file.read_text("utf-8"))
            return added
        concepts(
            model, explained.index, data, layer=layer, out=staging, progress=progress, **chosen
        )
        _copy_in(atlas, staging, folder)
        shutil.rmtree(staging)
        atlas.register_concepts(StoredConcepts(set_id, key, inputs, name))
    _lock_of(staging).unlink(missing_ok=True)
    _remove_superseded(staging)
    with suppress(OSError):  # another build's staging folder may be beside it
        staging.parent.rmdir()
    added.record = json.loads(record_file.read_text("utf-8"))
    if render:
        render_site(atlas.folder)
    return added


def _finished(atlas: Atlas, set_id: str, key: str, record_file: Path) -> bool:
    """Whether the atlas holds the set's result for inputs ``key``, as vital wrote it."""
    stored = atlas.concept_sets().get(set_id)
    return (
        stored is not None
        and stored.key == key
        and record_file.is_file()
        and atlas.ledger.owns(record_file)
    )


def _lock_of(staging: Path) -> Path:
    """The lock a build holds while it works in ``staging`` (beside it, hidden from pages)."""
    return staging.with_name(f"{staging.name}.lock")


def _remove_superseded(staging: Path) -> None:
    """Remove the staging folders of the same set left by stopped builds with other inputs.

    They differ from ``staging`` only in the key at the end of their name. Now that the set has
    a finished result, resuming them would mean going back to the old inputs: the pictures
    they hold would be made again if asked for, so they are only disk space. One whose lock
    another build holds is at work and stays.
    """
    same_set = staging.name.rpartition("-")[0]
    for other in staging.parent.glob(f"{glob.escape(same_set)}-*"):
        if not other.is_dir() or other.name.rpartition("-")[0] != same_set:
            continue
        with held_if_free(_lock_of(other)) as free:
            if free:
                shutil.rmtree(other, ignore_errors=True)
        if free:
            _lock_of(other).unlink(missing_ok=True)


def _copy_in(atlas: Atlas, source: Path, folder: Path) -> None:
    """Copy every file under ``source`` to ``folder``, each claimed in the ledger first.

    An atlas inside ``source`` (``--out`` a subfolder of the imported run) is left out: its
    files are not the run's, and copying them would nest the atlas into itself.
    """
    own = atlas.folder.resolve()
    nested = own.is_relative_to(source.resolve())  # not a staging folder inside the atlas
    made = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and not (nested and p.resolve().is_relative_to(own))
    )
    copies = {path: folder / path.relative_to(source) for path in made}
    atlas.ledger.claim(copies.values())
    for path, copy in copies.items():
        write_file(copy, path.read_bytes())
    atlas.ledger.seal(copies.values())


def _written_concepts(folder: Path) -> dict:
    """The checked ``concepts.json`` of a folder that :func:`vital.concepts` wrote."""
    path = folder / "concepts.json"
    if not folder.is_dir():
        raise VitalError(
            f"{folder} is not a folder; give the --out folder of a `vital concepts` run."
        )
    if not path.is_file():
        raise VitalError(
            f"{folder} holds no concepts.json; give the --out folder of a `vital concepts` run."
        )
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VitalError(
            f"cannot read {path} ({error}): it is damaged; copy the whole folder of the `vital "
            "concepts` run again, or run `vital concepts` again to write it anew."
        ) from error
    needed = {"model", "model_info", "layer", "class", "concepts", "discovery"}
    if not isinstance(record, dict) or not needed <= record.keys():
        raise VitalError(f"{path} was not written by `vital concepts` (fields are missing).")
    named = _checked_concepts(path, record)
    missing = [name for name in named if not (folder / name).is_file()]
    if missing:
        raise VitalError(
            f"{folder} lacks {len(missing)} file(s) its concepts.json names (first: "
            f"{missing[0]}); copy the whole folder of the `vital concepts` run."
        )
    return record


def _refuse(path: Path, field: str, problem: str) -> None:
    """Refuse a hand-edited or damaged ``concepts.json`` in one line naming the field."""
    raise VitalError(
        f"{printable(path)} is not a record `vital concepts` wrote: its {field} is {problem}. "
        "Run `vital concepts` into the folder again, or give the folder of an untouched run."
    )


def _of_type(path: Path, field: str, value: object, kind: type | tuple[type, ...]) -> None:
    """Refuse ``value`` unless it is of ``kind`` (a bool is never a number)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(_KIND_NAMES[k] for k in kinds)
        _refuse(path, field, f"{json.dumps(value, default=repr)[:40]}, not {wanted}")


_KIND_NAMES = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    dict: "a JSON object",
    list: "a list",
    type(None): "null",
}


def _zoo_name(record: dict) -> str | None:
    """The name the zoo may load a report's model by (``None``: a module the user wrapped)."""
    if record["model_info"].get("weights") == "user module":
        return None
    return record["model"]


def _checked_concepts(path: Path, record: dict) -> list[str]:
    """Check the fields the atlas reads from a ``concepts.json``; return the files it must hold.

    A field of the wrong type would fail deep inside the import or the pages; every file name
    must stay inside the run's folder, as the pages link it relative to the atlas's copy (a
    ``../`` name would link, and serve, a file outside the atlas).
    """
    _of_type(path, "model", record["model"], str)
    _of_type(path, "model_info", record["model_info"], dict)
    _of_type(path, "model_info.fingerprint", record["model_info"].get("fingerprint"), (str,))
    _of_type(path, "layer", record["layer"], str)
    _of_type(path, "class", record["class"], dict)
    index = record["class"].get("index")
    _of_type(path, "class.index", index, int)
    if index < 0:
        _refuse(path, "class.index", f"{index}, not a class (a class index is 0 or more)")
    # How many classes the model has: the report stores it (an import loads no model);
    # reports written before it was stored are taken as they are.
    classes = record["class"].get("classes")
    if classes is not None:
        _of_type(path, "class.classes", classes, int)
        if classes < 1:
            _refuse(path, "class.classes", f"{classes}, not a number of classes (1 or more)")
        if index >= classes:
            command = classes_command(_zoo_name(record))
            _refuse(
                path,
                "class.index",
                f"{index}, beyond the model's {classes} classes (0 to {classes - 1}; "
                f"{command} lists them)",
            )
    _of_type(path, "class.name", record["class"].get("name", ""), str)
    _of_type(path, "discovery", record["discovery"], dict)
    _of_type(path, "concepts", record["concepts"], list)
    _of_type(path, "files", record.get("files", {}), dict)
    relevance = record.get("relevance", {})
    _of_type(path, "relevance", relevance, dict)
    _of_type(path, "relevance.per_image", relevance.get("per_image", []), list)
    named, linked = [], []  # files the run must hold, and files pages link
    for name, value in record.get("files", {}).items():
        _of_type(path, f"files.{name}", value, str)
        linked.append((f"files.{name}", value))
    for position, image in enumerate(relevance.get("per_image", [])):
        where = f"relevance.per_image[{position}]"
        _of_type(path, where, image, dict)
        _of_type(path, f"{where}.image", image.get("image"), str)
        linked.append((f"{where}.image", f"maps/{image['image']}.png"))  # its concept maps
    for position, entry in enumerate(record["concepts"]):
        where = f"concepts[{position}]"
        _of_type(path, where, entry, dict)
        _of_type(path, f"{where}.index", entry.get("index"), int)
        if entry["index"] < 0:
            _refuse(path, f"{where}.index", f"{entry['index']}, below 0")
        for number in ("share", "relevance"):  # null where a number was not finite
            _of_type(path, f"{where}.{number}", entry.get(number), (int, float, type(None)))
        for name in ("picture", "alpha", "record"):
            _of_type(path, f"{where}.{name}", entry.get(name), (str, type(None)))
            if entry.get(name):
                named.append((f"{where}.{name}", entry[name]))
        for name in ("examples", "maps"):
            _of_type(path, f"{where}.{name}", entry.get(name, []), list)
            for item, value in enumerate(entry.get(name, [])):
                _of_type(path, f"{where}.{name}[{item}]", value, str)
                if value:
                    named.append((f"{where}.{name}[{item}]", value))
    root = path.parent.resolve()
    for entry_field, name in named + linked:
        if not (root / name).resolve().is_relative_to(root):
            _refuse(path, entry_field, f"{name!r}, a file outside its folder")
    return [name for _, name in named]


def import_concepts(
    folder: str | Path, out: str | Path = "vital-out", *, render: bool = True
) -> AddedConcepts:
    """Put the finished result of a :func:`vital.concepts` run into the atlas ``out``.

    The atlas shows it as if :func:`add_concepts` had made it (a page per concept, the class's
    concept overview); nothing is computed. The set is keyed on the folder and its record: the
    same folder imported again is reused, a changed record (a re-run into the folder) replaces
    the atlas's copy, which stays in the atlas even if ``folder`` is later deleted.

    Parameters
    ----------
    folder
        The ``out`` folder of a :func:`vital.concepts` run (``concepts.json`` and its files).
    out
        The atlas folder (created if needed).
    render
        Write the site afterwards.

    Returns
    -------
    AddedConcepts
        Where the copy is, whether it was reused and what changed.
    """
    from vital.atlas.site import render_site

    if isinstance(folder, bytes):  # a path as the operating system returns it
        folder = os.fsdecode(folder)
    if not isinstance(folder, (str, os.PathLike)):
        raise VitalError(
            "import_concepts takes the folder of a `vital concepts` run as a path, not "
            f"{type(folder).__name__}."
        )
    Ledger(out)  # the atlas folder is checked before anything is read (nothing is written)
    source = Path(folder)
    record = _written_concepts(source)
    where = printable(source.resolve())
    inputs = _plain(
        {
            "model": record["model_info"].get("fingerprint"),
            "layer": record["layer"],
            "class": record["class"]["index"],
            "imported": where,
            "record": hashlib.sha256((source / "concepts.json").read_bytes()).hexdigest()[:16],
        }
    )
    key = _key(inputs)
    explained = ClassTarget(record["class"]["index"], record["class"].get("name", ""))
    set_id = f"{record['layer']}/{explained.unit()} imported from {where}"
    atlas = Atlas(out)
    name = (
        f"{FOLDER}/{explained.slug()[:48]}-{_slug(record['layer'])}-"
        f"{_slug(source.resolve().name, 24)}-{key[:8]}"
    )
    target = atlas.folder / name
    added = AddedConcepts(set_id, target, target / "index.html", record)
    stored = atlas.concept_sets().get(set_id)
    if stored is not None and stored.key == key and atlas.ledger.owns(target / "concepts.json"):
        added.reused = True
        return added
    if stored is not None:
        added.changed = differences(stored.inputs, inputs)
    _check_free(atlas, target)
    _copy_in(atlas, source, target)
    atlas.register_concepts(StoredConcepts(set_id, key, inputs, name))
    if render:
        render_site(atlas.folder)
    return added
