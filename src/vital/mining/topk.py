"""A running top-k per unit, merged batch by batch: memory bounded by k, not by the data.

Order is total and independent of batching: higher score first, and between equal scores the
earlier dataset position (one int64 key per entry, :func:`order_keys`). Shards finish in any
order on a cluster; because the order is total, the merged lists depend only on the set of
entries merged, never on their arrival. This is what makes a resumed or distributed run give
exactly the result of an uninterrupted local one.

A score of ``-inf`` marks an empty slot (NaN scores become ``-inf`` too): such entries never rank
above a real score and readers drop them.
"""

from __future__ import annotations

import numpy as np
import torch


def order_keys(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys whose ascending order is the ranking: score descending, then position ascending.

    The high 32 bits are the float32 score's bits mapped to an order-preserving integer and
    inverted, the low 32 bits the position + 1 (positions are at least -1, the empty slot).
    Scores must be free of NaN and of -0.0 (``merge`` makes them so).
    """
    bits = scores.contiguous().view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed-integer order = float order
    return ((~ordered).to(torch.int64) << 32) | (ids.to(torch.int64) + 1)


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
        # One attribute holding all arrays: replaced in a single store, so an interrupt
        # (Ctrl-C) can never leave scores and ids out of step. Positions and payloads as int32:
        # half the memory of int64 for 1280 channels x 10,000. The fourth array holds the
        # entries' order keys, kept so that a merge never recomputes them.
        self._entries = (
            torch.empty(units, 0),
            torch.empty(units, 0, dtype=torch.int32),
            torch.empty(units, 0, dtype=torch.int32),
            torch.empty(units, 0, dtype=torch.int64),
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
        """Merge a batch (a shorthand for :meth:`merge` that drops its mask).

        Parameters
        ----------
        scores
            (U, B) candidate scores; NaN and ``-inf`` never rank above a real score.
        ids
            (B,) dataset positions of the candidates, none of them merged before.
        payload
            (U, B) integers carried along with each entry (e.g. the best patch's index).
        """
        self.merge(scores, ids, payload)

    def merge(
        self, scores: torch.Tensor, ids: torch.Tensor, payload: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Merge entries from anywhere in the data, in any order of arrival.

        The kept lists are sorted by :func:`order_keys`; the candidates are sorted the same way
        and inserted where binary search puts them, so a merge costs about one pass over the
        kept entries, not a sort of them.

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
            what :meth:`changes` records).
        """
        scores = torch.nan_to_num(scores.float().cpu(), nan=-torch.inf) + 0.0  # -0.0 → 0.0
        ids = ids.to(torch.int32).cpu().expand_as(scores)
        payload = torch.zeros_like(ids) if payload is None else payload.to(torch.int32).cpu()
        width, count = self.width, scores.shape[1]
        every_row = width < self.capacity
        rows = torch.arange(scores.shape[0])
        if not every_row:
            # A candidate equal to the last kept score may still win on its position.
            rows = (scores >= self.scores[:, -1:]).any(dim=1).nonzero().squeeze(1)
            every_row = len(rows) == scores.shape[0]
        total = min(self.capacity, width + count)
        new = torch.zeros(scores.shape[0], total, dtype=torch.bool)
        if rows.numel() == 0 or count == 0:
            return new[:, :width]
        pick = (lambda array: array) if every_row else (lambda array: array[rows])
        keys, order = order_keys(pick(scores), pick(ids)).sort(dim=1)
        candidates = (*(pick(a).gather(1, order) for a in (scores, ids, payload)), keys)
        kept = tuple(pick(array) for array in self._entries)
        # A candidate goes after every kept entry that precedes it; kept entries fill the
        # remaining places in their order (row-major, so one masked scatter does every row).
        places = torch.searchsorted(kept[3], keys, right=True) + torch.arange(count)
        free = torch.ones(len(kept[0]), width + count, dtype=torch.bool)
        free.scatter_(1, places, False)
        merged = []
        for kept_array, candidate_array in zip(kept, candidates, strict=True):
            array = torch.empty(len(kept_array), width + count, dtype=kept_array.dtype)
            array.scatter_(1, places, candidate_array)
            array.masked_scatter_(free, kept_array)
            merged.append(array[:, :total].contiguous() if total < width + count else array)
        new[rows] = ~free[:, :total]
        if every_row:
            self._entries = tuple(merged)
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
        new = new & torch.isfinite(self.scores)  # empty slots are not entries
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
        scores = torch.nan_to_num(state["scores"].float(), nan=-torch.inf) + 0.0
        ids = state["ids"].to(torch.int32)
        top._entries = (scores, ids, state["payload"].to(torch.int32), order_keys(scores, ids))
        return top
