"""Reading mined lists back: as reference sets for the visualisations, and as contact sheets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vital.errors import VitalError, check_count
from vital.files import open_image
from vital.grids import grid
from vital.mining.index import MiningIndex, Ranked, database_path
from vital.mining.units import unit_key
from vital.references import ImageSource, ReferenceSet, resize_for_crop
from vital.renamed import renamed
from vital.targets import Channel, Direction
from vital.zoo import Model

Unit = int | str | Channel | Direction | np.ndarray


def _fingerprint(model: Model | str) -> str:
    return model if isinstance(model, str) else model.fingerprint


def mined(
    database: str | Path, model: Model | str, layer: str, unit: Unit
) -> tuple[dict, list[Ranked]]:
    """The newest mined list for a unit: (header, ranked images best first).

    Parameters
    ----------
    database
        The index file, or the folder that holds ``mining.sqlite``.
    model
        The :class:`~vital.zoo.Model` that was mined (matched by its weights' fingerprint), or
        the fingerprint.
    layer
        Module name.
    unit
        Channel index, ``Channel``, ``Direction``, direction vector or index key.
    """
    path = database_path(database)
    if not path.is_file():
        raise VitalError(f"mining database {path} does not exist; run `vital mine` first.")
    return MiningIndex(path).ranked(_fingerprint(model), layer, unit_key(unit))


def open_patch(entry: Ranked, context: float = 1.0) -> Image.Image:
    """The patch of a mined image as the miner saw it, optionally with a margin around it.

    ``context`` scales the side around the patch's centre; ``256 / 224`` leaves exactly the
    margin that :func:`vital.references.center_crop` trims, so a reference view of the
    returned image is the patch itself.
    """
    resized, crop_left, crop_top = resize_for_crop(open_image(entry.path), entry.crop)
    left, top, size = entry.box
    side = size * context
    centre_x = crop_left + left + size / 2
    centre_y = crop_top + top + size / 2
    box = (
        round(centre_x - side / 2),
        round(centre_y - side / 2),
        round(centre_x + side / 2),
        round(centre_y + side / 2),
    )
    return resized.crop(box)


def _source(entry: Ranked, mode: str) -> ImageSource:
    stat = Path(entry.path).stat()
    identity = f"{entry.path}:{stat.st_size}:{stat.st_mtime_ns}"
    label = Path(entry.path).name
    if mode == "image":
        return ImageSource(identity, lambda: open_image(entry.path), label)
    left, top, size = entry.box
    return ImageSource(
        f"{identity}#patch={left},{top},{size}@{entry.crop}",
        lambda: open_patch(entry, context=256 / 224),
        label,
    )


@renamed(mode="mined_as", count="reference_count")
def mined_references(
    database: str | Path,
    model: Model | str,
    layer: str,
    channel_or_direction: Unit,
    mined_as: str = "image",
    reference_count: int = 50,
    seed: int = 0,
) -> ReferenceSet:
    """The top mined images (``mined_as="image"``) or their best patches (``"patch"``) of a unit.

    The released code of the paper uses the whole images, the paper describes the patches
    (METHOD.md section 3). The set holds the ``reference_count`` best-ranked images; when
    fewer were mined, :class:`~vital.references.ReferenceSet` fills up with augmented views.
    ``mined_as`` is ``--mined-as`` of the command line and ``reference_count`` its
    ``--ref-count`` (``mode=`` and ``count=``, their old names, still work with a warning).
    """
    # 0 would be "no usable reference images (top 0 …)"
    count = check_count(reference_count, "reference_count")
    if mined_as not in ("image", "patch"):
        raise VitalError(f"mined_as='image' or 'patch', not {mined_as!r}.")
    info, ranked = mined(database, model, layer, channel_or_direction)
    chosen = ranked[:count]
    kind = "patches" if mined_as == "patch" else "images"
    description = (
        f"top {len(chosen)} mined {kind} of {layer} {info['unit_name']} "
        f"({info['scanned']} images scanned)"
    )
    return ReferenceSet(tuple(_source(e, mined_as) for e in chosen), count, seed, description)


@renamed(mode="mined_as", count="reference_count")
def mined_reference_sets(
    database: str | Path,
    model: Model | str,
    targets: Sequence[Channel | Direction],
    mined_as: str = "image",
    reference_count: int = 50,
) -> dict[Channel | Direction, ReferenceSet]:
    """The mined references of several targets, keyed by target (for ``visualize``)."""
    return {
        target: mined_references(database, model, target.layer, target, mined_as, reference_count)
        for target in targets
    }


def is_mining_database(path: str | Path) -> bool:
    """True for a mining index file (an SQLite file) or a folder that holds one."""
    file = database_path(path)
    if not file.is_file():
        return False
    with open(file, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def contact_sheet(
    database: str | Path,
    model: Model | str,
    layer: str,
    unit: Unit,
    count: int = 50,
    columns: int = 10,
    cell: int = 96,
) -> Image.Image:
    """The top ``count`` patches of a unit in a grid, each with its score underneath."""
    # cell=0 would be PIL's "height and width must be > 0"
    count, columns, cell = (
        check_count(value, name)
        for value, name in ((count, "count"), (columns, "columns"), (cell, "cell"))
    )
    info, ranked = mined(database, model, layer, unit)
    chosen = ranked[:count]
    if not chosen:
        raise VitalError(f"nothing was mined for {layer} {info['unit_name']}.")
    return grid(
        [open_patch(entry) for entry in chosen],
        [f"{entry.score:.2f} {Path(entry.path).stem}" for entry in chosen],
        columns=min(columns, len(chosen)),
        cell=cell,
    )
