"""The mining index: one SQLite file with the image lists, passes in progress and results.

Tables
------
``datasets`` / ``images``
    Each listed dataset once, with its images by position.
``passes``
    A mining pass in progress: which units, which stage, a snapshot of the stage's running
    top-k (``state``, with ``cursor`` counting the shards folded into it) and, in stage 2,
    stage 1's final lists (``candidates``).
``shards``
    Every finished shard of a pass in progress: its stage, images, unreadable images and, until
    the next snapshot folds it in, what it added to the running top-k (``changes``). A shard's
    row is written in one transaction as soon as the driver has merged it, so a crash loses at
    most the shards in flight; on resume, the snapshot plus the unfolded changes is exactly
    the running top-k of the finished shards.
``lists`` / ``ranked``
    The finished result per (model fingerprint, layer, unit, dataset, settings): the ranked
    images with their patch score, image score (stage 1's spatial maximum) and patch box.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vital.errors import VitalError
from vital.files import create_database, database
from vital.mining.datasets import ImageList

DATABASE_NAME = "mining.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY,
    identity TEXT UNIQUE NOT NULL,
    root TEXT NOT NULL,
    images INTEGER NOT NULL,
    not_images INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    position INTEGER NOT NULL,
    path TEXT NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (dataset, position)
);
CREATE TABLE IF NOT EXISTS passes (
    key TEXT PRIMARY KEY,
    units TEXT NOT NULL,
    stage INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    unreadable INTEGER NOT NULL,
    state BLOB,
    candidates BLOB,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (
    key TEXT NOT NULL,
    stage INTEGER NOT NULL,
    shard INTEGER NOT NULL,
    images INTEGER NOT NULL,
    unreadable INTEGER NOT NULL,
    changes BLOB,
    PRIMARY KEY (key, stage, shard)
);
CREATE TABLE IF NOT EXISTS lists (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    model_name TEXT NOT NULL,
    layer TEXT NOT NULL,
    unit TEXT NOT NULL,
    unit_name TEXT NOT NULL,
    dataset INTEGER NOT NULL REFERENCES datasets(id),
    settings TEXT NOT NULL,
    scanned INTEGER NOT NULL,
    unreadable INTEGER NOT NULL,
    finished REAL NOT NULL,
    UNIQUE (model, layer, unit, dataset, settings)
);
CREATE TABLE IF NOT EXISTS ranked (
    list INTEGER NOT NULL REFERENCES lists(id),
    rank INTEGER NOT NULL,
    position INTEGER NOT NULL,
    score REAL NOT NULL,
    image_score REAL NOT NULL,
    box_left INTEGER NOT NULL,
    box_top INTEGER NOT NULL,
    box_size INTEGER NOT NULL,
    crop INTEGER NOT NULL,
    PRIMARY KEY (list, rank)
);
"""


@dataclass(frozen=True)
class PassState:
    """Where a pass stands.

    Attributes
    ----------
    stage
        1 or 2.
    state
        Snapshot of the stage's running top-k (``None``: nothing folded yet).
    candidates
        Stage 2: stage 1's final lists.
    done
        Shards of this stage that finished: number → images.
    changes
        What the finished shards not yet folded into ``state`` added to it (to merge).
    unreadable
        Unreadable images in the finished shards of stage 1.
    """

    stage: int
    state: dict[str, torch.Tensor] | None
    candidates: dict[str, torch.Tensor] | None
    done: dict[int, int]
    changes: list[dict[str, np.ndarray]]
    unreadable: int


@dataclass(frozen=True)
class Ranked:
    """One mined image of a list.

    Attributes
    ----------
    rank
        0 for the best.
    path
        The image file.
    score
        The best patch's spatially averaged activation (stage 2).
    image_score
        The whole crop's spatial maximum (stage 1).
    box
        (left, top, side) of the best patch on the centre crop.
    crop
        Side of the centre crop the box refers to.
    label
        Class folder in an ImageNet-style tree, else ``""``.
    """

    rank: int
    path: str
    score: float
    image_score: float
    box: tuple[int, int, int]
    crop: int
    label: str = ""


def database_path(path: str | Path) -> Path:
    """The index file for ``path``: itself if it names a file, else ``path/mining.sqlite``."""
    path = Path(path)
    return path / DATABASE_NAME if path.is_dir() or not path.suffix else path


def _pack(arrays: dict[str, torch.Tensor] | None) -> bytes | None:
    if arrays is None:
        return None
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v.cpu().numpy() for k, v in arrays.items()})
    return buffer.getvalue()


def _unpack(blob: bytes | None) -> dict[str, torch.Tensor] | None:
    if blob is None:
        return None
    with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
        return {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}


def _pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
        return {k: arrays[k] for k in arrays.files}


class MiningIndex:
    """Read and write one mining database.

    Parameters
    ----------
    path
        The SQLite file (created with its tables when missing), or a folder (an existing one,
        or a path without a suffix) that holds ``mining.sqlite``.
    """

    def __init__(self, path: str | Path):
        self.path = create_database(database_path(path), _SCHEMA, "mining index")

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on error."""
        return database(self.path, "mining index")

    # --- datasets ---------------------------------------------------------------------------

    def dataset_id(self, images: ImageList) -> int:
        """The id of this exact listing, adding it (and its images) when new."""
        with self._connect() as connection:
            # Inserted first (nothing if it is there): two processes adding one listing at
            # once both get its id, neither a conflict.
            cursor = connection.execute(
                "INSERT OR IGNORE INTO datasets (identity, root, images, not_images, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (images.identity, images.root, len(images), images.not_images, time.time()),
            )
            if cursor.rowcount == 0:
                return connection.execute(
                    "SELECT id FROM datasets WHERE identity = ?", (images.identity,)
                ).fetchone()[0]
            dataset = cursor.lastrowid
            connection.executemany(
                "INSERT INTO images VALUES (?, ?, ?, ?)",
                (
                    (dataset, position, path, label)
                    for position, (path, label) in enumerate(
                        zip(images.paths, images.labels, strict=True)
                    )
                ),
            )
            return dataset

    # --- passes -----------------------------------------------------------------------------

    def load_pass(self, key: str) -> PassState | None:
        """The saved state of an unfinished pass, if any."""
        with self._connect() as connection:
            row = connection.execute(
                "SELECT stage, state, candidates FROM passes WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            shards = connection.execute(
                "SELECT shard, images, changes FROM shards WHERE key = ? AND stage = ? "
                "ORDER BY shard",
                (key, row[0]),
            ).fetchall()
            unreadable = connection.execute(
                "SELECT COALESCE(SUM(unreadable), 0) FROM shards WHERE key = ? AND stage = 1",
                (key,),
            ).fetchone()[0]
        return PassState(
            row[0],
            _unpack(row[1]),
            _unpack(row[2]),
            {shard: images for shard, images, _ in shards},
            [_unpack_arrays(changes) for _, _, changes in shards if changes is not None],
            unreadable,
        )

    def save_pass(
        self,
        key: str,
        units: list[str],
        stage: int,
        state: dict[str, torch.Tensor] | None,
        candidates: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Snapshot a pass: ``state`` holds every shard recorded so far (one transaction).

        The recorded shards' changes are folded into the snapshot (dropped); stage 2's
        ``candidates`` are written once, later snapshots pass ``None`` and keep them.
        """
        with self._connect() as connection:
            folded = connection.execute(
                "SELECT COUNT(*) FROM shards WHERE key = ? AND stage = ?", (key, stage)
            ).fetchone()[0]
            connection.execute(
                "INSERT INTO passes VALUES (?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (key) DO UPDATE "
                "SET units = excluded.units, stage = excluded.stage, cursor = excluded.cursor, "
                "state = excluded.state, "
                "candidates = COALESCE(excluded.candidates, passes.candidates), "
                "updated = excluded.updated",
                (
                    key,
                    json.dumps(units),
                    stage,
                    folded,
                    _pack(state),
                    _pack(candidates),
                    time.time(),
                ),
            )
            connection.execute(
                "UPDATE shards SET changes = NULL WHERE key = ? AND stage <= ?", (key, stage)
            )

    def record_shard(
        self,
        key: str,
        units: list[str],
        stage: int,
        shard: int,
        images: int,
        unreadable: int,
        changes: dict[str, np.ndarray],
    ) -> None:
        """Record a finished shard and what it added to the running top-k (one transaction)."""
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO passes VALUES (?, ?, ?, 0, 0, NULL, NULL, ?) ON CONFLICT (key) "
                "DO NOTHING",
                (key, json.dumps(units), stage, time.time()),
            )
            connection.execute(
                "INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?)",
                (key, stage, shard, images, unreadable, _pack_arrays(changes)),
            )
            connection.execute("UPDATE passes SET updated = ? WHERE key = ?", (time.time(), key))

    # --- results ----------------------------------------------------------------------------

    def finished_units(
        self, model: str, layer: str, dataset: int, settings: str, units: list[str]
    ) -> set[str]:
        """Those of ``units`` that already have a finished list for these inputs."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT unit FROM lists WHERE model = ? AND layer = ? AND dataset = ? "
                "AND settings = ?",
                (model, layer, dataset, settings),
            ).fetchall()
        return {row[0] for row in rows} & set(units)

    def finish_pass(self, key: str, lists: list[dict], rows: list[list[tuple]]) -> None:
        """Store every unit's ranked list and drop the pass, in one transaction."""
        with self._connect() as connection:
            for header, ranked in zip(lists, rows, strict=True):
                connection.execute(
                    "DELETE FROM ranked WHERE list IN (SELECT id FROM lists WHERE model = ? "
                    "AND layer = ? AND unit = ? AND dataset = ? AND settings = ?)",
                    tuple(header[k] for k in ("model", "layer", "unit", "dataset", "settings")),
                )
                connection.execute(
                    "DELETE FROM lists WHERE model = ? AND layer = ? AND unit = ? "
                    "AND dataset = ? AND settings = ?",
                    tuple(header[k] for k in ("model", "layer", "unit", "dataset", "settings")),
                )
                cursor = connection.execute(
                    "INSERT INTO lists (model, model_name, layer, unit, unit_name, dataset, "
                    "settings, scanned, unreadable, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?)",
                    (
                        header["model"],
                        header["model_name"],
                        header["layer"],
                        header["unit"],
                        header["unit_name"],
                        header["dataset"],
                        header["settings"],
                        header["scanned"],
                        header["unreadable"],
                        time.time(),
                    ),
                )
                connection.executemany(
                    "INSERT INTO ranked VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ((cursor.lastrowid, *row) for row in ranked),
                )
            connection.execute("DELETE FROM passes WHERE key = ?", (key,))
            connection.execute("DELETE FROM shards WHERE key = ?", (key,))

    def images(self) -> list[tuple[str, str]]:
        """Every image of every dataset mined into this index: (path, class folder or "")."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT path, label FROM images ORDER BY dataset, position"
            ).fetchall()
        return [(str(path), str(label)) for path, label in rows]

    def ranked(
        self, model: str, layer: str, unit: str, dataset: int | None = None
    ) -> tuple[dict, list[Ranked]]:
        """The newest finished list for (model fingerprint, layer, unit), best first.

        Raises
        ------
        VitalError
            When nothing was mined for it, with what the database does hold.
        """
        query = (
            "SELECT id, model_name, unit_name, dataset, settings, scanned, unreadable FROM lists "
            "WHERE model = ? AND layer = ? AND unit = ?"
        )
        arguments: tuple = (model, layer, unit)
        if dataset is not None:
            query += " AND dataset = ?"
            arguments += (dataset,)
        with self._connect() as connection:
            header = connection.execute(
                query + " ORDER BY finished DESC LIMIT 1", arguments
            ).fetchone()
            if header is None:
                held = connection.execute(
                    "SELECT model_name, layer, COUNT(*) FROM lists WHERE model = ? "
                    "GROUP BY model_name, layer",
                    (model,),
                ).fetchall()
                what = "; ".join(f"{n} {layer_}: {c} unit(s)" for n, layer_, c in held)
                raise VitalError(
                    f"{self.path} has no mined references for layer {layer!r} unit {unit!r} of "
                    f"this model ({what or 'nothing for this model'}); run `vital mine` first."
                )
            rows = connection.execute(
                "SELECT r.rank, i.path, r.score, r.image_score, r.box_left, r.box_top, "
                "r.box_size, r.crop, i.label FROM ranked r JOIN images i "
                "ON i.dataset = ? AND i.position = r.position WHERE r.list = ? ORDER BY r.rank",
                (header[3], header[0]),
            ).fetchall()
        info = dict(
            zip(
                ("model_name", "unit_name", "dataset", "settings", "scanned", "unreadable"),
                header[1:],
                strict=True,
            )
        )
        info["settings"] = json.loads(info["settings"])
        return info, [Ranked(r[0], r[1], r[2], r[3], (r[4], r[5], r[6]), r[7], r[8]) for r in rows]
