"""The VITAL pictures of an explanation's channels: reused when stored with the same inputs.

A picture is looked up, in order, in the atlas the explanation is written to and in the stores
the caller names (other atlases, or folders written by ``vital neuron --out``); a stored picture
is reused when its record matches everything the picture depends on (:mod:`vital.atlas.keys`:
model fingerprint, target, effective settings, references identity, method options), whatever
its seed. A picture found in another store is copied into the atlas, so the site stays
self-contained. The others are computed by :func:`vital.atlas.build_atlas` (that is,
:func:`vital.visualize`, the driver) on the channel's mined references.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from vital.atlas.build import GivenModel, build_atlas
from vital.atlas.folder import Atlas
from vital.atlas.keys import picture_spec
from vital.errors import VitalError
from vital.files import printable, read_only
from vital.record import Record
from vital.references import ReferenceSet
from vital.specs import PictureSpec
from vital.store import Result, load_result
from vital.targets import Channel
from vital.zoo import Model


def store_index(folder: str | Path) -> tuple[Path, Path]:
    """The index of a store to reuse pictures from, and the folder its pictures are in.

    An explanation checks its stores with this before it writes anything: a store that is not
    vital's was refused only after the mining pass, beside the explanation's new atlas.

    Raises
    ------
    VitalError
        When ``folder`` holds no index vital wrote (an atlas's ``atlas.sqlite`` or a result
        folder's ``index.sqlite``), or one that cannot be read.
    """
    folder = Path(folder)
    for index, results, kind in (
        (folder / "atlas.sqlite", folder / "results", "an atlas"),
        (folder / "index.sqlite", folder, "a result store"),
    ):
        if not index.is_file():
            continue
        try:
            with contextlib.closing(read_only(index)) as connection:
                connection.execute("SELECT record FROM results LIMIT 1").fetchall()
        except sqlite3.DatabaseError as error:
            raise VitalError(
                f"{printable(index)} is not {kind} that vital wrote ({error}); give an atlas "
                "or a folder written by `vital neuron --out` to reuse pictures from."
            ) from error
        return index, results
    raise VitalError(
        f"{printable(folder)} holds no vital results (no atlas.sqlite or index.sqlite); name "
        "an atlas folder or a folder written by `vital neuron --out`."
    )


def _store_records(folder: Path) -> list[tuple[Record, Path]]:
    """Records of a result folder or an atlas, with the folder their files are in."""
    index, results = store_index(folder)
    try:
        with contextlib.closing(read_only(index)) as connection:
            rows = connection.execute("SELECT record FROM results").fetchall()
    except sqlite3.DatabaseError as error:  # changed since it was checked
        raise VitalError(f"{printable(index)} cannot be read ({error}).") from error
    return [(Record.from_json(row[0]), results) for row in rows]


def _in_atlas(atlas: Atlas, spec: PictureSpec) -> Record | None:
    stored = atlas.units().get(spec.unit)
    if stored is None:
        return None
    path = atlas.store.folder / stored.record
    if not path.is_file():
        return None
    record = Record.from_json(path.read_text())
    return record if spec.matches(record, ignore_seed=True) else None


def _import(atlas: Atlas, result: Result, spec: PictureSpec, references: ReferenceSet) -> None:
    record = result.record
    record.unit = spec.unit
    record.references = dict(record.references or {})
    record.references["top"] = atlas.reference_thumbnails(result.target, references)
    atlas.ledger.claim(atlas.result_files(result.stem))
    atlas.store.write(result)
    atlas.ledger.seal(result.paths.values())
    seeded = dataclasses.replace(spec, settings={**spec.settings, "seed": record.seed})
    atlas.register(seeded, result.paths["json"].name)


def _entry(atlas: Atlas, spec: PictureSpec, source: str) -> dict:
    stored = atlas.units()[spec.unit]
    record = Record.from_json((atlas.store.folder / stored.record).read_text())
    files = {kind: f"results/{name}" for kind, name in record.files.items()}
    return {
        "unit": spec.unit,
        "source": source,
        "key": stored.key,
        "seed": record.seed,
        "record": files["json"],
        "png": files["png"],
        **({"rgba": files["rgba"]} if "rgba" in files else {}),
        "activation": record.evaluation.get("activation"),
        "reference_activation": record.evaluation.get("reference_activation"),
    }


def channel_pictures(
    atlas: Atlas,
    model: Model,
    layer: str,
    references: Mapping[int, ReferenceSet],
    seed: int = 0,
    setting: int | str | None = None,
    overrides: Mapping[str, object] | None = None,
    stores: Sequence[str | Path] = (),
    force: bool = False,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[int, dict]:
    """The VITAL picture of each channel (reused or computed), as explanation entries.

    Parameters
    ----------
    atlas
        Where pictures are recorded.
    model
        The explained model.
    layer
        The channels' layer.
    references
        Each channel's reference set (its mined images).
    seed
        Seed of pictures that are computed.
    setting, overrides
        VITAL's named setting and the user's changes to its defaults.
    stores
        Other atlases or result folders to reuse pictures from.
    force
        Compute every picture again.
    batch_size, progress
        As for :func:`vital.atlas.build_atlas`.

    Returns
    -------
    dict
        Channel → ``unit``, ``source`` (``atlas``, ``store PATH`` or ``computed``), ``key``,
        ``seed``, ``record``, ``png``, ``rgba`` (atlas paths) and the picture's activations.
    """
    specs = {
        channel: picture_spec(model, Channel(layer, channel), refs, seed, setting, overrides)
        for channel, refs in references.items()
    }
    sources: dict[int, str] = {}
    if not force:
        for channel, spec in specs.items():
            if _in_atlas(atlas, spec) is not None:
                sources[channel] = "atlas"
        others = [Path(folder) for folder in stores]
        for folder in others:
            missing = [c for c in specs if c not in sources]
            if not missing:
                break
            records = _store_records(folder)
            for channel in missing:
                spec = specs[channel]
                found = next(
                    ((r, f) for r, f in records if spec.matches(r, ignore_seed=True)), None
                )
                if found is not None:
                    result = load_result(found[0], found[1], Channel(layer, channel))
                    _import(atlas, result, spec, references[channel])
                    sources[channel] = f"store {folder}"
    todo = [channel for channel in specs if channel not in sources]
    if todo:
        build_atlas(
            GivenModel(model, device=str(model.device)),
            [Channel(layer, channel) for channel in todo],
            lambda target: references[target.index],
            atlas.folder,
            dict(overrides or {}),
            setting=setting,
            seeds=[seed] * len(todo),
            force=force,
            batch_size=batch_size,
            progress=progress,
            render=False,
        )
        stored = atlas.units()
        for channel in todo:
            current = stored.get(specs[channel].unit)
            if current is not None and current.key == specs[channel].key():
                sources[channel] = "computed"
    return {
        channel: _entry(atlas, specs[channel], sources[channel])
        for channel in specs
        if channel in sources
    }
