"""What a mining pass ranks images for: channels of a layer, or concept directions in it.

Both are rows of a (U, C) map from the layer's channels to U scores per position; a channel
is a one-hot row (read directly, without the product), a direction the projection on its unit
vector (METHOD.md section 4). Each unit has a stable *key* under which the index stores it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vital.errors import VitalError
from vital.targets import Channel, Direction


def direction_key(values: Sequence[float] | np.ndarray) -> str:
    """The index key of a direction: a hash of its unit vector (names are for display only)."""
    vector = np.asarray(values, dtype=np.float64).ravel()
    norm = np.linalg.norm(vector)
    if not np.isfinite(norm) or norm == 0:
        raise VitalError("a concept direction must be a finite, non-zero vector.")
    unit = (vector / norm).astype(np.float32)
    return "direction:" + hashlib.sha256(unit.tobytes()).hexdigest()[:16]


def unit_key(unit: int | str | Channel | Direction | np.ndarray) -> str:
    """Key of a channel index, ``Channel``, ``Direction``, direction vector or key string."""
    if isinstance(unit, Channel):
        return f"channel:{unit.index}"
    if isinstance(unit, Direction):
        return direction_key(unit.values)
    if isinstance(unit, np.ndarray) and unit.ndim == 1:
        return direction_key(unit)
    if isinstance(unit, (int, np.integer)):
        return f"channel:{int(unit)}"
    if isinstance(unit, str):
        if unit.isdigit():
            return f"channel:{unit}"
        if unit.startswith(("channel:", "direction:")):
            return unit
    raise VitalError(
        f"cannot tell which unit {unit!r} is: give a channel index, a Channel, a Direction or "
        "a direction vector."
    )


@dataclass(frozen=True)
class Units:
    """The units of one pass.

    Attributes
    ----------
    keys, names
        Index keys and display names, one per unit.
    channels
        (U,) channel indices, or ``None`` for directions.
    directions
        (U, C) unit vectors, or ``None`` for channels.
    """

    keys: tuple[str, ...]
    names: tuple[str, ...]
    channels: torch.Tensor | None = None
    directions: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, P) features → (B, U, P) unit activations."""
        if self.channels is not None:
            return features[:, self.channels.to(features.device)]
        directions = self.directions.to(features.device, features.dtype)
        return torch.einsum("bcp,uc->bup", features, directions)

    def subset(self, keys: set[str]) -> Units:
        """Only the units whose key is in ``keys`` (order kept)."""
        keep = [i for i, key in enumerate(self.keys) if key in keys]
        index = torch.tensor(keep, dtype=torch.int64)
        return Units(
            tuple(self.keys[i] for i in keep),
            tuple(self.names[i] for i in keep),
            None if self.channels is None else self.channels[index],
            None if self.directions is None else self.directions[index],
        )


def channel_units(channels: Sequence[int] | None, layer_channels: int) -> Units:
    """Channels by index (``None``: all of the layer's)."""
    try:
        chosen = list(range(layer_channels)) if channels is None else [int(c) for c in channels]
    except (TypeError, ValueError) as error:  # channels=3 is not iterable: say what it is
        raise VitalError(
            f"channels are a list of whole numbers (channels=[3]), not {channels!r}."
        ) from error
    wrong = [c for c in chosen if not 0 <= c < layer_channels]
    if wrong:
        raise VitalError(
            f"channel(s) {wrong} do not exist: the layer has channels 0..{layer_channels - 1}."
        )
    if not chosen:
        raise VitalError("no channels selected.")
    chosen = list(dict.fromkeys(chosen))
    return Units(
        tuple(f"channel:{c}" for c in chosen),
        tuple(f"channel {c}" for c in chosen),
        channels=torch.tensor(chosen, dtype=torch.int64),
    )


def direction_units(
    vectors: np.ndarray | Sequence[Direction], layer_channels: int, name: str = "direction"
) -> Units:
    """Directions: a (C,) or (D, C) array (rows named ``name``, ``name-1`` …) or ``Direction``s."""
    if isinstance(vectors, np.ndarray):
        matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        names = [name] if len(matrix) == 1 else [f"{name}-{i}" for i in range(len(matrix))]
    else:
        matrix = np.array([d.values for d in vectors], dtype=np.float64)
        names = [d.name for d in vectors]
    if matrix.ndim != 2 or matrix.shape[1] != layer_channels or not len(matrix):
        raise VitalError(  # no rows would leave nothing to mine, and fail past the pass
            f"a direction must have one value per channel ({layer_channels}); got an array of "
            f"shape {matrix.shape}. Save a (C,) or (D, C) array with numpy.save."
        )
    keys = [direction_key(row) for row in matrix]
    unit_vectors = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    return Units(
        tuple(keys), tuple(names), directions=torch.from_numpy(unit_vectors.astype(np.float32))
    )
