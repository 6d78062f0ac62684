"""Small pictures of mined dataset examples: the crop the miner saw with its best patch boxed.

Used by the atlas's unit pages and by explanations; the files are written inside the atlas
folder (claimed in its ledger), so the site never reaches outside it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image, ImageDraw

from vital.atlas.ledger import Ledger
from vital.files import open_image, save_image
from vital.mining import Ranked, open_patch
from vital.references import resize_for_crop

THUMBNAIL = 128
BOX_COLOUR = (255, 214, 0)


def example_stem(entry: Ranked) -> str:
    """A file-name stem that changes when the example does (image, box or crop)."""
    text = f"{entry.path}|{entry.box}|{entry.crop}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def boxed_crop(entry: Ranked, side: int = THUMBNAIL) -> Image.Image:
    """The centre crop the miner saw, ``side`` pixels wide, with the best patch outlined."""
    resized, left, top = resize_for_crop(open_image(entry.path), entry.crop)
    crop = resized.crop((left, top, left + entry.crop, top + entry.crop))
    scale = side / entry.crop
    thumbnail = crop.resize((side, side), Image.Resampling.BILINEAR)
    box_left, box_top, size = entry.box
    outline = [
        box_left * scale,
        box_top * scale,
        (box_left + size) * scale - 1,
        (box_top + size) * scale - 1,
    ]
    ImageDraw.Draw(thumbnail).rectangle(outline, outline=BOX_COLOUR, width=2)
    return thumbnail


def write_example(entry: Ranked, folder: Path, ledger: Ledger) -> dict[str, str] | None:
    """Write an example's boxed crop and patch into ``folder`` (once); their atlas paths.

    Returns ``None`` when the image cannot be read any more (moved or deleted).
    """
    stem = example_stem(entry)
    paths = {"thumbnail": folder / f"{stem}.jpg", "patch": folder / f"{stem}-patch.jpg"}
    if not all(path.is_file() and ledger.owns(path) for path in paths.values()):
        try:
            thumbnail = boxed_crop(entry)
            patch = open_patch(entry).resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
        except (OSError, ValueError):
            return None
        ledger.claim(paths.values())
        save_image(paths["thumbnail"], thumbnail, quality=88)
        save_image(paths["patch"], patch, quality=88)
        ledger.seal(paths.values())
    return {kind: path.relative_to(ledger.folder).as_posix() for kind, path in paths.items()}


def example_entry(entry: Ranked, files: dict[str, str] | None) -> dict:
    """A mined example as record data: where it came from, its scores and box, its files."""
    return {
        "rank": entry.rank,
        "image": entry.path,
        "label": entry.label,
        "score": entry.score,
        "image_score": entry.image_score,
        "box": list(entry.box),
        "crop": entry.crop,
        **(files or {}),
    }
