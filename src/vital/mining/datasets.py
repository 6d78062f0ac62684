"""The images to mine: a folder tree or a list file, listed once and decoded in workers.

A dataset is an ordered list of image files. Its *position* numbers are what the index stores
and what breaks ties between equal scores, so the listing is sorted and stable across runs; its
identity (paths, sizes, modification times) says whether earlier mining work still applies.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import signal
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vital.errors import VitalError
from vital.files import is_printable, open_image, printable
from vital.references import (
    IMAGE_SUFFIXES,
    ImageSource,
    images_and_others,
    is_imagenet_tree,
    open_rgb,
    resize_for_crop,
)


@dataclass(frozen=True)
class ImageList:
    """An ordered list of image files to mine.

    Attributes
    ----------
    root
        The folder or list file they came from.
    paths
        Absolute paths, in mining order.
    labels
        Per image: its class folder (WordNet id) in an ImageNet-style tree, else ``""``.
    not_images
        Files under the folder that were ignored because their suffix is not an image's.
    identity
        SHA-256 over paths, sizes and modification times: changes when the data does.
    """

    root: str
    paths: tuple[str, ...]
    labels: tuple[str, ...]
    not_images: int
    identity: str

    def __len__(self) -> int:
        return len(self.paths)


def list_images(data: str | Path) -> ImageList:
    """List the images of a folder tree (any depth), of a list file (one path a line), or one.

    In a list file (UTF-8, with or without a byte-order mark, or the file system's encoding),
    blank lines and lines whose first non-blank character is ``#`` are skipped, and relative
    paths are relative to the list file's folder.

    Raises
    ------
    VitalError
        When ``data`` does not exist or holds no images.
    """
    if not isinstance(data, (str, os.PathLike)):
        raise VitalError(
            f"data is a folder, a list file (one image path a line) or one image, not "
            f"{type(data).__name__}; write the paths into a list file."
        )
    data = Path(data)
    if data.is_dir():
        paths, others = images_and_others(data)
        labelled = is_imagenet_tree(data)
        labels = [p.relative_to(data).parts[0] if labelled else "" for p in paths]
    elif data.is_file() and data.suffix.lower() in IMAGE_SUFFIXES:
        # One image (as `vital concepts --data` takes it), not a list file of binary "lines"
        paths, others, labels = [data], 0, [""]
    elif data.is_file():
        # Names as the file system takes them: a list written in Latin-1 is read, not refused.
        # Hence bytes, not "utf-8-sig" text: the BOM an editor (Notepad) puts first is dropped
        # here, or the first path would carry an invisible character and "not exist".
        raw = data.read_bytes().removeprefix(codecs.BOM_UTF8)
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise VitalError(
                f"the list file {printable(data)} is saved as UTF-16; save it as UTF-8 (one "
                "image path a line)."
            )
        lines = [os.fsdecode(line).strip() for line in raw.splitlines()]
        # An indented "# note" is a comment too, not a path named "# note"
        entries = [line for line in lines if line and not line.startswith("#")]
        if not entries:  # "no images found in LIST (0 other files …)" would send one looking
            raise VitalError(
                f"the list file {printable(data)} names no images; write one image path a line."
            )
        paths = [p if p.is_absolute() else data.parent / p for p in map(Path, entries)]
        missing = [printable(p) for p in paths if not p.is_file()]
        if missing:
            raise VitalError(
                f"{len(missing)} file(s) in the list {printable(data)} do not exist, e.g. "
                f"{missing[0]}; paths are relative to the list file's folder."
            )
        others, labels = 0, [""] * len(paths)
    else:
        raise VitalError(
            f"{printable(data)} is neither a folder of images nor a list file of image paths."
        )
    strange = [printable(p) for p in paths if not is_printable(p)]
    if strange:
        warnings.warn(
            f"skipping {len(strange)} image(s) whose file name is not valid UTF-8, e.g. "
            f"{strange[0]}: the mining index stores names as text; rename them (e.g. "
            "`convmv -f latin1 -t utf8 -r --notest DIR`).",
            stacklevel=2,
        )
        kept = [i for i, p in enumerate(paths) if is_printable(p)]
        paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
    if not paths:
        raise VitalError(
            f"no images found in {data} ({others} other file(s) ignored; image files end in "
            f"{', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    digest = hashlib.sha256()
    resolved = []
    for path in paths:
        stat = path.stat()
        resolved.append(str(path.resolve()))
        digest.update(f"{resolved[-1]}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return ImageList(str(data), tuple(resolved), tuple(labels), others, digest.hexdigest()[:24])


class CropDataset(torch.utils.data.Dataset):
    """Images → (position, centre crop as uint8, readable), for a DataLoader.

    Crops are uint8 (a quarter of float32's bytes to ship between processes or machines);
    ``crops.float() / 255`` gives exactly the values of :func:`vital.references.center_crop`.
    Unreadable files give a zero crop and ``readable = False`` instead of an error, so a
    corrupt file costs one count, not the run.

    Parameters
    ----------
    paths
        The image files.
    positions
        Their positions in the dataset (what the index stores), one per path.
    resolution
        Side of the centre crop.
    """

    def __init__(self, paths: Sequence[str], positions: Sequence[int], resolution: int):
        self.paths = paths
        self.positions = positions
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> tuple[int, torch.Tensor, bool]:
        position = self.positions[item]
        path = self.paths[item]
        source = ImageSource(path, lambda: open_image(path))
        with warnings.catch_warnings():  # counted and reported once by the caller
            warnings.simplefilter("ignore")
            image = open_rgb(source)
        if image is None:
            return (
                position,
                torch.zeros(3, self.resolution, self.resolution, dtype=torch.uint8),
                False,
            )
        return position, center_crop_uint8(image, self.resolution), True


def center_crop_uint8(image: Image.Image, resolution: int) -> torch.Tensor:
    """(3, resolution, resolution) uint8: the pixels of :func:`vital.references.center_crop`."""
    resized, left, top = resize_for_crop(image, resolution)
    crop = resized.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1)


def crop_loader(
    paths: Sequence[str],
    positions: Sequence[int],
    resolution: int,
    batch_size: int,
    workers: int,
) -> torch.utils.data.DataLoader:
    """Batches of uint8 centre crops of ``paths`` (in that order), decoded in ``workers``."""
    return torch.utils.data.DataLoader(
        CropDataset(paths, positions, resolution),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
        worker_init_fn=_leave_interrupts_to_the_main_process if workers else None,
    )


def _leave_interrupts_to_the_main_process(_worker: int) -> None:
    """Ctrl-C reaches every process of the group: decoders ignore it, the driver stops them.

    Otherwise each worker prints its own KeyboardInterrupt or ConnectionResetError traceback
    over the driver's message about what was saved. SIGTERM, which the command line takes as
    Ctrl-C in its own process (a forked decoder inherits that), ends a decoder at once, as
    the loader's shutdown expects.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
