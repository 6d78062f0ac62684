"""What vital wrote into an atlas folder: it never writes over anything else.

An atlas folder can be a folder the user already uses. The *ledger* (a table in the atlas's
``atlas.sqlite``) lists every file the atlas wrote, by path relative to the folder. Before a
file is written it is *claimed*: a file that exists and is not in the ledger belongs to the
user, and the write is refused with a message that names it. Before any work starts,
:meth:`Ledger.check` looks at the names the atlas uses (``index.html``, ``results/`` …) and
refuses a folder where any of them holds something vital did not write, so a build never
stops half-way for that reason.

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
    written REAL NOT NULL
);
"""


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
                f"{self.folder} is a file, not a folder; give --out a folder for the atlas."
            )
        self.database = self.folder / ATLAS_DATABASE
        tables = _tables(self.database) if self.database.exists() else set()
        if tables is None or (self.database.exists() and not tables & {"atlas_files", "results"}):
            raise VitalError(
                f"{self.database} exists and is not an atlas database written by vital; vital "
                "will not write over it. Choose another --out folder, or move the file away."
            )
        self._owned = self._read() if "atlas_files" in tables else set()

    def _read(self) -> set[str]:
        with sqlite3.connect(self.database) as connection:
            rows = connection.execute("SELECT path FROM atlas_files").fetchall()
        return {row[0] for row in rows}

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

    def owns(self, path: str | Path) -> bool:
        """Whether vital wrote ``path`` (relative to the folder, or inside it)."""
        relative = self._relative(path)
        if relative in self._owned:
            return True
        for suffix in _SIDE_SUFFIXES:
            if relative.endswith(suffix) and relative[: -len(suffix)] in self._owned:
                return True
        return False

    def foreign(self) -> list[str]:
        """Paths among the atlas's output names that vital did not write (sorted)."""
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
                found += [
                    self._relative(p)
                    for p in sorted(path.rglob("*"))
                    if not p.is_dir() and not self.owns(p)
                ]
        for name, tables in _OWN_TABLES.items():
            path = self.folder / name
            if name != ATLAS_DATABASE and path.exists() and not tables <= (_tables(path) or set()):
                found.append(name)
        return found

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
                f"over ({shown}); vital never overwrites them. Choose a new or empty --out "
                "folder, or move those files away."
            )

    def claim(self, paths: Iterable[str | Path]) -> None:
        """Record ``paths`` as vital's before writing them; refuse any the user owns.

        Raises
        ------
        VitalError
            When one of them exists and vital did not write it (nothing is recorded then).
        """
        relative = [self._relative(p) for p in paths]
        new = [r for r in dict.fromkeys(relative) if r not in self._owned]
        taken = [r for r in new if (self.folder / r).exists()]
        if taken:  # another writer of this folder may have claimed them since we read the list
            self._owned = self._read()
            new = [r for r in new if r not in self._owned]
            taken = [r for r in new if (self.folder / r).exists()]
        if taken:
            raise VitalError(
                f"{self.folder / taken[0]} exists and vital did not write it; vital never "
                "overwrites it. Move it away or choose another --out folder."
            )
        if not new:
            return
        self.create()
        with sqlite3.connect(self.database) as connection:
            now = time.time()
            connection.executemany(
                "INSERT OR IGNORE INTO atlas_files VALUES (?, ?)", ((r, now) for r in new)
            )
        self._owned.update(new)

    def forget(self, paths: Iterable[str | Path]) -> None:
        """Remove vital's files ``paths`` from the folder and the ledger (others are kept)."""
        relative = [self._relative(p) for p in paths if self.owns(p)]
        if not relative:
            return
        for path in relative:
            (self.folder / path).unlink(missing_ok=True)
        with sqlite3.connect(self.database) as connection:
            connection.executemany(
                "DELETE FROM atlas_files WHERE path = ?", ((r,) for r in relative)
            )
        self._owned.difference_update(relative)


def prepare_folder(folder: str | Path) -> Ledger:
    """Open (or start) the ledger of an atlas folder and refuse a folder that is not vital's."""
    ledger = Ledger(folder)
    ledger.check()
    return ledger.create()
