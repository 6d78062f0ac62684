"""An atlas folder: its ledger, its result store, which result each unit shows, and its concepts.

The builder (:mod:`vital.atlas.build`) writes into it and the site (:mod:`vital.atlas.site`)
reads from it; neither needs the other.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from vital.atlas.ledger import Ledger, prepare_folder
from vital.errors import VitalError
from vital.files import create_database, damaged_database, database, printable, save_image
from vital.grids import to_image
from vital.record import Record
from vital.references import ReferenceSet, center_crop, open_rgb
from vital.specs import PictureSpec
from vital.store import ResultStore
from vital.targets import Target

_UNITS_SCHEMA = """
CREATE TABLE IF NOT EXISTS atlas_units (
    unit TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    inputs TEXT NOT NULL,
    record TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS atlas_concepts (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    inputs TEXT NOT NULL,
    folder TEXT NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class StoredUnit:
    """The atlas's current result of a unit: its key, what it depended on, its record file."""

    unit: str
    key: str
    inputs: dict
    record: str


@dataclass(frozen=True)
class StoredConcepts:
    """The atlas's current concepts of a class at a layer over an image set.

    ``folder`` (relative to the atlas) holds what :func:`vital.concepts` wrote for them.
    """

    id: str
    key: str
    inputs: dict
    folder: str


class Atlas:
    """An atlas folder: ``atlas.sqlite``, ``results/``, ``refs/`` and the static site.

    Opening one checks that the folder's output names hold only what vital wrote
    (:func:`vital.atlas.ledger.prepare_folder`).
    """

    def __init__(self, folder: str | Path):
        self.ledger: Ledger = prepare_folder(folder)
        self.folder = self.ledger.folder  # resolved once: every path below is absolute
        self.store = ResultStore(
            self.folder / "results", index=self.folder / "atlas.sqlite", create=True
        )
        create_database(self.store.index, _UNITS_SCHEMA, "atlas index")
        self.planned: dict[str, PictureSpec] = {}

    def units(self) -> dict[str, StoredUnit]:
        """Every unit's current result (the one the site shows).

        Raises
        ------
        VitalError
            When the atlas index is damaged (a row's inputs are not the JSON vital wrote).
        """
        with database(self.store.index, "atlas index") as connection:
            rows = connection.execute("SELECT unit, key, inputs, record FROM atlas_units")
            return {u: StoredUnit(u, k, self._inputs(i, u), r) for u, k, i, r in rows.fetchall()}

    def _inputs(self, text: object, row: str) -> dict:
        """A row's stored inputs; a damaged row is the whole index's damage, said in one line."""
        try:
            inputs = json.loads(text) if isinstance(text, (str, bytes)) else None
        except ValueError as error:  # JSONDecodeError, or bytes that are no text
            raise damaged_database(
                self.store.index, "atlas index", f"the inputs of {row}: {error}"
            ) from error
        if not isinstance(inputs, dict):
            raise damaged_database(
                self.store.index, "atlas index", f"the inputs of {row} are no JSON object"
            )
        return inputs

    def unit_problem(self, stored: StoredUnit) -> str | None:
        """Why a unit's stored result cannot be shown or reused as it is; ``None`` if it can.

        It can when its record and every file the record names exist and are as vital wrote
        them (:meth:`vital.atlas.ledger.Ledger.owns`).
        """
        path = self.store.folder / stored.record
        if not path.is_file():
            return f"its record {printable(path)} is gone"
        if not self.ledger.owns(path):
            return f"its record {printable(path)} was changed since vital wrote it"
        try:
            record = Record.from_file(path)
        except VitalError as error:
            return str(error)
        for name in record.files.values():
            file = self.store.folder / name
            if not file.is_file():
                return f"its file {printable(file)} is gone"
            if not self.ledger.owns(file):
                return f"its file {printable(file)} was changed since vital wrote it"
        return None

    def register(self, spec: PictureSpec, record_file: str) -> None:
        """Make ``record_file`` (in ``results/``) the unit's current result under ``spec``."""
        with database(self.store.index, "atlas index") as connection:
            connection.execute(
                "INSERT OR REPLACE INTO atlas_units VALUES (?, ?, ?, ?, ?)",
                (spec.unit, spec.key(), json.dumps(spec.inputs()), record_file, time.time()),
            )

    def concept_sets(self) -> dict[str, StoredConcepts]:
        """Every concept set's current folder (the one the site shows), in the order added."""
        with database(self.store.index, "atlas index") as connection:
            rows = connection.execute(
                "SELECT id, key, inputs, folder FROM atlas_concepts ORDER BY created"
            )
            return {
                i: StoredConcepts(i, k, self._inputs(n, i), f) for i, k, n, f in rows.fetchall()
            }

    def register_concepts(self, stored: StoredConcepts) -> None:
        """Make ``stored.folder`` the current concepts of ``stored.id``."""
        with database(self.store.index, "atlas index") as connection:
            connection.execute(
                "INSERT OR REPLACE INTO atlas_concepts VALUES (?, ?, ?, ?, ?)",
                (stored.id, stored.key, json.dumps(stored.inputs), stored.folder, time.time()),
            )

    def result_files(self, stem: str) -> list[Path]:
        """The files the store writes for a result stem (claimed before a unit runs)."""
        names = (f"{stem}.png", f"{stem}.json", f"{stem}-rgba.png", f"{stem}-alpha.npy")
        return [self.store.folder / name for name in names]

    def reference_thumbnails(self, target: Target, references: ReferenceSet, limit: int = 8):
        """Save the first references as small JPEGs inside the atlas; return their entries."""
        folder = self.folder / "refs" / target.slug()
        entries = []
        for position, source in enumerate(references.sources[:limit]):
            image = open_rgb(source)
            if image is None:
                continue
            pixels = center_crop(image, 112)
            path = folder / f"{position:02d}.jpg"
            self.ledger.claim([path])
            save_image(path, to_image(pixels), quality=88)
            self.ledger.seal([path])
            entries.append(
                {"image": path.relative_to(self.folder).as_posix(), "label": source.label}
            )
        return entries
