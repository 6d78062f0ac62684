"""Results on disk: a PNG and a JSON record per target, and one SQLite index per folder.

Each result is written as soon as its batch finishes, so an interrupted run keeps everything
that was finished. Files are written through :func:`vital.files.write_file` (a unique temporary
name, then a rename), so a crash, a full disk or a second writer never leaves a half-written
record.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vital.errors import VitalError
from vital.files import (
    UnreadableImageError,
    create_database,
    database,
    open_image,
    printable,
    save_array,
    save_image,
    sqlite_tables,
    write_file,
)
from vital.grids import as_saved, display_pixels, to_image
from vital.record import Record, json_default
from vital.specs import PictureSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    unit TEXT NOT NULL,
    method TEXT NOT NULL,
    model TEXT NOT NULL,
    target TEXT NOT NULL,
    seed INTEGER NOT NULL,
    image TEXT NOT NULL,
    record TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (unit, method, model, seed)
);
CREATE TABLE IF NOT EXISTS failures (
    unit TEXT NOT NULL,
    method TEXT NOT NULL,
    model TEXT NOT NULL,
    target TEXT NOT NULL,
    error TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (unit, method, model)
);
"""


@dataclass
class Result:
    """One finished visualisation.

    Attributes
    ----------
    target
        What was visualised.
    pixels
        (3, H, W) image in [0, 1] as optimised (floating point; some settings leave it
        unclamped); :attr:`saved_pixels` is what the PNG holds.
    record
        Everything needed to understand and reproduce it (written as JSON).
    alpha
        (H, W) transparency map in [0, 1], when the method produces one.
    paths
        Files written for it, by kind (``png``, ``json``, ``rgba``, ``alpha``).
    stored
        Whether it was read back from a store (made earlier with the same inputs), not
        computed in this call.
    """

    target: object
    pixels: torch.Tensor
    record: Record
    alpha: torch.Tensor | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    stored: bool = False

    @property
    def image(self) -> Image.Image:
        """The visualisation as a Pillow image."""
        return to_image(self.pixels)

    @property
    def saved_pixels(self) -> torch.Tensor:
        """The pixels as the PNG holds them (8 bits): what the record's evaluation scored."""
        return as_saved(self.pixels)

    @property
    def stem(self) -> str:
        """File-name stem: method, target and seed."""
        return f"{self.record.method}-{self.target.slug()}-seed{self.record.seed}"


# A path that starts like "file://", "s3://" or "https://" is an address, not a folder here.
# One slash is enough: a Path makes "file:///x" "file:/x". Two letters at least: "C:/x" is a
# Windows folder.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def folder_path(path: str | Path, what: str = "output folder") -> Path:
    """``path`` as the folder it names (``~`` expanded), or a :class:`VitalError` saying why not.

    Nothing is created. Names that would make a folder no one meant are refused: ``-`` (the
    standard output elsewhere), a URL (``file:///x`` would make a folder ``file:``) and a name
    with blanks at its start or end (``"x "``).

    Raises
    ------
    VitalError
        When the path is no path or names no folder one would mean.
    """
    if isinstance(path, bytes):  # a path as the operating system returns it
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        raise VitalError(f"the {what} is a path (out=DIR), not {type(path).__name__}.")
    text = os.fspath(path)
    if text == "-":
        raise VitalError(
            f"the {what} '-' is no folder: vital writes its results to files, not to the "
            "standard output; give a folder (out=DIR)."
        )
    if _URL.match(text):
        raise VitalError(f"the {what} {text!r} is a URL; give a folder on this machine (out=DIR).")
    if any(part != part.strip() for part in Path(text).parts):
        raise VitalError(
            f"the {what} {text!r} has blanks at the start or end of a name; give it without "
            "them (out=DIR)."
        )
    # A newline or tab inside a name comes from a paste, not from a folder anyone means; the
    # folder made of it prints over two lines and is hard to name in a shell afterwards.
    controls = sorted({char for char in text if ord(char) < 32 or ord(char) == 127})
    if controls:
        named = ", ".join(_CONTROL_NAMES.get(char, repr(char)) for char in controls)
        raise VitalError(
            f"the {what} {text!r} has a control character in it ({named}); give the name "
            "without it (out=DIR)."
        )
    try:  # "~/x" quoted, so that the shell did not expand it, is still the home's x
        folder = Path(text).expanduser()
    except RuntimeError as error:  # "~nobody/x", or no home to expand to
        raise VitalError(
            f"cannot expand the {what} {text!r}: {error}; give a full path."
        ) from error
    try:  # a name past the file system's limits fails in every later call on it
        folder.exists()
    except OSError as error:
        raise VitalError(
            f"the {what} {shortened(text)} cannot be a folder here: {error.strerror or error}; "
            "give a shorter path (out=DIR)."
        ) from error
    return folder


_CONTROL_NAMES = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}


def shortened(text: str, keep: int = 60) -> str:
    """``text`` quoted, its middle cut out when it is longer than ``keep`` characters.

    For paths in messages: a 5,000-character path printed whole buries the sentence around it.
    """
    if len(text) <= keep:
        return repr(text)
    return repr(f"{text[: keep // 2]}…{text[-keep // 2 :]}") + f" ({len(text)} characters)"


def output_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create (if needed) and check a folder results are written to; say what is wrong if not.

    ``~`` is expanded; the names :func:`folder_path` refuses are refused.

    Raises
    ------
    VitalError
        When the path is a file, cannot be created, is not writable, or names no folder one
        would mean (:func:`folder_path`).
    """
    folder = folder_path(path, what)
    if folder.exists() and not folder.is_dir():
        raise VitalError(f"the {what} {folder} is a file; give a folder (out=DIR).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VitalError(
            f"cannot create the {what} {folder}: {error.strerror or error}; choose another "
            "folder (out=DIR)."
        ) from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VitalError(f"the {what} {folder} is not writable; choose another folder (out=DIR).")
    return folder


def writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """Check, without creating anything, that results could be written to ``path``.

    :func:`output_folder` as a check made before any work: a folder that does not exist yet
    is not made here (a command refused afterwards, for a mistyped class or layer, leaves no
    empty folder behind); its nearest existing parent must be a writable folder.

    Raises
    ------
    VitalError
        As :func:`output_folder`.
    """
    folder = folder_path(path, what)
    if folder.exists():
        return output_folder(folder, what)
    parent = folder.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise VitalError(
            f"cannot create the {what} {folder}: {parent} is a file; choose another folder "
            "(out=DIR)."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VitalError(
            f"cannot create the {what} {folder}: {parent} is not writable; choose another "
            "folder (out=DIR)."
        )
    return folder


def load_result(record: Record, folder: Path, target: object) -> Result:
    """A stored result back as a :class:`Result` (its PNG is 8-bit, so re-saving is exact).

    Raises
    ------
    FileNotFoundError, ValueError, UnreadableImageError
        When one of its files is missing or damaged.
    """
    array = np.asarray(open_image(folder / record.files["png"]), dtype=np.float32) / 255
    alpha = None
    if "alpha" in record.files:
        alpha = torch.from_numpy(np.load(folder / record.files["alpha"], allow_pickle=False))
    record = Record.from_dict(record.to_dict())
    paths = {kind: folder / name for kind, name in record.files.items()}
    return Result(target, torch.from_numpy(array).permute(2, 0, 1), record, alpha, paths)


# The tables of an atlas's database (it holds one at least): its ledger or, in an atlas written
# before the ledger, only its result index. An `atlas.sqlite` with neither is the user's.
ATLAS_TABLES = frozenset({"atlas_files", "results"})


def is_atlas_database(path: str | Path) -> bool:
    """Whether the file ``path`` is an atlas's database that vital wrote, or is making (empty).

    A user's file of that name (text, or a database of other tables) is not: its folder is
    not read as an atlas, and no atlas is written over it.
    """
    tables = sqlite_tables(path) if Path(path).is_file() else None
    return tables is not None and (not tables or bool(tables & ATLAS_TABLES))


def _check_readable(folder: Path, index: str | Path | None) -> None:
    """Refuse to open for reading a result folder that has no index (see :class:`ResultStore`)."""
    if index is None and not (folder / "index.sqlite").is_file():
        atlas, parent = folder / "atlas.sqlite", folder.parent / "atlas.sqlite"
        where = ""
        if is_atlas_database(atlas):
            where = (
                f"; {folder} is an atlas: its results are "
                f"ResultStore({str(folder / 'results')!r}, {str(atlas)!r})"
            )
        elif atlas.exists():  # a file of the user's, not an atlas's index
            where = "; its atlas.sqlite is not an atlas's index that vital wrote"
        elif is_atlas_database(parent):  # an atlas's results folder: its index is the atlas's
            where = (
                "; it is an atlas's results folder, whose index is the atlas's: "
                f"ResultStore({str(folder)!r}, index={str(parent)!r})"
            )
        raise VitalError(
            f"{printable(folder)} holds no vital results (no index.sqlite){where}; give the "
            "folder a run wrote into (out=DIR), or create=True to start one."
        )
    if index is not None and not Path(index).is_file():
        raise VitalError(
            f"the result index {printable(index)} does not exist; give the index a run wrote, "
            "or create=True to start one."
        )


def _refuse_atlas_results(folder: Path) -> None:
    """Refuse an atlas's results folder as the folder of a run's pictures.

    Its index is the atlas's (``atlas.sqlite``): a run's pictures would lie in it beside a
    second index, where no page shows them, and the atlas's ledger would later refuse to write
    over them. The atlas's own folder is taken, as is a ``vital concepts`` run's: every command
    shares the default folder (``vital-out``), and refusing it broke ``make demo`` after an
    explain. An ``atlas.sqlite`` of the user's makes no atlas (:func:`is_atlas_database`).
    """
    real = folder.resolve()  # through symlinks, `.` and `x/..` (made or not)
    if real.name == "results" and is_atlas_database(real.parent / "atlas.sqlite"):
        raise VitalError(
            f"{printable(folder)} is an atlas's results folder, whose index is the atlas's: "
            "this run's pictures would lie in it where no page shows them. Give the run "
            "another folder (out=DIR), or add the targets to the atlas with `vital atlas "
            "build --out ATLAS --class C` (or --layer L --channel N)."
        )


class ResultStore:
    """A folder of results with an index (``index.sqlite``).

    Parameters
    ----------
    folder
        The folder of the results (``vital-out``; an atlas's are in ``ATLAS/results`` with the
        index ``ATLAS/atlas.sqlite``).
    index
        The index's file, if not ``folder/index.sqlite``.
    create
        Make the folder and its index when they are missing, as a run writing results does. By
        default a store is opened to be read, and a folder without an index is refused: a
        mistyped folder would otherwise read as one without results, and be made.
    """

    def __init__(
        self, folder: str | Path, index: str | Path | None = None, *, create: bool = False
    ):
        if not create:
            _check_readable(folder_path(folder, "result folder"), index)

        self.folder = output_folder(folder)
        self.index = Path(index) if index is not None else self.folder / "index.sqlite"
        create_database(self.index, _SCHEMA, "result index")

    def _connect(self):
        return database(self.index, "result index")

    def write(self, result: Result) -> Result:
        """Write the PNG, JSON record (and RGBA + alpha when present); index it.

        The RGBA image shows the pixels clipped to their 1st-99th percentiles and min-max
        normalised, with the alpha map as fourth channel.
        """
        stem = result.stem
        png = self.folder / f"{stem}.png"
        save_image(png, result.image)
        result.paths["png"] = png
        if result.alpha is not None:
            rgba = self.folder / f"{stem}-rgba.png"
            alpha_file = self.folder / f"{stem}-alpha.npy"
            image = to_image(display_pixels(result.pixels), result.alpha)
            save_image(rgba, image)
            save_array(alpha_file, result.alpha)
            result.paths.update(rgba=rgba, alpha=alpha_file)
        json_path = self.folder / f"{stem}.json"
        result.paths["json"] = json_path
        record = result.record
        record.files = {kind: path.name for kind, path in result.paths.items()}
        text = record.to_json()
        write_file(json_path, text)
        unit = result.target.unit()
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    unit,
                    record.method,
                    record.model["fingerprint"],
                    json.dumps(record.target, default=json_default),
                    record.seed,
                    png.name,
                    record.to_json(indent=None),
                    time.time(),
                ),
            )
            connection.execute(
                "DELETE FROM failures WHERE unit = ? AND method = ? AND model = ?",
                (unit, record.method, record.model["fingerprint"]),
            )
        return result

    def record_failure(self, target, method: str, model: str, error: str) -> None:
        """Remember that ``target`` failed (with the error), so a report can list it."""
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?)",
                (target.unit(), method, model, target.describe(), error, time.time()),
            )

    def stored(self, spec: PictureSpec, target: object) -> Result | None:
        """The stored picture of ``spec`` (same seed), or ``None`` when there is none.

        A record whose files are gone or damaged counts as not stored: the picture is made
        again.
        """
        record = self._record_in_files_of(spec)
        if record is None or not spec.matches(record) or "png" not in (record.files or {}):
            return None
        try:
            result = load_result(record, self.folder, target)
        except (OSError, ValueError, UnreadableImageError):
            return None
        result.stored = True
        return result

    def other_picture(self, spec: PictureSpec) -> Record | None:
        """The record of a picture this folder holds in ``spec``'s files with other inputs.

        Its files are those ``spec``'s picture would be written to (same unit, method and
        seed); ``None`` when there is none, when its picture file is gone, or when it is
        ``spec``'s own picture.
        """
        record = self._record_in_files_of(spec)
        png = (record.files or {}).get("png") if record is not None else None
        if png is None or spec.matches(record) or not (self.folder / png).is_file():
            return None
        return record

    def _record_in_files_of(self, spec: PictureSpec) -> Record | None:
        """The record last written into ``spec``'s files: its unit, method and seed.

        Not its model: the file names do not hold it, and a run with other weights wrote
        over another model's pictures unasked (whose rows then named the new pictures).
        """
        with self._connect() as connection:
            row = connection.execute(
                "SELECT record FROM results WHERE unit = ? AND method = ? AND seed = ? "
                "ORDER BY created DESC LIMIT 1",
                (spec.unit, spec.method, spec.settings.get("seed")),
            ).fetchone()
        return self._row(row[0], spec.unit) if row is not None else None

    def finished_units(self, method: str, model: str) -> set[str]:
        """Units with a stored result for ``method`` and model fingerprint ``model``."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT unit FROM results WHERE method = ? AND model = ?", (method, model)
            ).fetchall()
        return {row[0] for row in rows}

    def failures(self) -> list[dict]:
        """Every recorded failure: unit, method, model, target and error."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT unit, method, model, target, error FROM failures ORDER BY unit"
            ).fetchall()
        keys = ("unit", "method", "model", "target", "error")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def records(self) -> list[Record]:
        """Every indexed record, oldest first."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT unit, record FROM results ORDER BY created"
            ).fetchall()
        return [self._row(record, unit) for unit, record in rows]

    def _row(self, text: str, unit: str) -> Record:
        """The record of an index row; a damaged one is refused naming the index and the row."""
        return Record.from_json(text, f"the result index {self.index} (its record of {unit})")


class ResultSink:
    """Where each finished result goes at once: the store (when writing), a callback, a list.

    Parameters
    ----------
    out
        Output folder, or ``None`` to keep results in memory only.
    on_result
        Called with each result after it is written.
    reuse
        Whether a picture stored in ``out`` with exactly the same inputs is taken instead of
        being computed again (:meth:`stored`).
    replace
        Whether a picture stored in ``out`` with other inputs is replaced; by default the run
        is refused (a folder whose files one command owns, as ``vital concepts``'s pictures,
        replaces them).
    """

    def __init__(
        self,
        out: str | Path | None,
        on_result=None,
        reuse: bool = False,
        replace: bool = False,
    ):
        if out is not None:
            _refuse_atlas_results(folder_path(out))  # a name that is no folder is refused now
        self._out = out
        self._store: ResultStore | None = None
        self.on_result = on_result
        self.reuse = reuse
        self.replace = replace
        self.results: list[Result] = []

    @property
    def store(self) -> ResultStore | None:
        """The folder's store (``None`` in memory), made when first asked for.

        The driver asks once the references are read, before the first step: a run refused
        for its references (a missing folder) leaves no output folder behind.
        """
        if self._out is not None and self._store is None:
            self._store = ResultStore(self._out, create=True)
        return self._store

    def stored(self, spec: PictureSpec, target: object) -> Result | None:
        """The picture of ``spec`` already in the folder, when reusing; else ``None``."""
        if not self.reuse or self.store is None:
            return None
        return self.store.stored(spec, target)

    def __call__(self, result: Result) -> None:
        """Write ``result`` (if a folder was given and it is not from there), report, keep it."""
        if self.store is not None and not result.stored:
            self.store.write(result)
        if self.on_result is not None:
            self.on_result(result)
        self.results.append(result)
