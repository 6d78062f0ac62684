"""What vital wrote into an atlas folder: it never writes over anything else.

An atlas folder can be a folder the user already uses. The *ledger* (a table in the atlas's
``atlas.sqlite``) lists every file the atlas wrote, by its path relative to the folder (the
folder is resolved once, so a build through a relative, absolute or linked path sees the same
entries), with the size, modification time and SHA-256 vital left it with. Before a
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

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from vital.errors import VitalError
from vital.files import create_database, database, printable, sqlite_tables, temporary_target
from vital.references import CONCEPTS_MARK, users_image
from vital.store import is_atlas_database

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
    "concepts",
)
# Tables that mark each database as vital's.
_OWN_TABLES = {ATLAS_DATABASE: {"results"}, MINING_DATABASE: {"lists"}}
# Side files of a database that are part of what vital wrote.
_SIDE_SUFFIXES = ("-journal", "-wal", "-shm")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS atlas_files (
    path TEXT PRIMARY KEY,
    written REAL NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT
);
"""

# (size, modification time, SHA-256) as vital left a file; None while it is being written.
Stamp = tuple[int, int, str | None] | None


def _stamp(path: Path, digest: bool = True) -> Stamp:
    """(size, modification time, SHA-256) of a file, ``None`` when it does not exist."""
    try:
        stat = path.stat()
        sha = hashlib.sha256(path.read_bytes()).hexdigest() if digest else None
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns, sha


class Ledger:
    """The list of files vital wrote in an atlas folder.

    Parameters
    ----------
    folder
        The atlas folder (created when missing; refused when it is a file).
    """

    def __init__(self, folder: str | Path):
        if isinstance(folder, bytes):  # a path as the operating system returns it
            folder = os.fsdecode(folder)
        if not isinstance(folder, (str, os.PathLike)):
            raise VitalError(f"the atlas folder is a path (out=DIR), not {type(folder).__name__}.")
        self.folder = Path(folder).resolve()
        if self.folder.exists() and not self.folder.is_dir():
            raise VitalError(
                f"{self.folder} is a file, not a folder; give a folder for the atlas (out=DIR)."
            )
        self.database = self.folder / ATLAS_DATABASE
        # A database without tables has nothing to lose (and may be another build's, being made).
        if self.database.exists() and not is_atlas_database(self.database):
            raise VitalError(
                f"{self.database} exists and is not an atlas database written by vital; vital "
                "will not write over it. Choose another folder (out=DIR), or move the file away."
            )
        tables = sqlite_tables(self.database) if self.database.exists() else set()
        if "atlas_files" in tables:
            self._upgrade()
        self._owned: dict[str, Stamp] = self._read() if "atlas_files" in tables else {}

    def _read(self, paths: list[str] | None = None) -> dict[str, Stamp]:
        """The ledger's entries (all, or those of ``paths``): path → stamp when written."""
        with database(self.database, "atlas index") as connection:
            found = {row[1] for row in connection.execute("PRAGMA table_info(atlas_files)")}
            if not found:  # another build is creating the ledger
                return {}
            columns = "path, size, mtime_ns, " + ("sha256" if "sha256" in found else "NULL")
            if paths is None:
                rows = connection.execute(f"SELECT {columns} FROM atlas_files").fetchall()
            else:
                rows = []
                for start in range(0, len(paths), 500):
                    chunk = paths[start : start + 500]
                    rows += connection.execute(
                        f"SELECT {columns} FROM atlas_files WHERE path IN "
                        f"({','.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
        return {p: None if size is None else (size, mtime, sha) for p, size, mtime, sha in rows}

    def _upgrade(self) -> None:
        """Bring a ledger written before vital stored digests up to date.

        Adds the SHA-256 column, and re-roots paths that such a ledger stored relative to the
        working folder of a build given a relative folder (``atlas/refs/…`` for ``--out
        atlas``): a path whose leading parts are the atlas folder's trailing parts, and that
        exists without them, is the atlas's own file.
        """
        with database(self.database, "atlas index") as connection:
            columns = {row[1] for row in connection.execute("PRAGMA table_info(atlas_files)")}
            if not columns or "sha256" in columns:
                return
            try:
                connection.execute("ALTER TABLE atlas_files ADD COLUMN sha256 TEXT")
            except sqlite3.OperationalError as error:  # another build upgraded it meanwhile
                if "duplicate column" in str(error):
                    return
                raise
            paths = [row[0] for row in connection.execute("SELECT path FROM atlas_files")]
            for path in paths:
                parts = path.split("/")
                for cut in range(1, len(parts)):
                    rest = "/".join(parts[cut:])
                    tail = self.folder.parts[-cut:]
                    if tuple(parts[:cut]) == tail and (self.folder / rest).exists():
                        connection.execute(
                            "UPDATE OR IGNORE atlas_files SET path = ? WHERE path = ?",
                            (rest, path),
                        )
                        break

    def create(self) -> Ledger:
        """Create the folder and the ledger's table (after :meth:`check`); returns ``self``."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise VitalError(f"cannot use {self.folder} as an atlas folder: {error}") from error
        create_database(self.database, _SCHEMA, "atlas index", upgraded=["atlas_files"])
        self._upgrade()
        return self

    def _relative(self, path: str | Path) -> str:
        """``path`` (absolute, or relative to the working folder) relative to the atlas."""
        path = Path(os.path.abspath(path))
        # Resolve the folder it is in (links, "..") but not the file itself, as the atlas's
        # own folder was resolved.
        return (path.parent.resolve() / path.name).relative_to(self.folder).as_posix()

    def _unchanged(self, relative: str) -> bool:
        """Vital wrote it, and it is as vital left it (or being written, or gone).

        Size and time decide when they match; otherwise the content does (a copy, a touch or
        a second build writing the same bytes is no change; an edit is).
        """
        stamp = self._owned[relative]
        current = _stamp(self.folder / relative, digest=False)
        if stamp is None or current is None or current[:2] == stamp[:2]:
            return True
        if stamp[2] is None:  # sealed before vital kept digests: size and time only
            return False
        return _stamp(self.folder / relative)[2] == stamp[2]

    def owns(self, path: str | Path) -> bool:
        """Whether vital wrote ``path`` and nobody changed it since."""
        relative = self._relative(path)
        self._refresh([relative])
        if relative in self._owned:
            return self._unchanged(relative)
        return self._known(relative)

    def _refresh(self, relative: list[str]) -> None:
        """Read the entries of paths not known yet: another build may have claimed them."""
        unknown = [r for r in relative if r not in self._owned]
        if unknown and self.database.exists():
            self._owned.update(self._read(unknown))

    def _known(self, relative: str) -> bool:
        """In the ledger, or a side file of a write or database that is (not a user's file)."""
        if relative in self._owned:
            return True
        folder, _, name = relative.rpartition("/")
        written = temporary_target(name)  # a write in progress, this build's or another's
        if written is not None:
            return f"{folder}/{written}" in self._owned if folder else written in self._owned
        return any(
            relative.endswith(suffix) and relative[: -len(suffix)] in self._owned
            for suffix in _SIDE_SUFFIXES
        )

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
                files = [self._relative(p) for p in path.rglob("*") if not p.is_dir()]
                self._refresh(files)
                if files and not any(self._known(p) for p in files):
                    found.append(f"{name}/")
        for name, tables in _OWN_TABLES.items():
            path = self.folder / name
            if name == ATLAS_DATABASE or not path.exists():
                continue
            if not tables <= (sqlite_tables(path) or set()):
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
            if (self.folder / CONCEPTS_MARK).is_file():  # vital's files, not the user's
                raise VitalError(
                    f"{self.folder} holds a `vital concepts` run, whose files an atlas would "
                    f"write over ({shown}). Give the atlas its own folder (out=DIR) and put the "
                    f"run into it with `vital atlas import {self.folder} --out DIR` "
                    "(vital.concepts.import_concepts in Python)."
                )
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
        with database(self.database, "atlas index") as connection:
            now = time.time()
            connection.executemany(
                "INSERT OR REPLACE INTO atlas_files VALUES (?, ?, NULL, NULL, NULL)",
                ((r, now) for r in relative),
            )
        self._owned.update(dict.fromkeys(relative))

    def seal(self, paths: Iterable[str | Path]) -> None:
        """Remember how vital left ``paths`` (size, time and SHA-256), after writing them."""
        relative = [self._relative(p) for p in paths]
        stamps = {r: _stamp(self.folder / r) for r in relative if r in self._owned}
        stamps = {r: s for r, s in stamps.items() if s is not None}
        with database(self.database, "atlas index") as connection:
            connection.executemany(
                "UPDATE atlas_files SET size = ?, mtime_ns = ?, sha256 = ? WHERE path = ?",
                ((*s, r) for r, s in stamps.items()),
            )
        self._owned.update(stamps)


def prepare_folder(folder: str | Path) -> Ledger:
    """Open (or start) the ledger of an atlas folder and refuse a folder that is not vital's."""
    ledger = Ledger(folder)
    ledger.check()
    image = users_image(ledger.folder)
    if image is not None:  # the pages among the photos, and the photos left out as vital's
        raise VitalError(
            f"{ledger.folder} holds images that vital did not write (e.g. {printable(image)}); "
            "an atlas goes into a new or empty folder (out=DIR), or one vital wrote: written "
            "among the photos, its pages would mark the folder as vital's output, and later "
            "runs over the photos would leave them out."
        )
    return ledger.create()
