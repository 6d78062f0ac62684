"""What vital wrote into an atlas folder: it never writes over anything else.

An atlas folder can be a folder the user already uses. The *ledger* (a table in the atlas's
``atlas.sqlite``) lists every file the atlas wrote, by path relative to the folder. Before a
file is written it is *claimed*: a file that exists and is not in the ledger belongs to the
user, and the write is refused with a message that names it. Before any work starts,
:meth:`Ledger.check` looks at the names the atlas uses (``index.html``, ``results/`` …) and
refuses a folder where one of them is the user's, so that a build does not stop half-way for
that reason.

The two SQLite files are databases, not outputs: ``atlas.sqlite`` and ``mining.sqlite`` are
used (added to) when they are vital's own (they hold vital's tables, e.g. a mining index that
``vital mine --out`` wrote), and refused otherwise.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from vital.errors import VitalError

ATLAS_DATABASE = "atlas.sqlite"
MINING_DATABASE = "mining.sqlite"
# Files and folders of an atlas that vital writes; anything else in the folder is left alone.
OUTPUT_FILES = ("index.html",)
OUTPUT_FOLDERS = (
    "results",
    "refs",
    "units",
    "static",
    "examples",
    "contact-sheets",
    "explain",
    "explanations",
)
# Tables that mark each database as vital's.
_OWN_TABLES = {ATLAS_DATABASE: {"results"}, MINING_DATABASE: {"lists"}}
# Side files of a database or of an atomic write that are part of what vital wrote.
_SIDE_SUFFIXES = ("-journal", "-wal", "-shm", ".tmp")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS atlas_files (
    path TEXT PRIMARY KEY,
    written REAL NOT NULL,
    size INTEGER,
    mtime_ns INTEGER
);
"""

Stamp = tuple[int, int] | None


def _stamp(path: Path) -> Stamp:
    """(size, modification time) of a file, ``None`` when it does not exist."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _tables(path: Path) -> set[str] | None:
    """The tables of an SQLite file, or ``None`` if it is not one."""
    try:
        with open(path, "rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":
                return None
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            return {row[0] for row in rows}
        finally:
            connection.close()
    except (OSError, sqlite3.DatabaseError):
        return None


class Ledger:
    """The list of files vital wrote in an atlas folder.

    Parameters
    ----------
    folder
        The atlas folder (created when missing; refused when it is a file).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise VitalError(
                f"{self.folder} is a file, not a folder; give a folder for the atlas (out=DIR)."
            )
        self.database = self.folder / ATLAS_DATABASE
        tables = _tables(self.database) if self.database.exists() else set()
        if tables is None or (self.database.exists() and not tables & {"atlas_files", "results"}):
            raise VitalError(
                f"{self.database} exists and is not an atlas database written by vital; vital "
                "will not write over it. Choose another folder (out=DIR), or move the file away."
            )
        self._owned: dict[str, Stamp] = self._read() if "atlas_files" in tables else {}

    def _read(self, paths: list[str] | None = None) -> dict[str, Stamp]:
        """The ledger's entries (all, or those of ``paths``): path → stamp when written."""
        with sqlite3.connect(self.database) as connection:
            if paths is None:
                rows = connection.execute("SELECT path, size, mtime_ns FROM atlas_files").fetchall()
            else:
                rows = []
                for start in range(0, len(paths), 500):
                    chunk = paths[start : start + 500]
                    rows += connection.execute(
                        "SELECT path, size, mtime_ns FROM atlas_files WHERE path IN "
                        f"({','.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
        return {path: None if size is None else (size, mtime) for path, size, mtime in rows}

    def create(self) -> Ledger:
        """Create the folder and the ledger's table (after :meth:`check`); returns ``self``."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(self.database) as connection:
                connection.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise VitalError(f"cannot use {self.folder} as an atlas folder: {error}") from error
        return self

    def _relative(self, path: str | Path) -> str:
        path = Path(path)
        absolute = path if path.is_absolute() else self.folder / path
        return absolute.relative_to(self.folder).as_posix()

    def _unchanged(self, relative: str) -> bool:
        """Vital wrote it, and it is as vital left it (or being written, or gone)."""
        stamp = self._owned[relative]
        current = _stamp(self.folder / relative)
        return stamp is None or current is None or current == stamp

    def owns(self, path: str | Path) -> bool:
        """Whether vital wrote ``path`` and nobody changed it since."""
        relative = self._relative(path)
        if relative in self._owned:
            return self._unchanged(relative)
        for suffix in _SIDE_SUFFIXES:
            if relative.endswith(suffix) and relative[: -len(suffix)] in self._owned:
                return True
        return False

    def foreign(self) -> list[str]:
        """What in the atlas's output names vital did not write, and would write over (sorted).

        An output file (``index.html``) that vital did not write or that was changed since, an
        output folder that holds files but none of vital's (it is the user's folder), and a
        database that is not vital's. Inside folders vital made, a file of the user's is left
        alone; only a write of that very name is refused (:meth:`claim`).
        """
        found = []
        for name in OUTPUT_FILES:
            path = self.folder / name
            if path.exists() and not self.owns(path):
                found.append(name)
        for name in OUTPUT_FOLDERS:
            path = self.folder / name
            if path.exists() and not path.is_dir():
                found.append(name)
            elif path.is_dir():
                files = [p for p in path.rglob("*") if not p.is_dir()]
                if files and not any(self._relative(p) in self._owned for p in files):
                    found.append(f"{name}/")
        for name, tables in _OWN_TABLES.items():
            path = self.folder / name
            if name != ATLAS_DATABASE and path.exists() and not tables <= (_tables(path) or set()):
                found.append(name)
        return sorted(found)

    def check(self) -> None:
        """Refuse a folder where an output name holds something vital did not write.

        Raises
        ------
        VitalError
            Naming up to five of those files.
        """
        found = self.foreign()
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise VitalError(
                f"{self.folder} holds files that vital did not write and an atlas would write "
                f"over ({shown}); vital never overwrites them. Choose a new or empty folder "
                "(out=DIR), or move those files away."
            )

    def claim(self, paths: Iterable[str | Path]) -> None:
        """Record ``paths`` as vital's before writing them; refuse any that is not vital's.

        A path is free when it does not exist, or vital wrote it and nobody changed it since.
        Seal the files after writing them (:meth:`seal`), so that later changes are noticed.

        Raises
        ------
        VitalError
            When one of them is the user's (nothing is recorded then).
        """
        relative = list(dict.fromkeys(self._relative(p) for p in paths))
        if not relative:
            return
        if self.database.exists():  # another writer of this folder may have claimed some
            self._owned.update(self._read(relative))
        for path in relative:
            exists = (self.folder / path).exists()
            if path in self._owned and not self._unchanged(path):
                raise VitalError(
                    f"{self.folder / path} was changed since vital wrote it; vital will not "
                    "write over it. Move it away (vital then writes it anew) or choose another "
                    "folder (out=DIR)."
                )
            if path not in self._owned and exists:
                raise VitalError(
                    f"{self.folder / path} exists and vital did not write it; vital never "
                    "overwrites it. Move it away or choose another folder (out=DIR)."
                )
        self.create()
        with sqlite3.connect(self.database) as connection:
            now = time.time()
            connection.executemany(
                "INSERT OR REPLACE INTO atlas_files VALUES (?, ?, NULL, NULL)",
                ((r, now) for r in relative),
            )
        self._owned.update(dict.fromkeys(relative))

    def seal(self, paths: Iterable[str | Path]) -> None:
        """Remember how vital left ``paths`` (size and time), after writing them."""
        relative = [self._relative(p) for p in paths]
        stamps = {r: _stamp(self.folder / r) for r in relative if r in self._owned}
        stamps = {r: s for r, s in stamps.items() if s is not None}
        with sqlite3.connect(self.database) as connection:
            connection.executemany(
                "UPDATE atlas_files SET size = ?, mtime_ns = ? WHERE path = ?",
                ((s[0], s[1], r) for r, s in stamps.items()),
            )
        self._owned.update(stamps)


def prepare_folder(folder: str | Path) -> Ledger:
    """Open (or start) the ledger of an atlas folder and refuse a folder that is not vital's."""
    ledger = Ledger(folder)
    ledger.check()
    return ledger.create()
