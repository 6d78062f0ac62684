"""The disk, one way for everything: images are opened, files written and databases created here.

* :func:`open_image` is the one place an image file is decoded: EXIF orientation applied (a
  phone photo marked "rotate 90°" is seen upright), any mode converted to RGB, and a file that
  is not an image or too large to decode safely raised as :class:`UnreadableImageError` with a
  message that says which.
* :func:`write_file` is the one place a file is written: the bytes go to a uniquely named
  temporary file beside the target, which is then renamed over it (two writers of one name
  never share a temporary, a reader never sees half a file). A failed write (a full disk, a
  quota, a read-only folder) leaves nothing behind and is raised as :class:`WriteError`, one
  line naming the folder. :func:`save_image`, :func:`save_array` and :func:`save_tensors`
  encode in memory and write through it.
* :func:`create_database` makes an SQLite file appear complete with its tables (two processes
  creating it at once both find a database, never a half-made one) and :func:`database`
  connects with a busy timeout, so concurrent writers wait instead of failing.
* :func:`printable` is how messages and records name a path whose bytes are not valid UTF-8.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import sqlite3
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vital.errors import VitalError

# How long a connection waits for another process's transaction on the same database.
BUSY_SECONDS = 60.0
# Temporary files are ".<name>.<random>.tmp" beside <name> (see :func:`temporary_target`).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; results are ordinary files.
_MODE = 0o666 & ~_umask()


class WriteError(VitalError):
    """A file could not be written (disk full, quota, permissions); nothing was left half-done."""


class UnreadableImageError(VitalError):
    """An image file that cannot be decoded, or that is too large to decode safely.

    Attributes
    ----------
    where
        How the image is named (its printable path).
    reason
        Why it was not decoded.
    too_large
        True for a decompression bomb (more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``).
    """

    def __init__(self, where: str, reason: str, too_large: bool = False):
        self.where, self.reason, self.too_large = where, reason, too_large
        super().__init__(
            f"{where} is {self.problem}"
            if too_large
            else f"cannot read {where} as an image: {reason}"
        )

    @property
    def problem(self) -> str:
        """What is wrong, without the name."""
        if self.too_large:
            return (
                f"too large to decode safely ({self.reason}); raise PIL.Image.MAX_IMAGE_PIXELS "
                "if the image is genuine"
            )
        return f"unreadable ({self.reason})"

    @property
    def warning(self) -> str:
        """The one-line warning when the image is skipped."""
        if self.too_large:
            return f"skipping {self.where}: {self.problem}"
        return f"skipping unreadable image {self.where}: {self.reason}"


def printable(path: str | os.PathLike) -> str:
    r"""``path`` as text that can be printed and stored: undecodable bytes as ``\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_printable(path: str | os.PathLike) -> bool:
    """Whether ``path`` is valid UTF-8 (it can be stored in a record or index as it is)."""
    return printable(path) == os.fsdecode(path)


# --- reading images ---------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Decode fully, turn upright by the EXIF orientation, and convert any mode to RGB."""
    image = ImageOps.exif_transpose(image)  # also decodes; a no-op without an orientation tag
    image.load()
    if image.mode in ("I", "I;16", "I;16B", "F"):
        array = np.asarray(image, dtype=np.float64)
        span = array.max() - array.min()
        array = (array - array.min()) / (span if span > 0 else 1.0) * 255
        image = Image.fromarray(array.astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


@contextlib.contextmanager
def decoding(where: str) -> Iterator[None]:
    """Turn Pillow's errors while decoding ``where`` into :class:`UnreadableImageError`."""
    try:
        with warnings.catch_warnings():
            # Between MAX_IMAGE_PIXELS and twice that Pillow only warns: decoded as it allows.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(where, str(error), too_large=True) from error
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as error:
        if isinstance(error, UnreadableImageError):
            raise
        raise UnreadableImageError(where, str(error)) from error


def open_image(path: str | os.PathLike) -> Image.Image:
    """The image file at ``path``, upright and in RGB (see :func:`to_rgb`).

    Raises
    ------
    UnreadableImageError
        When it is not an image, is damaged, or is too large to decode safely.
    """
    with decoding(printable(path)), Image.open(path) as image:
        return to_rgb(image)


# --- writing files ----------------------------------------------------------------------------


def temporary_target(name: str) -> str | None:
    """The file name a temporary file of :func:`write_file` stands for, else ``None``."""
    match = _TEMPORARY.match(name)
    return match["name"] if match else None


def _write(descriptor: int, data: bytes) -> None:
    """Write all of ``data`` to an open file (the only call that puts bytes on disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]


def write_error(path: Path, error: OSError | sqlite3.Error) -> WriteError:
    """The one-line message for a write into ``path``'s folder that failed."""
    reason = getattr(error, "strerror", None) or str(error)
    number = getattr(error, "errno", None)
    if number in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
        advice = "Free some space there (or raise the quota)"
    elif number in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "Make it writable"
    else:  # sqlite says "disk I/O error" for both
        advice = "Check that it has free space and is writable"
    return WriteError(
        f"cannot write into the folder {printable(path.parent)} ({printable(path.name)}: "
        f"{reason}); "
        f"nothing half-written was left. {advice}, or choose another folder (out=DIR)."
    )


def write_file(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (text as UTF-8); create its folder when missing.

    Raises
    ------
    WriteError
        When the folder cannot be created or the bytes cannot be written.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as error:
        raise write_error(path, error) from error
    try:
        try:
            _write(descriptor, payload)
            os.fchmod(descriptor, _MODE)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise write_error(path, error) from error
        raise
    return path


_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def save_image(path: str | os.PathLike, image: Image.Image, **options) -> Path:
    """Encode ``image`` by the suffix of ``path`` (PNG, JPEG) and write it atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format=_FORMATS.get(Path(path).suffix.lower(), "PNG"), **options)
    return write_file(path, buffer.getvalue())


def save_array(path: str | os.PathLike, array) -> Path:
    """Write a numpy array (or tensor) as a ``.npy`` file atomically."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return write_file(path, buffer.getvalue())


def load_vectors(path: str | os.PathLike, what: str = "direction file") -> np.ndarray:
    """The real numbers of a ``.npy`` file (``np.save``), refused in words when it holds none.

    Shape is the caller's to check. Pickles are never loaded; an ``.npz`` archive, a text
    file, object, text or complex values each get a line saying how to save numbers.
    """
    path = Path(path)
    advice = "save the vector with np.save(path, vector)"
    if not path.is_file():
        kind = (
            "is a folder"
            if path.is_dir()
            else "is not a regular file"
            if path.exists()  # a device or a pipe
            else "does not exist"
        )
        raise VitalError(f"the {what} {path} {kind}; give a .npy file ({advice}).")
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        with contextlib.suppress(OSError):
            if path.is_file() and path.read_bytes()[:6] != b"\x93NUMPY":  # text, an image, …
                raise VitalError(f"the {what} {path} is not a .npy file; {advice}.") from error
        raise VitalError(f"cannot read the {what} {path}: {error}; {advice}.") from error
    if isinstance(values, np.lib.npyio.NpzFile):
        names = ", ".join(values.files)
        values.close()
        raise VitalError(
            f"the {what} {path} is an .npz archive (arrays {names}); {advice} as a .npy file."
        )
    if values.dtype != np.bool_ and not (
        np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
    ):
        raise VitalError(
            f"the {what} {path} holds {values.dtype} values, not real numbers; {advice}."
        )
    return values


def save_tensors(path: str | os.PathLike, value: object) -> Path:
    """``torch.save`` ``value`` in memory, then write it atomically (a ``.pt`` file)."""
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return write_file(path, buffer.getvalue())


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) while the block runs.

    A second process (or thread) asking for it says once that it waits, then waits: two
    runs of one job into one folder take turns instead of both writing. Without ``fcntl``
    (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, _MODE)
    except OSError as error:
        raise write_error(path, error) from error
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warnings.warn(f"waiting for another vital {what} ({printable(path)})", stacklevel=3)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


@contextlib.contextmanager
def held_if_free(path: str | os.PathLike) -> Iterator[bool]:
    """Take the lock on the file ``path`` if no one holds it; yield whether it was taken.

    For clean-up: what another process is working on (it holds the lock, as with
    :func:`exclusive`) is left alone. A missing file is free and is not created.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: never sure, so never free
        yield False
        return
    try:
        descriptor = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield True
        return
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


# --- databases --------------------------------------------------------------------------------

_WRITE_FAILURES = ("disk is full", "disk i/o error", "readonly database", "unable to open")


@contextlib.contextmanager
def database(path: Path, what: str = "index") -> Iterator[sqlite3.Connection]:
    """One transaction on an SQLite file; a damaged file or a failed write named in one line."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=BUSY_SECONDS)) as connection:
            with connection:
                yield connection
    except sqlite3.OperationalError as error:
        if any(phrase in str(error).lower() for phrase in _WRITE_FAILURES):
            raise write_error(Path(path), error) from error
        raise damaged_database(path, what, error) from error
    except sqlite3.DatabaseError as error:
        raise damaged_database(path, what, error) from error


def read_only(path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection (the path as a URI, so ``#`` or ``?`` in folder names work)."""
    uri = f"{Path(path).absolute().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_SECONDS)


def damaged_database(path: Path, what: str, error: Exception) -> VitalError:
    """The one-line error for a database (or a row of one) that cannot be read."""
    return VitalError(
        f"the {what} {path} cannot be read ({error}); it is damaged or not a vital {what}. "
        "Move it away (the results beside it stay) and run again to start a new one."
    )


def create_database(
    path: str | os.PathLike, schema: str, what: str = "index", *, upgraded: Iterable[str] = ()
) -> Path:
    """Make sure the SQLite file ``path`` exists with ``schema`` (``CREATE … IF NOT EXISTS``).

    A new file is made complete under a temporary name and linked into place, which fails
    when another process got there first; then both add their tables to the one file.

    A table the file already holds with other columns (written by another version of vital)
    is refused here, before any work whose result could not be indexed; the tables named in
    ``upgraded`` are left to their owner's upgrade.
    """
    path = Path(path)
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
            )
            os.close(descriptor)
        except OSError as error:
            raise write_error(path, error) from error
        try:
            with database(Path(temporary), what) as connection:
                connection.executescript(schema)
            os.chmod(temporary, _MODE)
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                raise write_error(path, error) from error
            # No hard links on this file system: sqlite creates the file in place instead.
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    with database(path, what) as connection:
        connection.executescript(schema)
        _check_columns(connection, path, schema, what, set(upgraded))
    return path


def _check_columns(
    connection: sqlite3.Connection, path: Path, schema: str, what: str, upgraded: set[str]
) -> None:
    """Refuse a table of ``schema`` that the file holds with other columns than it defines."""
    with contextlib.closing(sqlite3.connect(":memory:")) as blank:
        blank.executescript(schema)
        tables = [
            row[0] for row in blank.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        wanted = {table: _columns(blank, table) for table in tables}
    for table, columns in wanted.items():
        found = _columns(connection, table)
        if table in upgraded or not found or found == columns:
            continue  # "not found": another process is creating it
        raise VitalError(
            f"the {what} {path} was written by another version of vital (its table {table} "
            f"has the columns {', '.join(found)}; this version writes "
            f"{', '.join(columns)}). Give another folder, or move {path.name} away (the files "
            "beside it stay) to start a new one."
        )


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    """The column names of ``table`` in their order (empty when there is no such table)."""
    return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]


def sqlite_tables(path: str | os.PathLike) -> set[str] | None:
    """The tables of an SQLite file, or ``None`` if it is not one (an empty file has none)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(16)
            if not header:  # being created (by sqlite, or by a build of another version)
                return set()
            if header != b"SQLite format 3\x00":
                return None
        connection = read_only(path)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            return {row[0] for row in rows}
        finally:
            connection.close()
    except (OSError, sqlite3.DatabaseError):
        return None
