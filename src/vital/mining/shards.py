"""One shard of a mining stage: decode its images, run the model, return its own top-k.

This is the part of a pass that runs wherever the engine puts it (in this process, or in Ray
tasks: :class:`Decoder` on a CPU worker, :class:`StageScorer` where the model is). Both are
plain picklable objects; the driver (``scan``) merges the returned lists and records them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.mining.datasets import crop_loader
from vital.mining.topk import RunningTopK
from vital.mining.units import Units
from vital.references import smallest_patch_side
from vital.taps import tapped
from vital.zoo import Model

UNREADABLE_NAMED = 5  # unreadable images a shard names (the count covers them all)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # positions, uint8 crops, readable


@dataclass(frozen=True)
class Patches:
    """Square patches of side ``size`` on a ``crop`` × ``crop`` image, stride half a side."""

    size: int
    crop: int

    def __post_init__(self) -> None:
        if not smallest_patch_side(self.crop) <= self.size <= self.crop:
            raise VitalError(
                f"the patch side (patch_side=N) must be between "
                f"{smallest_patch_side(self.crop)} and the crop side {self.crop} (the authors "
                f"use 32 or 64; 0: whole images), not {self.size}."
            )

    @property
    def stride(self) -> int:
        """Half a side (METHOD.md)."""
        return max(1, self.size // 2)

    @property
    def per_axis(self) -> int:
        """Patch positions along one axis."""
        return (self.crop - self.size) // self.stride + 1

    def __len__(self) -> int:
        return self.per_axis**2

    def box(self, index: int) -> tuple[int, int, int]:
        """(left, top, side) of patch ``index`` (row-major)."""
        row, column = divmod(index, self.per_axis)
        return column * self.stride, row * self.stride, self.size

    def cut(self, crops: torch.Tensor, resolution: int) -> torch.Tensor:
        """(B, 3, crop, crop) → (B·n, 3, resolution, resolution): every patch, resized."""
        tiles = crops.unfold(2, self.size, self.stride).unfold(3, self.size, self.stride)
        # (B, 3, rows, columns, side, side) → (B, rows, columns, 3, side, side), row-major
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, self.size, self.size)
        return F.interpolate(tiles, size=(resolution, resolution), mode="bilinear")


@dataclass(frozen=True)
class Shard:
    """A slice of a stage's image list.

    Attributes
    ----------
    stage
        1 (spatial maxima of every image) or 2 (best patch of every candidate image).
    number
        Its place in the stage (shards are fixed by the data and ``shard_size``, so a resumed
        run cuts the same ones).
    positions, paths
        Its images, in increasing position order.
    floor
        (U,) scores below which nothing can enter the driver's running top-k any more (its
        last kept score when full, else ``-inf``): entries below it are not sent back.
    """

    stage: int
    number: int
    positions: tuple[int, ...]
    paths: tuple[str, ...]
    floor: torch.Tensor | None = None


@dataclass(frozen=True)
class ShardResult:
    """A shard's own top-k per unit (ranked, ``-inf``-padded) and its counts.

    ``unreadable_positions`` holds the positions of its first unreadable images, so that a
    report can name them.
    """

    stage: int
    number: int
    images: int
    unreadable: int
    scores: torch.Tensor
    ids: torch.Tensor
    payload: torch.Tensor
    unreadable_positions: tuple[int, ...] = ()


@dataclass(frozen=True)
class ShardFailure:
    """A shard that kept failing (the engine's ``on_failure`` outcome)."""

    shard: Shard
    error: str


@dataclass(frozen=True)
class Decoder:
    """A shard → its batches of uint8 centre crops (``workers`` DataLoader processes)."""

    resolution: int
    batch_size: int
    workers: int = 0

    def __call__(self, shard: Shard) -> Iterable[Batch]:
        """The shard's images in batches: (positions, crops, readable)."""
        batches = -(-len(shard.positions) // self.batch_size)
        workers = self.workers if batches > 1 else 0  # one batch: nothing to overlap with
        return crop_loader(shard.paths, shard.positions, self.resolution, self.batch_size, workers)


@dataclass
class StageScorer:
    """Scores a shard's images for every unit and keeps the shard's top ``capacity``.

    Parameters
    ----------
    model, layer, units
        What to read.
    capacity
        Entries kept per unit (stage 1: N images; stage 2: k images).
    batch_size
        Stage 2: patches per forward (at least one image's patches).
    patches
        Stage 2 only: the patch grid; ``None`` for stage 1.
    members
        Stage 2 only: (U, K) each unit's stage-1 images, sorted, ``-1`` for empty slots; an
        image is ranked only for the units that kept it.
    device
        ``None``: where the model is; ``"auto"``: the GPU when this worker has one (remote
        engines), else the CPU.
    """

    model: Model
    layer: str
    units: Units
    capacity: int
    batch_size: int
    patches: Patches | None = None
    members: torch.Tensor | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        self._placed = self.device is None

    def _model(self) -> Model:
        if not self._placed:  # once per worker process: the scorer is cached there
            self.model.to("cuda" if torch.cuda.is_available() else "cpu")
            self._placed = True
        return self.model

    def _features(self, tap, crops: torch.Tensor) -> torch.Tensor:
        x = self.model.preprocessing.normalize(crops)
        return self.units.scores(tap(x)[self.layer].float())

    def __call__(self, shard: Shard, batches: Iterable[Batch]) -> ShardResult:
        """Run the shard; return its ranked entries at or above ``shard.floor``.

        Scores stay where the model runs until the shard is done, then one sort ranks them:
        no per-batch merge, no per-batch device-to-host copy.
        """
        model = self._model()
        found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        images = unreadable = 0
        unreadable_positions: list[int] = []
        with tapped(model.module, [self.layer], stop_early=True) as tap, torch.no_grad():
            for positions, crops, readable in batches:
                images += len(positions)
                unreadable += int((~readable).sum())
                if len(unreadable_positions) < UNREADABLE_NAMED:
                    missing = positions[~readable][: UNREADABLE_NAMED - len(unreadable_positions)]
                    unreadable_positions += [int(p) for p in missing]
                if readable.any():
                    pixels = crops[readable].to(model.device, non_blocking=True).float() / 255
                    if self.patches is None:
                        scores, payload = self._maxima(tap, pixels), None
                    else:
                        scores, payload = self._best_patches(tap, positions[readable], pixels)
                    found.append((scores, positions[readable], payload))
        top = RunningTopK(len(self.units), self.capacity)
        if found:
            scores = torch.cat([f[0] for f in found], dim=1).cpu()
            payload = None if found[0][2] is None else torch.cat([f[2] for f in found], dim=1)
            top.merge(scores, torch.cat([f[1] for f in found]), payload)
        scores, ids, payload = top.scores, top.ids, top.payload
        keep = torch.isfinite(scores)  # ranked best first: what is kept is a prefix
        if shard.floor is not None:
            keep &= scores >= shard.floor.unsqueeze(1)
        width = int(keep.sum(dim=1).max()) if keep.numel() else 0
        keep = keep[:, :width]
        return ShardResult(
            shard.stage,
            shard.number,
            images,
            unreadable,
            torch.where(keep, scores[:, :width], -torch.inf),
            torch.where(keep, ids[:, :width], -1),
            torch.where(keep, payload[:, :width], 0),
            tuple(unreadable_positions),
        )

    def _maxima(self, tap, pixels: torch.Tensor) -> torch.Tensor:
        """(U, B) spatial maxima."""
        return self._features(tap, pixels).amax(dim=-1).T

    def _best_patches(
        self, tap, positions: torch.Tensor, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, B) best patch score of each image for the units that kept it, and which patch."""
        resolution = self.model.preprocessing.input_size
        tiles = self.patches.cut(pixels, resolution)
        chunk = max(self.batch_size, len(self.patches))  # an image's patches in one forward
        means = torch.cat(
            [
                self._features(tap, tiles[i : i + chunk]).mean(dim=-1)
                for i in range(0, len(tiles), chunk)
            ]
        )  # (B·n, U)
        best, where = means.view(len(positions), len(self.patches), -1).max(dim=1)  # (B, U)
        # Only units that kept this image in stage 1 rank it here.
        members = self.members
        wanted = positions.to(members.dtype).unsqueeze(0).expand(len(self.units), -1)
        found = torch.searchsorted(members, wanted.contiguous()).clamp(max=members.shape[1] - 1)
        member = (members.gather(1, found) == wanted).to(best.device)
        return torch.where(member, best.T, -torch.inf), where.T
