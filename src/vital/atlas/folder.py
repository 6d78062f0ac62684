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
from vital.files import create_database, database, save_image
from vital.grids import to_image
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
        self.store = ResultStore(self.folder / "results", index=self.folder / "atlas.sqlite")
        create_database(self.store.index, _UNITS_SCHEMA, "atlas index")
        self.planned: dict[str, PictureSpec] = {}

    def units(self) -> dict[str, StoredUnit]:
        """Every unit's current result (the one the site shows)."""
        with database(self.store.index, "atlas index") as connection:
            rows = connection.execute("SELECT unit, key, inputs, record FROM atlas_units")
            return {u: StoredUnit(u, k, json.loads(i), r) for u, k, i, r in rows.fetchall()}

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
            return {i: StoredConcepts(i, k, json.loads(n), f) for i, k, n, f in rows.fetchall()}

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
