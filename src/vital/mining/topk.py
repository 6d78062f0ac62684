"""A running top-k per unit, merged batch by batch: memory bounded by k, not by the data.

Order is total and independent of batching: higher score first, and between equal scores the
earlier dataset position. Within a shard candidates arrive in increasing position order, so a
*stable* sort of "kept entries, then the batch" keeps that order among ties (:meth:`update`).
Shards finish in any order on a cluster, so the driver merges their lists with
:meth:`RunningTopK.merge`, which sorts by position first: the result depends only on the set of
entries merged, never on their arrival. This is what makes a resumed or distributed run give
exactly the result of an uninterrupted local one.

A score of ``-inf`` marks an empty slot (NaN scores become ``-inf`` too): such entries never rank
above a real score and readers drop them.
"""

from __future__ import annotations

import numpy as np
import torch


class RunningTopK:
    """The ``capacity`` best (score, id, payload) entries for each of ``units`` rows.

    Parameters
    ----------
    units
        Number of independent rankings (channels or directions).
    capacity
        Entries kept per unit.
    """

    def __init__(self, units: int, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # One attribute holding all three arrays: replaced in a single store, so an interrupt
        # (Ctrl-C) can never leave scores and ids out of step.
        # Positions and payloads as int32: half the memory of int64 for 1280 channels x 10,000.
        self._entries = (
            torch.empty(units, 0),
            torch.empty(units, 0, dtype=torch.int32),
            torch.empty(units, 0, dtype=torch.int32),
        )

    @property
    def scores(self) -> torch.Tensor:
        """(U, W) kept scores, best first."""
        return self._entries[0]

    @property
    def ids(self) -> torch.Tensor:
        """(U, W) dataset positions of the kept entries."""
        return self._entries[1]

    @property
    def payload(self) -> torch.Tensor:
        """(U, W) integers carried with the kept entries."""
        return self._entries[2]

    @property
    def width(self) -> int:
        """Entries currently held per unit (grows up to ``capacity``)."""
        return self.scores.shape[1]

    def update(
        self, scores: torch.Tensor, ids: torch.Tensor, payload: torch.Tensor | None = None
    ) -> None:
        """Merge a batch.

        Parameters
        ----------
        scores
            (U, B) candidate scores; NaN and ``-inf`` never rank above a real score.
        ids
            (B,) dataset positions of the candidates, all larger than any merged before.
        payload
            (U, B) integers carried along with each entry (e.g. the best patch's index).
        """
        scores = torch.nan_to_num(scores.float().cpu(), nan=-torch.inf)
        ids = ids.to(torch.int32).cpu().expand_as(scores)
        payload = torch.zeros_like(ids) if payload is None else payload.to(torch.int32).cpu()
        kept_scores, kept_ids, kept_payload = self._entries
        rows = torch.arange(scores.shape[0])
        if self.width == self.capacity:
            # Only units where some candidate beats the current last entry can change; a
            # candidate that merely ties it comes later in the data and loses the tie.
            rows = (scores > kept_scores[:, -1:]).any(dim=1).nonzero().squeeze(1)
            if rows.numel() == 0:
                return
        merged_scores = torch.cat([kept_scores[rows], scores[rows]], dim=1)
        order = merged_scores.sort(dim=1, descending=True, stable=True).indices
        order = order[:, : self.capacity]
        merged = (
            merged_scores.gather(1, order),
            torch.cat([kept_ids[rows], ids[rows]], dim=1).gather(1, order),
            torch.cat([kept_payload[rows], payload[rows]], dim=1).gather(1, order),
        )
        if merged[0].shape[1] != self.width:  # still filling up: every row was merged
            self._entries = merged
            return
        updated = tuple(array.clone() for array in self._entries)
        for array, rows_merged in zip(updated, merged, strict=True):
            array[rows] = rows_merged
        self._entries = updated

    def merge(
        self, scores: torch.Tensor, ids: torch.Tensor, payload: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Merge entries from anywhere in the data, in any order of arrival.

        Parameters
        ----------
        scores
            (U, B) scores (``-inf`` for empty slots).
        ids
            (U, B) or (B,) dataset positions, none of them merged before.
        payload
            (U, B) integers carried along.

        Returns
        -------
        torch.Tensor
            (U, W) bool: which kept entries came from this call (the shard's contribution,
            what :func:`changes` records).
        """
        scores = torch.nan_to_num(scores.float().cpu(), nan=-torch.inf)
        ids = ids.to(torch.int32).cpu().expand_as(scores)
        payload = torch.zeros_like(ids) if payload is None else payload.to(torch.int32).cpu()
        kept_scores, kept_ids, kept_payload = self._entries
        width = self.width
        rows = torch.arange(scores.shape[0])
        if width == self.capacity:
            # A candidate equal to the last kept score may still win on its position.
            rows = (scores >= kept_scores[:, -1:]).any(dim=1).nonzero().squeeze(1)
        new = torch.zeros(scores.shape[0], min(self.capacity, width + scores.shape[1]), dtype=bool)
        if rows.numel() == 0 or scores.shape[1] == 0:
            return new[:, :width]
        merged_ids = torch.cat([kept_ids[rows], ids[rows]], dim=1)
        by_position = merged_ids.argsort(dim=1, stable=True)
        merged_scores = torch.cat([kept_scores[rows], scores[rows]], dim=1).gather(1, by_position)
        order = merged_scores.sort(dim=1, descending=True, stable=True).indices
        order = by_position.gather(1, order[:, : self.capacity])  # indices into the concatenation
        merged = (
            torch.cat([kept_scores[rows], scores[rows]], dim=1).gather(1, order),
            merged_ids.gather(1, order),
            torch.cat([kept_payload[rows], payload[rows]], dim=1).gather(1, order),
        )
        new[rows] = order >= width
        if merged[0].shape[1] != width:  # still filling up: every row was merged
            self._entries = merged
            return new
        updated = tuple(array.clone() for array in self._entries)
        for array, rows_merged in zip(updated, merged, strict=True):
            array[rows] = rows_merged
        self._entries = updated
        return new

    def changes(self, new: torch.Tensor) -> dict[str, np.ndarray]:
        """The entries marked by :meth:`merge`, as flat arrays (unit, score, id, payload).

        Merging these into the state from before that merge gives the state after it, so a
        driver can record a shard's contribution instead of the whole state.
        """
        units = new.nonzero()[:, 0]
        return {
            "unit": units.to(torch.int32).numpy(),
            "scores": self.scores[new].numpy(),
            "ids": self.ids[new].numpy(),
            "payload": self.payload[new].numpy(),
        }

    def merge_changes(self, changes: dict[str, np.ndarray]) -> None:
        """Merge flat entries recorded by :meth:`changes` (padding the rows with ``-inf``)."""
        units = torch.from_numpy(np.asarray(changes["unit"], dtype=np.int64))
        if units.numel() == 0:
            return
        count = torch.bincount(units, minlength=self.scores.shape[0])
        order = units.argsort(stable=True)
        column = torch.arange(len(units)) - (count.cumsum(0) - count)[units[order]]
        shape = (self.scores.shape[0], int(count.max()))
        scores = torch.full(shape, -torch.inf)
        ids = torch.full(shape, -1, dtype=torch.int32)
        payload = torch.zeros(shape, dtype=torch.int32)
        rows = units[order]
        scores[rows, column] = torch.from_numpy(np.asarray(changes["scores"]))[order].float()
        ids[rows, column] = torch.from_numpy(np.asarray(changes["ids"]))[order].to(torch.int32)
        payload[rows, column] = torch.from_numpy(np.asarray(changes["payload"]))[order].to(
            torch.int32
        )
        self.merge(scores, ids, payload)

    def state(self) -> dict[str, torch.Tensor]:
        """Arrays that restore this object exactly (see :meth:`restore`)."""
        return {"scores": self.scores, "ids": self.ids, "payload": self.payload}

    @classmethod
    def restore(cls, state: dict[str, torch.Tensor], capacity: int) -> RunningTopK:
        """Rebuild from :meth:`state`."""
        top = cls(state["scores"].shape[0], capacity)
        top._entries = (
            state["scores"].float(),
            state["ids"].to(torch.int32),
            state["payload"].to(torch.int32),
        )
        return top
