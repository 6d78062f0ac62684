"""Reference images: where they come from, how they are prepared, and their prototypes.

A :class:`ReferenceSet` is a list of image sources (files or embedded photos) plus how many views
to draw from them. Prototypes (sorted-quantile averages per tap, METHOD.md section 1) are computed
in a streaming pass, so only one batch of reference features is ever in memory, and cached on
disk keyed by model, taps, references and resolution.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vital.errors import VitalError, check_count
from vital.files import (
    UnreadableImageError,
    WriteError,
    decoding,
    open_image,
    printable,
    save_image,
    save_tensors,
    sqlite_tables,
    to_rgb,
)
from vital.losses import sorted_prototype
from vital.progress import views_done
from vital.scales import coarse_key, coarsen
from vital.taps import tapped

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
DEFAULT_REFERENCES = 50
MAX_REFERENCES = 10_000


@dataclass(frozen=True)
class ImageSource:
    """One reference image: a stable identity (for caching) and a way to open it."""

    identity: str
    open: Callable[[], Image.Image] = field(compare=False, repr=False)
    label: str = ""
    where: str = field(default="", compare=False)  # how messages name it (a file: its path)

    @classmethod
    def from_path(cls, path: str | Path) -> ImageSource:
        """A file; its identity changes when the file does."""
        path = Path(path)
        stat = path.stat()
        identity = f"{printable(path.resolve())}:{stat.st_size}:{stat.st_mtime_ns}"
        return cls(identity, lambda: open_image(path), where=printable(path))


def open_rgb(source: ImageSource) -> Image.Image | None:
    """Open a source as RGB, upright, or warn (saying why) and return ``None``."""
    try:
        with decoding(source.where or source.identity):
            return to_rgb(source.open())
    except UnreadableImageError as error:
        warnings.warn(error.warning, stacklevel=2)
        return None


def one_targets_references(given: object, what: str) -> ReferenceSet | str | Path | None:
    """A value of a references mapping: a folder, a :class:`ReferenceSet` or ``"samples"``.

    ``what`` names the target in the message about anything else (a list, a number, a
    mapping inside the mapping).
    """
    if given is None or isinstance(given, (ReferenceSet, str, Path)):
        return given
    raise VitalError(
        f"the references of {what} are a folder (a path), a ReferenceSet or 'samples', not "
        f"{type(given).__name__}; e.g. {{967: 'photos/espresso'}}."
    )


def reference_folder(path: str | Path, kinds: str) -> Path:
    """``path`` as an existing folder of references, or an error saying what it is instead.

    ``kinds`` says what a references folder may hold (for the message about a file).
    """
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise VitalError(f"a reference folder is a path, not {type(path).__name__}.")
    folder = Path(path)
    if folder.is_file():
        raise VitalError(f"{folder} is a file; references are {kinds}.")
    if not folder.is_dir():  # a device (/dev/zero) exists, and is no folder
        missing = "is not a folder" if folder.exists() else "does not exist"
        raise VitalError(f"reference folder {folder} {missing}.")
    return folder


# A folder holding one of these is one vital writes into (a mining index, an atlas, a store of
# pictures, a concepts run): mark file → a table it has (or the text it starts with). Its files
# are vital's output, never the user's data: an `--out` inside `--data` (`cd photos && vital
# mine --data .` writes ./vital-out) would otherwise have the next run mine its own contact
# sheets and pages. Each mark is checked to be vital's, so that a user's own file of that
# name (an `index.sqlite` of theirs) does not hide their images.
# The mark a `vital concepts` run writes first into its folder, and the text it holds.
CONCEPTS_MARK = ".vital-concepts"
CONCEPTS_MARK_TEXT = "written by vital concepts\n"
VITAL_MARKS = {
    "mining.sqlite": "ranked",
    "atlas.sqlite": "atlas_units",
    "index.sqlite": "results",
    CONCEPTS_MARK: CONCEPTS_MARK_TEXT,
}


def _is_vitals(mark: Path, sign: str) -> bool:
    """Whether the file ``mark`` is one vital wrote (a table ``sign``, or text that starts so)."""
    if mark.suffix == ".sqlite":
        return sign in (sqlite_tables(mark) or set())
    try:
        with open(mark, "rb") as handle:
            return handle.read(len(sign.encode())) == sign.encode()
    except OSError:
        return False


def vital_output(folder: str | Path) -> str | None:
    """The mark file that shows ``folder`` to be one vital writes into, or ``None``."""
    folder = Path(folder)
    return next(
        (
            mark
            for mark, sign in VITAL_MARKS.items()
            if (folder / mark).is_file() and _is_vitals(folder / mark, sign)
        ),
        None,
    )


def users_image(folder: str | Path) -> Path | None:
    """An image of the user's at the top of ``folder`` (one that is not vital's output), if any.

    Output written among a user's photos would be taken for photos by the next run over the
    folder, and the folder, once marked as vital's, left out of the data: such a folder is
    refused as an output folder.
    """
    folder = Path(folder)
    if not folder.is_dir() or vital_output(folder) is not None:
        return None
    return next(
        (p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        None,
    )


def has_data_folders(folder: str | Path) -> bool:
    """Whether ``folder`` has sub-folders other than vital's output folders (class folders)."""
    return any(child.is_dir() and vital_output(child) is None for child in Path(folder).iterdir())


def data_files(folder: str | Path) -> tuple[list[Path], dict[Path, list[Path]]]:
    """Every file under ``folder`` (any depth), sorted, but those of vital's output folders.

    A sub-folder holding one of :data:`VITAL_MARKS` is left out with everything under it
    (``folder`` itself is what the user named, and is kept).

    Returns
    -------
    files, left_out
        The files, and per output folder left out the files under it.
    """
    folder = Path(folder)
    marked: dict[Path, bool] = {}
    files: list[Path] = []
    left_out: dict[Path, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        # The first marked folder between ``folder`` and the file (each folder checked once).
        parts = path.relative_to(folder).parts[:-1]
        inside = (folder.joinpath(*parts[: n + 1]) for n in range(len(parts)))
        owner = next((d for d in inside if marked.setdefault(d, vital_output(d) is not None)), None)
        if owner is None:
            files.append(path)
        else:
            left_out.setdefault(owner, []).append(path)
    return files, left_out


def check_apart(data: object, out: str | Path) -> None:
    """Refuse an output folder that is the data folder itself, before anything is written.

    Sub-folders vital writes into are left out of the data (:func:`data_files`), but the data
    folder is what the user named: the contact sheets, pictures and pages written into it
    would be read as images by the next run. An image list, a list file or one image is the
    user's own choice of paths.
    """
    if not isinstance(data, (str, os.PathLike)) or not Path(data).is_dir():
        return
    if Path(out).resolve() == Path(data).resolve():
        raise VitalError(
            f"the output folder {printable(Path(out))} is the data folder: the next run would "
            "read the pictures vital writes there as images; give the output a folder of its "
            "own (out=DIR, e.g. a sub-folder of the data)."
        )


def find_images(folder: str | Path) -> list[Path]:
    """All image files under ``folder`` (any depth), sorted for determinism.

    Files in sub-folders that vital writes into (:func:`data_files`) are left out, with a
    warning that names them.
    """
    return images_and_others(folder)[0]


def images_and_others(folder: str | Path) -> tuple[list[Path], int]:
    """:func:`find_images`, and how many other files of the user's lie beside them.

    One walk of the tree for both (a data set's folder may hold a million files).
    """
    folder = reference_folder(
        folder,
        "a folder of images (any depth) or, for inner neurons, a mining database (`vital mine` "
        "writes OUT/mining.sqlite)",
    )
    is_image = lambda path: path.suffix.lower() in IMAGE_SUFFIXES  # noqa: E731
    files, left_out = data_files(folder)
    skipped = {d: n for d, paths in left_out.items() if (n := sum(map(is_image, paths)))}
    if skipped:
        named = ", ".join(printable(d) for d in list(skipped)[:3])
        warnings.warn(
            f"leaving out {sum(skipped.values())} image(s) under {named}"
            f"{' and more' if len(skipped) > 3 else ''}: folders vital writes into are "
            "never data.",
            stacklevel=3,
        )
    images = [p for p in files if is_image(p)]
    return images, len(files) - len(images)


# --- the embedded photos ----------------------------------------------------------------------


def _requires(module: str, package: str, photo: str):
    """Import ``module`` or say which package brings the embedded photo ``photo``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise VitalError(
            f"the embedded photo {photo!r} ships with {package}, which is not installed: "
            "pip install 'vital[samples]' for the sample photos, or give your own images "
            "(--refs DIR)."
        ) from error


def _photo(
    module: str, package: str, name: str, read: Callable[[Any, str], Image.Image]
) -> Callable[[], Image.Image]:
    """A loader of photo ``name`` from ``module`` (inside ``package``), imported when needed."""

    def load() -> Image.Image:
        return read(_requires(module, package, name), name)

    load.requires = (module, package)
    return load


def _skimage_read(data: Any, name: str) -> Image.Image:
    array = getattr(data, name)()
    return Image.fromarray(array[0] if isinstance(array, tuple) else array)  # stereo: left


def _skimage(name: str) -> Callable[[], Image.Image]:
    return _photo("skimage.data", "scikit-image", name, _skimage_read)


def _sklearn(filename: str) -> Callable[[], Image.Image]:
    read = lambda datasets, name: Image.fromarray(datasets.load_sample_image(name))  # noqa: E731
    return _photo("sklearn.datasets", "scikit-learn", filename, read)


def _matplotlib(filename: str) -> Callable[[], Image.Image]:
    def read(cbook, name: str) -> Image.Image:
        with cbook.get_sample_data(name) as file:  # an open file: closed once read
            image = Image.open(file)
            image.load()
        return image

    return _photo("matplotlib.cbook", "matplotlib", filename, read)


# name → (loader, ImageNet class the photo shows, or None)
SAMPLE_PHOTOS: dict[str, tuple[Callable[[], Image.Image], int | None]] = {
    "chelsea": (_skimage("chelsea"), 285),  # Egyptian cat
    "coffee": (_skimage("coffee"), 967),  # espresso
    "motorcycle": (_skimage("stereo_motorcycle"), 665),  # moped
    "rocket": (_skimage("rocket"), 812),  # space shuttle
    "astronaut": (_skimage("astronaut"), None),
    "palace": (_sklearn("china.jpg"), 698),  # palace
    "daisy": (_sklearn("flower.jpg"), 985),  # daisy
    "grace_hopper": (_matplotlib("grace_hopper.jpg"), 652),  # military uniform
}


def sample_photo(name: str) -> ImageSource:
    """One embedded photo by name (see ``SAMPLE_PHOTOS``)."""
    if name not in SAMPLE_PHOTOS:
        raise VitalError(f"no embedded photo {name!r}; choose from {', '.join(SAMPLE_PHOTOS)}.")
    loader, _ = SAMPLE_PHOTOS[name]
    module, package = getattr(loader, "requires", (None, None))
    if module is not None:  # say now, not as an unreadable image later
        _requires(module, package, name)
    return ImageSource(f"sample:{name}", loader, label=name)


def sample_photos_for_class(index: int) -> list[ImageSource]:
    """Embedded photos that show ImageNet class ``index`` (empty if none does)."""
    return [sample_photo(n) for n, (_, c) in SAMPLE_PHOTOS.items() if c == index]


def export_sample_photos(folder: str | Path) -> list[Path]:
    """Write every embedded photo as a JPEG into ``folder`` (for mining, atlases, tests)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in SAMPLE_PHOTOS:
        image = open_rgb(sample_photo(name))
        if image is not None:
            path = folder / f"{name}.jpg"
            save_image(path, image, quality=95)
            written.append(path)
    return written


# --- reference sets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceSet:
    """Real images a target responds to.

    Parameters
    ----------
    sources
        The distinct images.
    count
        How many views make up the set (N in METHOD.md). With more sources than ``count``, a
        seeded random subset is used; with fewer, the set is filled up with seeded random
        resized crops and flips of them.
    seed
        Seed of the subset and of the views.
    description
        Where the images came from, for records.
    """

    sources: tuple[ImageSource, ...]
    count: int = DEFAULT_REFERENCES
    seed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if not self.sources:
            raise VitalError(f"no usable reference images ({self.description or 'empty set'}).")
        # frozen: the count as Python's int (a numpy one would reach the cache key as JSON)
        object.__setattr__(self, "count", check_count(self.count, "reference_count"))
        if self.count > MAX_REFERENCES:
            # every view is a forward pass before the first step, with no progress shown
            raise VitalError(
                f"{self.count:,} reference views is more than {MAX_REFERENCES:,} (each is a "
                "forward pass before the first step; the authors use 50): ask for fewer "
                "(--ref-count N)."
            )

    @property
    def expanded(self) -> bool:
        """True when the set repeats images as augmented views."""
        return len(self.sources) < self.count

    def summary(self) -> str:
        """One line for logs and records."""
        if self.expanded:
            return (
                f"{self.count} views (random resized crops and flips) of {len(self.sources)} "
                f"image(s) from {self.description}: not {self.count} distinct photos"
            )
        return f"{self.count} images from {self.description}"

    def readable(self, cache_dir: Path | None = None) -> ReferenceSet:
        """The set without its sources that cannot be decoded, each warned about.

        Which sources decode is cached with the prototypes (keyed by the set's identity, which
        changes when a file does), so records count the images actually read.

        Raises
        ------
        VitalError
            When none of them can be read.
        """

        def compute() -> dict:
            failed: dict = {"positions": [], "warnings": []}
            for position, source in enumerate(self.sources):
                try:
                    with decoding(source.where or source.identity):
                        to_rgb(source.open())
                except UnreadableImageError as error:
                    failed["positions"].append(position)
                    failed["warnings"].append(error.warning)
            return failed

        failed = cached("readable", ["readable", self.identity()], compute, cache_dir)
        for warning in failed["warnings"]:
            warnings.warn(warning, stacklevel=2)
        if len(failed["positions"]) == len(self.sources):
            raise VitalError(
                f"none of the {len(self.sources)} reference images could be read "
                f"({self.description}); check the files."
            )
        if not failed["positions"]:
            return self
        dropped = set(failed["positions"])
        kept = tuple(s for p, s in enumerate(self.sources) if p not in dropped)
        return dataclasses.replace(self, sources=kept)

    def identity(self) -> str:
        """A stable text that changes when the set would produce other pixels."""
        names = sorted(source.identity for source in self.sources)
        return json.dumps({"sources": names, "count": self.count, "seed": self.seed})

    def views(
        self, resolution: int, crop_pct: float = 224 / 256, interpolation: str = "bilinear"
    ) -> Iterator[torch.Tensor]:
        """Yield the set's views as (3, R, R) tensors in [0, 1]; unreadable images are skipped.

        Distinct images are centre-cropped as the model's preprocessing says (``crop_pct``,
        ``interpolation``: see :func:`center_crop`).
        """
        generator = np.random.default_rng(self.seed)
        sources = list(self.sources)
        if len(sources) > self.count:
            chosen = generator.choice(len(sources), size=self.count, replace=False)
            sources = [sources[i] for i in sorted(chosen)]
        images = [(s, image) for s in sources if (image := open_rgb(s)) is not None]
        if not images:
            raise VitalError(
                f"none of the {len(sources)} reference images could be read "
                f"({self.description}); check the files."
            )
        for _, image in images:
            yield center_crop(image, resolution, crop_pct, interpolation)
        for i in range(self.count - len(images)):
            yield random_view(images[i % len(images)][1], resolution, generator)


def resize_for_crop(
    image: Image.Image,
    resolution: int,
    crop_pct: float = 224 / 256,
    interpolation: str = "bilinear",
) -> tuple[Image.Image, int, int]:
    """The resized image that :func:`center_crop` cuts from, and the crop's left and top.

    The short side becomes ``resolution / crop_pct`` (256 for 224 with ImageNet's 0.875).
    Boxes given on the crop (mined patches) map back to the image through these offsets.
    """
    short = round(resolution / crop_pct)
    width, height = image.size
    scale = short / min(width, height)
    resized = image.resize(
        (max(short, round(width * scale)), max(short, round(height * scale))),
        Image.Resampling[interpolation.upper()],
    )
    return resized, (resized.width - resolution) // 2, (resized.height - resolution) // 2


def center_crop(
    image: Image.Image,
    resolution: int,
    crop_pct: float = 224 / 256,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Resize the short side to ``resolution / crop_pct`` and crop the centre (ImageNet eval).

    Parameters
    ----------
    image
        An RGB image.
    resolution
        Side of the square crop.
    crop_pct, interpolation
        The model's resize ratio and resampling (``Preprocessing.crop_pct`` and
        ``.interpolation``); the defaults are ImageNet's 224/256, bilinear.
    """
    resized, left, top = resize_for_crop(image, resolution, crop_pct, interpolation)
    return _to_tensor(resized.crop((left, top, left + resolution, top + resolution)))


def random_view(
    image: Image.Image, resolution: int, generator: np.random.Generator
) -> torch.Tensor:
    """A random resized crop (35–100 % of the area, aspect 3/4–4/3) with a random flip."""
    width, height = image.size
    for _ in range(10):
        area = width * height * generator.uniform(0.35, 1.0)
        aspect = math.exp(generator.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = round(math.sqrt(area * aspect))
        h = round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(generator.integers(0, width - w + 1))
            top = int(generator.integers(0, height - h + 1))
            crop = image.crop((left, top, left + w, top + h))
            break
    else:
        side = min(width, height)  # no sampled box fits: the central square
        left, top = (width - side) // 2, (height - side) // 2
        crop = image.crop((left, top, left + side, top + side))
    crop = crop.resize((resolution, resolution), Image.Resampling.BILINEAR)
    if generator.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _to_tensor(crop)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def from_folder(folder: str | Path, count: int = DEFAULT_REFERENCES, seed: int = 0) -> ReferenceSet:
    """All images under ``folder`` (any depth)."""
    folder = os.fsdecode(folder) if isinstance(folder, bytes) else folder
    paths = find_images(folder)
    if not paths:
        raise VitalError(
            f"no images found under {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    return ReferenceSet(
        tuple(ImageSource.from_path(p) for p in paths), count, seed, f"folder {folder}"
    )


def from_imagenet_class(
    root: str | Path, wnid: str, count: int = DEFAULT_REFERENCES, seed: int = 0
) -> ReferenceSet:
    """The class folder ``root/wnid`` of an ImageNet-style tree (e.g. ``train/n07920052``)."""
    if not isinstance(root, (str, os.PathLike)) or not isinstance(wnid, str):
        raise VitalError(
            f"from_imagenet_class takes the tree's root (a path) and a WordNet id (text, e.g. "
            f"'n07920052'), not {type(root).__name__} and {type(wnid).__name__}."
        )
    folder = Path(root) / wnid
    if not folder.is_dir():
        raise VitalError(
            f"{root} has no class folder {wnid}; an ImageNet-style tree has one sub-folder per "
            "WordNet id (e.g. train/n07920052/*.JPEG)."
        )
    return from_folder(folder, count, seed)


def from_samples(names: Sequence[str], count: int = DEFAULT_REFERENCES, seed: int = 0):
    """Embedded photos by name (one name or several), expanded to ``count`` views."""
    if isinstance(names, str):  # one photo, not its letters
        names = [names]
    if not names:
        raise VitalError(f"name at least one embedded photo ({', '.join(SAMPLE_PHOTOS)}).")
    sources = tuple(sample_photo(n) for n in names)
    return ReferenceSet(sources, count, seed, "embedded photos " + ", ".join(names))


def is_imagenet_tree(folder: str | Path) -> bool:
    """True when ``folder`` has WordNet-id sub-folders (``n`` followed by 8 digits)."""
    folder = Path(folder)
    return folder.is_dir() and any(
        child.is_dir()
        and len(child.name) == 9
        and child.name[0] == "n"
        and child.name[1:].isdigit()
        for child in folder.iterdir()
    )


# --- top-activating references: whole images or their best patches (METHOD.md section 3) -------

# Patch sides on the 224 crop used by the authors' second mining stage.
PATCH_SIDES = (32, 64)
MIN_PATCH_SIDE = 16


def smallest_patch_side(size: int) -> int:
    """The smallest patch side accepted on a ``size`` px crop.

    A patch is resized to the model's input, so a side of a few pixels shows the model a blur,
    and the count of patches per crop grows with the inverse square of the side (a side of 7
    on 224 px: 5,329 forward passes per image): below 16 px (or half a small crop) nothing is
    gained for that cost.
    """
    return min(MIN_PATCH_SIDE, max(1, size // 2))


def patch_boxes(size: int, side: int, stride: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners of square patches that fit in a ``size`` × ``size`` crop, row by row.

    Patches have ``side`` px and start every ``stride`` px (default half a side).
    """
    if not smallest_patch_side(size) <= side <= size:
        raise VitalError(
            f"a patch side must be between {smallest_patch_side(size)} and {size} pixels "
            f"(the authors use 32 or 64; 0: whole images), not {side}."
        )
    stride = stride or max(side // 2, 1)
    starts = list(range(0, size - side + 1, stride))
    return [(left, top) for top in starts for left in starts]


def score_patches(
    crop: torch.Tensor,
    side: int,
    resolution: int,
    score: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Scores of every patch of a (3, R, R) crop, each resized to ``resolution``; their corners.

    Patches are resized a batch at a time: all of a crop's patches at the model's input size
    at once would take hundreds of megabytes for small sides.
    """
    corners = patch_boxes(crop.shape[-1], side)
    values = []
    for start in range(0, len(corners), batch_size):
        patches = torch.stack(
            [
                crop[:, top : top + side, left : left + side]
                for left, top in corners[start : start + batch_size]
            ]
        )
        resized = F.interpolate(patches, size=(resolution, resolution), mode="bilinear")
        values.append(score(resized.clamp(0, 1)))
    return torch.cat(values), corners


def _patch_source(source: ImageSource, corner: tuple[int, int], side: int, resolution: int):
    """An image source showing one patch, such that its centre-crop view is the patch."""

    def load() -> Image.Image:
        image = to_rgb(source.open())
        short = round(resolution * 256 / 224)
        scale = short / min(image.size)
        width, height = (
            max(short, round(image.width * scale)),
            max(short, round(image.height * scale)),
        )
        resized = image.resize((width, height), Image.Resampling.BILINEAR)
        left0, top0 = (width - resolution) // 2, (height - resolution) // 2
        grown = min(round(side * 256 / 224), width, height)
        centre_x = left0 + corner[0] + side / 2
        centre_y = top0 + corner[1] + side / 2
        left = int(min(max(round(centre_x - grown / 2), 0), width - grown))
        top = int(min(max(round(centre_y - grown / 2), 0), height - grown))
        return resized.crop((left, top, left + grown, top + grown))

    identity = f"{source.identity}#patch{side}@{corner[0]},{corner[1]}/{resolution}"
    label = f"{source.label or 'image'} patch {side}px at {corner}"
    return ImageSource(identity, load, label)


def top_references(
    references: ReferenceSet,
    score: Callable[[torch.Tensor], torch.Tensor],
    resolution: int,
    count: int | None = None,
    patch_side: int | None = None,
    batch_size: int = 32,
) -> tuple[ReferenceSet, list[float]]:
    """Rank the distinct images of a set by a score, optionally by their best patch.

    Parameters
    ----------
    references
        Candidate images (their distinct sources; augmented views are not scored).
    score
        Maps pixels in [0, 1], (N, 3, r, r), to one score per image (e.g. a channel's
        spatially averaged activation).
    resolution
        Side of the centre crop and of the resized patches.
    count
        How many images to keep (default: the set's count).
    patch_side
        ``None`` for whole images; else square patches of this side on the crop (stride half
        a side), each resized to ``resolution``, of which each image keeps its best.
    batch_size
        Patches or crops scored per forward pass.

    Returns
    -------
    ReferenceSet, scores
        The best ``count`` images (or patches), best first, with their scores.
    """
    count = count or references.count
    scored: list[tuple[float, ImageSource]] = []
    sources = [(s, image) for s in references.sources if (image := open_rgb(s)) is not None]
    if not sources:
        raise VitalError(f"none of the reference images could be read ({references.description}).")
    if patch_side is None:
        crops = torch.stack([center_crop(image, resolution) for _, image in sources])
        values = torch.cat([score(chunk) for chunk in crops.split(batch_size)])
        views_done(len(crops))
        scored = [(float(v), s) for v, (s, _) in zip(values, sources, strict=True)]
    else:
        for source, image in sources:
            values, corners = score_patches(
                center_crop(image, resolution), patch_side, resolution, score, batch_size
            )
            views_done(1)
            best = int(values.argmax())
            patch = _patch_source(source, corners[best], patch_side, resolution)
            scored.append((float(values[best]), patch))
    scored.sort(key=lambda pair: -pair[0])
    kept = scored[:count]
    mode = f"best {patch_side}px patch of each image" if patch_side else "whole images"
    chosen = ReferenceSet(
        tuple(s for _, s in kept),
        count,
        references.seed,
        f"top {len(kept)} of {references.description} by target activation ({mode})",
    )
    return chosen, [v for v, _ in kept]


def best_patches(
    references: ReferenceSet,
    score: Callable[[torch.Tensor], torch.Tensor],
    resolution: int,
    patch_side: int,
    crop_pct: float = 224 / 256,
    interpolation: str = "bilinear",
    batch_size: int = 32,
) -> tuple[ReferenceSet, list[float]]:
    """The best patch of every view of a set, for a unit smaller than the image.

    The authors' second mining stage (METHOD.md section 3) applied to the views the set would
    give as references: each view (a distinct image's centre crop, or one of the seeded random
    crops a set of few photos is expanded to) is cut into square patches of ``patch_side``
    (stride half a side), each resized to ``resolution`` and scored; the view keeps its best.
    A set of one photo so gives as many patches as views, each from another crop.

    Parameters
    ----------
    references
        The views to cut from.
    score
        Maps pixels in [0, 1], (N, 3, r, r), to one score per image (the target's spatially
        averaged activation).
    resolution
        Side of the views and of the resized patches.
    patch_side
        Side of the patches on the view.
    crop_pct, interpolation
        The model's preprocessing, as for :meth:`ReferenceSet.views`.
    batch_size
        Patches scored per forward pass.

    Returns
    -------
    ReferenceSet, scores
        One patch per view, best first, whose views are the patches; their scores.
    """
    scored: list[tuple[float, ImageSource]] = []
    for number, view in enumerate(references.views(resolution, crop_pct, interpolation)):
        values, corners = score_patches(view, patch_side, resolution, score, batch_size)
        views_done(1)
        best = int(values.argmax())
        identity = (
            f"{references.identity()}#view{number}#patch{patch_side}@{corners[best]}/{resolution}"
        )
        patch = _view_patch(view, corners[best], patch_side, resolution / crop_pct)
        label = f"view {number} patch {patch_side}px at {corners[best]}"
        scored.append((float(values[best]), ImageSource(identity, patch, label)))
    scored.sort(key=lambda pair: -pair[0])
    chosen = ReferenceSet(
        tuple(source for _, source in scored),
        len(scored),
        references.seed,
        f"the best {patch_side}px patch of each of {len(scored)} views of {references.description}",
    )
    return chosen, [value for value, _ in scored]


def _view_patch(
    view: torch.Tensor, corner: tuple[int, int], side: int, short: float
) -> Callable[[], Image.Image]:
    """Opens a patch of a view as an image whose centre crop (short side ``short``) is it."""
    left, top = corner
    grown = min(round(side * short / view.shape[-1]), view.shape[-1])
    left = int(min(max(round(left + side / 2 - grown / 2), 0), view.shape[-1] - grown))
    top = int(min(max(round(top + side / 2 - grown / 2), 0), view.shape[-2] - grown))
    pixels = view[:, top : top + grown, left : left + grown]
    array = (pixels.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return lambda: Image.fromarray(array)


# --- prototypes -------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$VITAL_CACHE`` or ``~/.cache/vital``.

    An empty (or blank) ``$VITAL_CACHE`` counts as unset, as for most variables: taken as a
    path it was the working folder, which then got the cache's files.
    """
    given = os.environ.get("VITAL_CACHE", "").strip()  # " /path" pasted with a space is /path
    return Path(given) if given else Path.home() / ".cache" / "vital"


Prototypes = dict[str, torch.Tensor]


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a path the system refuses (too long a name) is none.

    Writing the entry then fails too, and says once that the cache is not kept.
    """
    try:
        return path.is_file()
    except OSError:
        return False


# Cache folders already reported as unwritable.
_UNKEPT_CACHES: set[str] = set()


def cached(kind: str, key: object, compute: Callable[[], dict], cache_dir: Path | None = None):
    """Return ``compute()``, stored on disk under ``cache_dir/kind`` keyed by ``key`` (JSON).

    ``cache_dir`` defaults to :func:`default_cache_dir`; a false-y value other than ``None``
    disables the cache.
    """
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    cache_file = Path(cache_dir) / kind / f"{digest}.pt" if cache_dir else None
    if cache_file is not None and _is_file(cache_file):
        try:
            return torch.load(cache_file, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any damage: the entry is rebuilt
            warnings.warn(
                f"the cache file {cache_file} is damaged ({type(error).__name__}); computing it "
                "again (clear the whole cache by deleting that folder, or set $VITAL_CACHE).",
                stacklevel=2,
            )
    value = compute()
    if cache_file is not None:
        try:
            save_tensors(cache_file, value)
        except WriteError as error:  # a read-only or full cache slows later runs, nothing more
            cause = error.__cause__
            reason = getattr(cause, "strerror", None) or cause or error
            if str(cache_dir) in _UNKEPT_CACHES:  # said once per folder and process
                return value
            _UNKEPT_CACHES.add(str(cache_dir))
            warnings.warn(
                f"the reference cache is not kept: cannot write into {Path(cache_dir)} ({reason});"
                " set $VITAL_CACHE to a writable folder to keep it (it spares reading the "
                "references again).",
                stacklevel=2,
            )
    return value


# The side up to which a reference pass takes its full batch of views: the usual input side.
# A pass's memory grows with its pixels (a neuron's relevance pass at 512 px held 8 views'
# graphs, 5.8 GB, and at 1024 px more than the machine had), so above it fewer views go at once.
FULL_BATCH_SIDE = 224


def views_per_pass(batch_size: int, resolution: int) -> int:
    """Views per reference pass: ``batch_size`` up to 224 px, then as many as hold its pixels.

    At least one: a large resolution costs time, not memory beyond one view's.
    """
    if resolution <= FULL_BATCH_SIDE:
        return batch_size
    return max(1, batch_size * FULL_BATCH_SIDE**2 // resolution**2)


def average_over_views(
    model,
    references: ReferenceSet,
    resolution: int,
    summarize: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    downsample: int = 1,
    batch_size: int = 16,
    coarse_view: str = "pooled",
) -> dict[str, torch.Tensor]:
    """Stream the references' views through ``summarize`` and average each output over views.

    Parameters
    ----------
    model
        A :class:`vital.zoo.Model` (for its device and normalisation).
    references
        The reference set.
    resolution
        Side of the square views.
    summarize
        Maps a batch of model inputs (B, 3, h, w) to named (B, ...) tensors; only one batch of
        them is in memory at a time.
    downsample
        Average-pool factor applied to the views before the model.
    batch_size
        Views per forward pass at 224 px or less; above, fewer (:func:`views_per_pass`).
    coarse_view
        How pooled views reach the model (:func:`vital.scales.coarsen`): as they are, or
        ``"blurred"`` back to ``resolution``.

    Returns
    -------
    dict
        Name → mean over all views, on CPU.
    """
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    preprocessing = model.preprocessing
    views = references.views(resolution, preprocessing.crop_pct, preprocessing.interpolation)
    for batch in _batches(views, views_per_pass(batch_size, resolution)):
        x = model.preprocessing.normalize(batch.to(model.device, model.dtype))
        x = coarsen(x, downsample, coarse_view)
        for name, values in summarize(x).items():
            total = values.detach().sum(
                dim=0, dtype=torch.promote_types(values.dtype, torch.float32)
            )
            sums[name] = sums[name] + total if name in sums else total
        seen += batch.shape[0]
        views_done(batch.shape[0])
    return {name: (total / seen).cpu() for name, total in sums.items()}


def compute_prototypes(
    model,
    layers: Sequence[str],
    references: ReferenceSet,
    resolution: int,
    downsample: int = 1,
    batch_size: int = 16,
    cache_dir: Path | None = None,
    coarse_view: str = "pooled",
) -> Prototypes:
    """Sorted-quantile prototypes of the references at each tap, cached on disk.

    Parameters
    ----------
    model
        A :class:`vital.zoo.Model`.
    layers
        Tap names.
    references
        The reference set.
    resolution
        Side of the square crops fed to the model.
    downsample
        Average-pool factor applied to the crops before the model (2 for setting 0's first
        stage), as it is applied to the synthetic image.
    batch_size
        References per forward pass; only this many references' features are held at once.
    cache_dir
        Where to keep prototypes (default :func:`default_cache_dir`); ``False``-y to disable.
    coarse_view
        How the pooled crops reach the model (``Settings.coarse_view``), as the synthetic
        image's do.

    Returns
    -------
    dict
        Tap name → (C, P) prototype on CPU.
    """

    def compute() -> Prototypes:
        with tapped(model.module, layers, stop_early=True) as tap, torch.no_grad():
            return average_over_views(
                model,
                references,
                resolution,
                lambda x: {name: f.sort(dim=-1).values for name, f in tap(x).items()},
                downsample,
                batch_size,
                coarse_view,
            )

    pixels = dataclasses.asdict(model.preprocessing)
    pixels = {name: pixels[name] for name in ("mean", "std", "crop_pct", "interpolation")}
    key = [model.fingerprint, list(layers), references.identity(), resolution, downsample, pixels]
    key += coarse_key(downsample, coarse_view)
    return cached("prototypes", key, compute, cache_dir)


def mean_color(
    references: ReferenceSet,
    resolution: int,
    preprocessing,
    cache_dir: Path | None = None,
) -> torch.Tensor:
    """The references' mean pixel colour, (3,) in [0, 1], cached on disk like prototypes.

    Three numbers per set: what a picture may start from without taking anything of the
    references' layout (``Settings.color_start``).

    Parameters
    ----------
    references
        The reference set.
    resolution
        Side of the square views.
    preprocessing
        The model's :class:`~vital.zoo.Preprocessing` (how views are cropped).
    cache_dir
        Where to keep it (default :func:`default_cache_dir`); ``False``-y to disable.
    """

    def compute() -> dict[str, torch.Tensor]:
        total, seen = torch.zeros(3, dtype=torch.float64), 0
        crop = (preprocessing.crop_pct, preprocessing.interpolation)
        for view in references.views(resolution, *crop):
            total += view.double().mean(dim=(1, 2))
            seen += 1
        return {"color": (total / seen).float()}

    key = [references.identity(), resolution, preprocessing.crop_pct, preprocessing.interpolation]
    return cached("colors", key, compute, cache_dir)["color"]


def _batches(views: Iterator[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    chunk: list[torch.Tensor] = []
    for view in views:
        chunk.append(view)
        if len(chunk) == size:
            yield torch.stack(chunk)
            chunk = []
    if chunk:
        yield torch.stack(chunk)


__all__ = [
    "PATCH_SIDES",
    "ImageSource",
    "ReferenceSet",
    "best_patches",
    "compute_prototypes",
    "from_folder",
    "from_imagenet_class",
    "from_samples",
    "mean_color",
    "sample_photos_for_class",
    "sorted_prototype",
    "top_references",
]
