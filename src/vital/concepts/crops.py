"""Where a concept's examples come from: images, and random square crops of them.

With one photo per class the crops are the only examples a concept has, so the sampler decides
what a concept can be: crops of 5–40 % of the image's largest square (the default) are parts
(a cup's rim, a cat's eye, a wheel) rather than whole scenes. A crop is an
:class:`~vital.references.ImageSource` whose centre-crop view (the model's own preprocessing)
is the crop's box, so the pixels discovery factorises and the references a concept's picture
matches are the same views.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vital.errors import VitalError, is_number, plain
from vital.files import printable
from vital.methods.vital_class import class_folder_names, class_references
from vital.optimize import check_seed
from vital.references import (
    IMAGE_SUFFIXES,
    MAX_REFERENCES,
    ImageSource,
    ReferenceSet,
    has_data_folders,
    open_rgb,
    to_rgb,
)
from vital.targets import ClassTarget
from vital.zoo import Model

DEFAULT_CROPS = 128
DEFAULT_SCALE = (0.05, 0.4)
# An example's side as a fraction of its crop's, tried in this order around the concept's peak:
# the first that keeps EXAMPLE_KEEP of the concept's coefficient on the crop is the example (a
# whole crop, 1, holds the neighbouring parts too, which other concepts carry; a concept that
# needs its context keeps it). Measured: benchmarks/RESULTS.md, "Concept pictures tied to
# their examples".
EXAMPLE_ZOOMS = (0.5, 0.75, 1.0)
EXAMPLE_KEEP = 0.5
MIN_SIDE = 8  # a crop's smallest side in pixels (a smaller range is cut at it)
MAX_IMAGES = 200  # images of a class folder used (a seeded subset of larger folders)
DATABASE_SUFFIXES = (".sqlite", ".sqlite3", ".db")  # a --data file named as a database is one


@dataclass(frozen=True)
class Crop:
    """One square crop of an image.

    Attributes
    ----------
    source
        The crop as an image source (its centre-crop view is the box).
    image
        Index of the image it was cut from (in :attr:`CropSet.images`).
    box
        (left, top, side) in the original image's pixels.
    """

    source: ImageSource
    image: int
    box: tuple[int, int, int]


@dataclass(frozen=True)
class CropSet:
    """Images and the crops cut from them; ``pixels`` are the crops' views in [0, 1]."""

    images: tuple[ImageSource, ...]
    crops: tuple[Crop, ...]
    scale: tuple[float, float]
    seed: int

    def references(
        self, chosen: Sequence[int] | None = None, description: str = ""
    ) -> ReferenceSet:
        """Crops as a reference set (all, or the ``chosen`` ones in that order), one view each."""
        picked = [self.crops[i] for i in (range(len(self.crops)) if chosen is None else chosen)]
        return ReferenceSet(
            tuple(c.source for c in picked), len(picked), self.seed, description or "crops"
        )

    def pixels(self, model: Model, resolution: int) -> torch.Tensor:
        """(N, 3, R, R) the crops as the model sees them (its crop ratio and resampling)."""
        preprocessing = model.preprocessing
        views = self.references().views(
            resolution, preprocessing.crop_pct, preprocessing.interpolation
        )
        return torch.stack(list(views))


def crop_source(
    image: ImageSource, box: tuple[int, int, int], crop_pct: float, label: str
) -> ImageSource:
    """An image source whose centre crop (ratio ``crop_pct``) is the square ``box`` of ``image``.

    The box is grown by ``1 / crop_pct`` about its centre (and kept inside the image), since
    the centre crop takes back that margin.
    """
    left, top, side = box

    def load() -> Image.Image:
        opened = to_rgb(image.open())
        grown = min(round(side / crop_pct), opened.width, opened.height)
        x = int(min(max(round(left + side / 2 - grown / 2), 0), opened.width - grown))
        y = int(min(max(round(top + side / 2 - grown / 2), 0), opened.height - grown))
        return opened.crop((x, y, x + grown, y + grown))

    return ImageSource(f"{image.identity}#crop{left},{top},{side}", load, label)


def around_peak(
    image: ImageSource,
    crop: Crop,
    grid: np.ndarray,
    zoom: float = 0.5,
    crop_pct: float = 224 / 256,
) -> Crop:
    """The square of ``zoom`` times ``crop``'s side centred on ``grid``'s peak, inside the crop.

    Parameters
    ----------
    image, crop
        An image and a crop of it.
    grid
        (h, w) a concept's coefficient at each position of the layer's map of the crop.
    zoom
        The square's side as a fraction of the crop's (1: the crop itself).
    crop_pct
        The model's centre-crop ratio (see :func:`crop_source`).
    """
    if not 0 < zoom <= 1:
        raise VitalError(f"an example's zoom is a fraction of its crop, in (0, 1], not {zoom}.")
    left, top, side = crop.box
    small = min(side, max(MIN_SIDE, round(side * zoom)))
    if small == side:
        return crop
    row, column = np.unravel_index(int(np.argmax(grid)), grid.shape)
    x = left + (column + 0.5) / grid.shape[1] * side - small / 2
    y = top + (row + 0.5) / grid.shape[0] * side - small / 2
    box = (int(min(max(round(x), left), left + side - small)),
           int(min(max(round(y), top), top + side - small)), small)  # fmt: skip
    return Crop(crop_source(image, box, crop_pct, _label(image, box)), crop.image, box)


def check_sampling(count: int, scale: tuple[float, float]) -> tuple[float, float]:
    """Refuse a crop count or scale range :func:`sample_crops` cannot use (before any work).

    Returns
    -------
    tuple of float
        The scale range as Python numbers (numpy's, an array's or a tensor's too: it is
        recorded as JSON).
    """
    if isinstance(scale, (np.ndarray, torch.Tensor)):
        scale = scale.tolist()  # a 2-d one becomes lists, refused below
    pair = isinstance(scale, (tuple, list)) and len(scale) == 2
    values = tuple(plain(v) for v in scale) if pair else ()
    if not pair or not all(is_number(v) and 0 < v <= 1 for v in values) or values[0] > values[1]:
        raise VitalError(
            f"the crop scale (crop_scale=(LOW, HIGH)) is a range 0 < low ≤ high ≤ 1 of fractions "
            f"of the image's square, not {scale!r}."
        )
    count = plain(count)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise VitalError(f"the number of crops (crops=N) is at least 1, not {count!r}.")
    if count > MAX_REFERENCES:
        # the crops become one set of views, whose own cap would name --ref-count, an option
        # concepts does not have; and every crop is held at the model's side at once
        raise VitalError(
            f"the number of crops (crops=N) is at most {MAX_REFERENCES:,} (each is held in "
            f"memory as the model sees it; the default is {DEFAULT_CROPS}), not {count:,}."
        )
    return values


def check_data(data: str | Path | None) -> None:
    """Refuse a ``data`` that is not a path, or a path that does not exist (before any work)."""
    if data is not None and not isinstance(data, (str, Path)):
        # An image object or a list of paths would otherwise fail deep inside pathlib.
        raise VitalError(
            "data is a path (an image file, a folder of images, a list file or "
            f"OUT/mining.sqlite), not an object of type {type(data).__name__}: save the images "
            "to a folder, or write their paths into a list file, and give its path."
        )
    if data is not None and not Path(data).exists():
        raise VitalError(
            f"data={data} does not exist; the class's images are an image, a folder of images, "
            "a list file or OUT/mining.sqlite (or leave it out for the embedded photos)."
        )


def sample_crops(
    images: Sequence[ImageSource],
    count: int = DEFAULT_CROPS,
    scale: tuple[float, float] = DEFAULT_SCALE,
    seed: int = 0,
    crop_pct: float = 224 / 256,
) -> CropSet:
    """Random square crops spread evenly over the images.

    Parameters
    ----------
    images
        The images (unreadable ones are skipped with a warning).
    count
        Crops in all; every image gets ``ceil(count / images)`` of them.
    scale
        Range of a crop's area as a fraction of the image's largest square (uniform).
    seed
        Seed of the boxes.
    crop_pct
        The model's centre-crop ratio (see :func:`crop_source`).
    """
    low, high = check_sampling(count, scale)
    generator = np.random.default_rng(check_seed(seed))
    readable = [(s, size) for s in images if (size := _size(s)) is not None]
    if not readable:
        raise VitalError("none of the images could be read; check the files.")
    _check_reachable(high, max(min(size) for _, size in readable))
    per_image = math.ceil(count / len(readable))
    crops = []
    for index, (source, (width, height)) in enumerate(readable):
        short = min(width, height)
        for _ in range(per_image):
            # at least 8 pixels, but never more than the image has (a 1×1 or 3×500 image)
            side = min(short, max(MIN_SIDE, round(math.sqrt(generator.uniform(low, high)) * short)))
            left = int(generator.integers(0, width - side + 1))
            top = int(generator.integers(0, height - side + 1))
            box = (left, top, side)
            crops.append(Crop(crop_source(source, box, crop_pct, _label(source, box)), index, box))
    return CropSet(tuple(s for s, _ in readable), tuple(crops), (low, high), seed)


def _check_reachable(high: float, short: int) -> None:
    """Refuse a scale range whose every crop would be cut at :data:`MIN_SIDE` instead.

    ``short``: the largest image's shorter side. Images no larger than a smallest crop are
    cropped whole whatever the range, so they refuse nothing.
    """
    if short > MIN_SIDE and math.sqrt(high) * short < MIN_SIDE:
        needed = (MIN_SIDE / short) ** 2
        step = 10.0 ** (math.floor(math.log10(needed)) - 1)  # two digits, rounded up
        raise VitalError(
            f"the crop scale (crop_scale=(LOW, HIGH)) asks for crops under {MIN_SIDE} pixels on "
            f"every image (the largest is {short} px across), and crops are at least "
            f"{MIN_SIDE}: give a HIGH of at least {math.ceil(needed / step) * step:.2g}, not "
            f"{high:g}."
        )


def _label(source: ImageSource, box: tuple[int, int, int]) -> str:
    left, top, side = box
    return f"{source.label or Path(source.where).name or 'image'} crop {left},{top},{side}"


def _size(source: ImageSource) -> tuple[int, int] | None:
    image = open_rgb(source)
    return None if image is None else image.size


def class_images(
    model: Model,
    target: ClassTarget,
    data: str | Path | None,
    limit: int = MAX_IMAGES,
    seed: int = 0,
) -> tuple[list[ImageSource], list[str]]:
    """The images a class's concepts are found in, and notes on how they were chosen.

    ``data``: ``None`` (the embedded photos of the class), one image file, a mining database
    (its images of the class when it was mined over an ImageNet-style tree, else all of them),
    a list file as ``vital mine`` takes it (all its images), or a folder: an ImageNet-style
    tree or one sub-folder per class (the class's folder), or a plain folder. A plain folder
    may hold photos of several classes (one photo per class): the images whose file name names
    the class are used; without such names, the images whose top five predictions hold the
    class; when there are none, the one that ranks it highest.
    """
    check_data(data)
    if data is not None and Path(data).is_file():
        path = Path(data)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return [ImageSource.from_path(path)], []
        from vital.mining.results import is_mining_database

        if is_mining_database(path):
            return _mined_images(model, target, path, limit, seed), []
        if path.suffix.lower() in DATABASE_SUFFIXES:  # read as a list, it would "name" garbage
            raise VitalError(
                f"{printable(path)} is not a mining database; --data is an image, a folder, a "
                "list file (one image path a line) or OUT/mining.sqlite."
            )
        # A list file, as `vital mine` takes it: its images are the class's (as a mining
        # database's are when it holds no labels), a seeded subset of a long list.
        from vital.mining.datasets import list_images

        sources = [ImageSource.from_path(p) for p in list_images(path).paths]
        return _subset(sources, limit, seed)
    found = class_references(model, target, data, limit, seed, shared_ok=True, given_as="data")
    sources = list(found.sources)
    notes: list[str] = []
    if data is not None and not has_data_folders(data):
        sources, notes = _of_the_class(model, target, sources)
    sources, subset = _subset(sources, limit, seed)
    return sources, notes + subset


def _subset(
    sources: list[ImageSource], limit: int, seed: int
) -> tuple[list[ImageSource], list[str]]:
    """A seeded ``limit`` of ``sources`` (in their order) when there are more, and its note."""
    if len(sources) <= limit:
        return sources, []
    chosen = np.random.default_rng(seed).choice(len(sources), size=limit, replace=False)
    return [sources[i] for i in sorted(chosen)], [
        f"a random {limit} of the class's images were used."
    ]


def _words(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _of_the_class(
    model: Model, target: ClassTarget, sources: list[ImageSource]
) -> tuple[list[ImageSource], list[str]]:
    """A plain folder's images of ``target``: by file name, else by the model's top five."""
    if len(sources) == 1:
        return sources, []
    names = {_words(n) for n in class_folder_names(model, target)} - {""}
    stem = lambda s: f" {_words(Path(s.where).stem)} "  # noqa: E731
    named = [s for s in sources if any(f" {n} " in stem(s) for n in names)]
    if named:
        return named, [f"{len(named)} of {len(sources)} images name the class in their file name."]
    from vital.references import center_crop

    preprocessing = model.preprocessing
    kept, ranks = [], []
    with torch.no_grad():
        for source in sources:
            image = open_rgb(source)
            if image is None:
                continue
            pixels = center_crop(
                image, preprocessing.input_size, preprocessing.crop_pct, preprocessing.interpolation
            )
            logits = model.module(
                preprocessing.normalize(pixels[None].to(model.device, model.dtype))
            )
            rank = int((logits[0] > logits[0, target.index]).sum())
            ranks.append((rank, source))
            if rank < 5:
                kept.append(source)
    if kept:
        return kept, [f"{len(kept)} of {len(sources)} images have the class in their top five."]
    if not ranks:  # else min() of nothing: a ValueError's traceback
        named = ", ".join(s.where for s in sources[:3])
        raise VitalError(
            f"none of the {len(sources)} images could be read (e.g. {named}); check the files "
            "(they are not images, or are damaged)."
        )
    rank, best = min(ranks, key=lambda pair: pair[0])
    return [best], [
        f"no image names the class or has it in its top five: the one that ranks it highest "
        f"({rank + 1}) was used."
    ]


def _mined_images(
    model: Model, target: ClassTarget, path: Path, limit: int, seed: int
) -> list[ImageSource]:
    from vital.mining.index import MiningIndex

    labelled = MiningIndex(path).images()
    wnids = model.labels.wnids if model.labels is not None else ()
    names = {wnids[target.index]} if target.index < len(wnids) else set()
    own = [p for p, label in labelled if label in names]
    paths = own or [p for p, _ in labelled]
    paths = [p for p in dict.fromkeys(paths) if Path(p).is_file()]
    if not paths:
        raise VitalError(f"the images listed in {path} no longer exist; mine again.")
    if len(paths) > limit:
        chosen = np.random.default_rng(seed).choice(len(paths), size=limit, replace=False)
        paths = [paths[i] for i in sorted(chosen)]
    return [ImageSource.from_path(p) for p in paths]
