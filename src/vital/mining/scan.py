"""The two-stage mining pass (METHOD.md section 3), resumable from its index.

Stage 1 reads every image once and keeps, for every unit at once, the ``top_images`` images
with the highest spatial maximum. Stage 2 cuts each of those images' centre crop into square
patches (stride half a side), resizes every patch to the model's input size, scores it by the
unit's spatially averaged activation, keeps the best patch per image and the ``top`` images by
that score. Both stages run over an ordered list of images, save their running top-k with the
number of items done in one transaction, and continue from there when run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vital.errors import VitalError
from vital.mining.datasets import ImageList, crop_loader, list_images
from vital.mining.index import MiningIndex, PassState
from vital.mining.topk import RunningTopK
from vital.mining.units import Units, channel_units, direction_units
from vital.taps import tapped
from vital.targets import Direction
from vital.zoo import Model

DEFAULT_TOP_IMAGES = 10_000
DEFAULT_TOP = 50
DEFAULT_PATCH = 64


def default_workers() -> int:
    """DataLoader workers: all cores but one (the main process runs the model), at most 4."""
    return min(4, max(0, (os.cpu_count() or 1) - 1))


@dataclass
class MiningReport:
    """What a call to :func:`mine` did.

    Attributes
    ----------
    database
        The index file.
    layer
        The mined layer.
    units
        Keys of every requested unit (look them up with ``mined_references``).
    reused
        Keys whose lists were already in the index and were not mined again.
    images
        Images in the dataset.
    unreadable
        Images that could not be decoded (skipped).
    not_images
        Other files in the folder (ignored).
    seconds
        Time spent in each stage of this call.
    scanned
        Images read by stage 1 in this call (less than ``images`` after a resume).
    """

    database: Path
    layer: str
    units: list[str]
    reused: list[str]
    images: int
    unreadable: int
    not_images: int
    seconds: dict[str, float] = field(default_factory=dict)
    scanned: int = 0

    @property
    def images_per_second(self) -> float:
        """Stage 1 throughput of this call (0 when it had nothing to do)."""
        seconds = self.seconds.get("stage1", 0.0)
        return self.scanned / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class Patches:
    """Square patches of side ``size`` on a ``crop`` × ``crop`` image, stride half a side."""

    size: int
    crop: int

    def __post_init__(self) -> None:
        if not 2 <= self.size <= self.crop:
            raise VitalError(
                f"patch side {self.size} must be between 2 and the crop side {self.crop}."
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


def _layer_channels(model: Model, layer: str) -> int:
    size = model.preprocessing.input_size
    with tapped(model.module, [layer], stop_early=True) as tap, torch.no_grad():
        features = tap(torch.zeros(1, 3, size, size, device=model.device))[layer]
    return features.shape[1]


def mine(
    model: Model,
    layer: str,
    data: str | Path | ImageList,
    database: str | Path,
    channels: Sequence[int] | None = None,
    directions: np.ndarray | Sequence[Direction] | None = None,
    direction_name: str = "direction",
    top_images: int = DEFAULT_TOP_IMAGES,
    top: int = DEFAULT_TOP,
    patch: int = DEFAULT_PATCH,
    batch_size: int = 32,
    workers: int | None = None,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
) -> MiningReport:
    """Mine the top images and patches of every selected unit of ``layer`` in one pass.

    Parameters
    ----------
    model
        A :class:`vital.zoo.Model`.
    layer
        Module name of the layer (see ``vital layers``).
    data
        A folder tree of images (any depth; ImageNet-style class folders are recorded as
        labels), a list file with one image path per line, or an :class:`ImageList`.
    database
        The SQLite index (a file, or a folder to hold ``mining.sqlite``). Finished lists in it
        are reused, an interrupted pass with the same inputs resumes.
    channels
        Channel indices; ``None`` for all channels (ignored when ``directions`` are given).
    directions
        Concept directions instead of channels: a (C,) or (D, C) array, or ``Direction``s.
    direction_name
        Display name of array directions.
    top_images
        N of stage 1: images kept per unit by spatial-maximum activation.
    top
        k of stage 2: images kept per unit by their best patch.
    patch
        Patch side on the centre crop (32 or 64 in METHOD.md for a 224 crop); 0 skips stage 2
        and ranks whole images by their spatial maximum (the box is then the whole crop).
    batch_size
        Images per forward pass in stage 1; patches per forward pass in stage 2 (at least
        one image's patches).
    workers
        DataLoader processes that decode images (default: :func:`default_workers`).
    checkpoint_seconds
        Save progress at most this often (0: after every batch). Progress is also saved when
        the pass is interrupted by an exception or Ctrl-C.
    progress
        Show progress bars with images/s.

    Returns
    -------
    MiningReport

    Raises
    ------
    VitalError
        Missing or empty data, unknown layer, channels or direction of the wrong size.
    """
    if top_images < 1 or top < 1:
        raise VitalError("--top-images and --top must be at least 1.")
    images = data if isinstance(data, ImageList) else list_images(data)
    index = MiningIndex(database)
    layer_channels = _layer_channels(model, layer)
    if directions is not None:
        units = direction_units(directions, layer_channels, direction_name)
    else:
        units = channel_units(channels, layer_channels)
    resolution = model.preprocessing.input_size
    patches = Patches(patch, resolution) if patch else None
    settings = json.dumps(
        {
            "top_images": top_images,
            "top": min(top, top_images),
            "patch": patch,
            "stride": patches.stride if patches else 0,
            "crop": resolution,
        },
        sort_keys=True,
    )
    dataset = index.dataset_id(images)
    done = index.finished_units(model.fingerprint, layer, dataset, settings, list(units.keys))
    report = MiningReport(
        index.path, layer, list(units.keys), sorted(done), len(images), 0, images.not_images
    )
    todo = units.subset(set(units.keys) - done)
    if not len(todo):
        report.unreadable = index.ranked(model.fingerprint, layer, units.keys[0], dataset)[0][
            "unreadable"
        ]
        return report
    key = hashlib.sha256(
        json.dumps([model.fingerprint, layer, images.identity, settings, todo.keys]).encode()
    ).hexdigest()[:24]
    workers = default_workers() if workers is None else workers
    scan = _Scan(model, layer, todo, images, index, key, batch_size, workers, progress)
    scan.checkpoint_seconds = checkpoint_seconds  # how often _run saves progress
    saved = index.load_pass(key) or PassState(1, 0, 0, None, None)

    started = time.perf_counter()
    if saved.stage == 1:
        first_cursor = saved.cursor
        saved = scan.stage1(saved, top_images)
        report.scanned = len(images) - first_cursor
    report.seconds["stage1"] = time.perf_counter() - started
    started = time.perf_counter()
    if patches is None:
        final = scan.whole_images(saved, min(top, top_images))
    else:
        final = scan.stage2(saved, patches, min(top, top_images))
    report.seconds["stage2"] = time.perf_counter() - started
    report.unreadable = saved.unreadable

    headers, rows = [], []
    for u, unit in enumerate(todo.keys):
        headers.append(
            {
                "model": model.fingerprint,
                "model_name": model.name,
                "layer": layer,
                "unit": unit,
                "unit_name": todo.names[u],
                "dataset": dataset,
                "settings": settings,
                "scanned": len(images),
                "unreadable": saved.unreadable,
            }
        )
        rows.append(final[u])
    index.finish_pass(key, headers, rows)
    return report


class _Scan:
    """Runs the stages of one pass and checkpoints them into the index."""

    def __init__(
        self,
        model: Model,
        layer: str,
        units: Units,
        images: ImageList,
        index: MiningIndex,
        key: str,
        batch_size: int,
        workers: int,
        progress: bool,
    ):
        self.model = model
        self.layer = layer
        self.units = units
        self.images = images
        self.index = index
        self.key = key
        self.batch_size = batch_size
        self.workers = workers
        self.progress = progress
        self.checkpoint_seconds = 60.0  # set by mine()

    def _features(self, tap, crops: torch.Tensor) -> torch.Tensor:
        x = self.model.preprocessing.normalize(crops.to(self.model.device))
        return self.units.scores(tap(x)[self.layer].float())

    def _run(self, stage: int, positions: list[int], saved: PassState, batch_size: int, step):
        """Feed ``positions[saved.cursor:]`` to ``step``; checkpoint (cursor, count, state).

        ``step(tap, positions, crops) -> state`` handles one batch of readable crops; the
        snapshot of (cursor, unreadable, state) is replaced in one assignment after each
        batch, so whatever interrupts the loop, the last snapshot is consistent.
        """
        snapshot = saved
        last_saved = time.monotonic()
        loader = crop_loader(
            self.images,
            positions[saved.cursor :],
            self.model.preprocessing.input_size,
            batch_size,
            self.workers,
        )
        bar = tqdm(
            total=len(positions),
            initial=saved.cursor,
            unit="img",
            desc=f"stage {stage}",
            disable=not self.progress,
            smoothing=0.1,
        )
        try:
            with tapped(self.model.module, [self.layer], stop_early=True) as tap:
                with torch.no_grad():
                    for batch_positions, crops, readable in loader:
                        state = snapshot.state
                        if readable.any():
                            state = step(tap, batch_positions[readable], crops[readable])
                        snapshot = PassState(
                            stage,
                            snapshot.cursor + len(batch_positions),
                            snapshot.unreadable + int((~readable).sum()),
                            state,
                            None,  # stage 2's candidates are already in the index
                        )
                        bar.update(len(batch_positions))
                        if time.monotonic() - last_saved >= self.checkpoint_seconds:
                            self.index.save_pass(self.key, list(self.units.keys), snapshot)
                            last_saved = time.monotonic()
        except BaseException:
            if snapshot is not saved:
                self.index.save_pass(self.key, list(self.units.keys), snapshot)
            raise
        finally:
            bar.close()
        return snapshot

    def stage1(self, saved: PassState, top_images: int) -> PassState:
        """Spatial maxima of every image; returns the stage-2 starting state."""
        top = (
            RunningTopK.restore(saved.state, top_images)
            if saved.state is not None
            else RunningTopK(len(self.units), top_images)
        )

        def step(tap, positions: torch.Tensor, crops: torch.Tensor) -> dict:
            maxima = self._features(tap, crops).amax(dim=-1)  # (B, U)
            top.update(maxima.T, positions)
            return top.state()

        finished = self._run(1, list(range(len(self.images))), saved, self.batch_size, step)
        candidates = finished.state or RunningTopK(len(self.units), top_images).state()
        stage2 = PassState(2, 0, finished.unreadable, None, candidates)
        self.index.save_pass(self.key, list(self.units.keys), stage2)
        return stage2

    def whole_images(self, saved: PassState, top: int) -> list[list[tuple]]:
        """Without stage 2: each unit's ``top`` stage-1 images, scored by their maximum."""
        candidates = saved.candidates
        crop = self.model.preprocessing.input_size
        rows = []
        for u in range(len(self.units)):
            scores, ids = candidates["scores"][u][:top], candidates["ids"][u][:top]
            keep = torch.isfinite(scores)
            rows.append(
                [
                    (rank, int(position), float(score), float(score), 0, 0, crop, crop)
                    for rank, (position, score) in enumerate(
                        zip(ids[keep], scores[keep], strict=True)
                    )
                ]
            )
        return rows

    def stage2(self, saved: PassState, patches: Patches, top: int) -> list[list[tuple]]:
        """Best patch of every candidate image; returns each unit's ranked rows."""
        candidates = saved.candidates
        candidate_ids = torch.where(
            torch.isfinite(candidates["scores"]), candidates["ids"].long(), torch.tensor(-1)
        )
        sorted_ids, order = candidate_ids.sort(dim=1)
        sorted_scores = candidates["scores"].gather(1, order)
        union = [int(p) for p in torch.unique(candidate_ids) if p >= 0]
        ranking = (
            RunningTopK.restore(saved.state, top)
            if saved.state is not None
            else RunningTopK(len(self.units), top)
        )
        resolution = self.model.preprocessing.input_size

        def step(tap, positions: torch.Tensor, crops: torch.Tensor) -> dict:
            tiles = patches.cut(crops, resolution)
            chunk = max(self.batch_size, len(patches))  # an image's patches in one forward
            means = torch.cat(
                [
                    self._features(tap, tiles[i : i + chunk]).mean(dim=-1)
                    for i in range(0, len(tiles), chunk)
                ]
            )  # (B·n, U)
            best, where = means.view(len(positions), len(patches), -1).max(dim=1)  # (B, U)
            # Only units that kept this image in stage 1 rank it here.
            wanted = positions.unsqueeze(0).repeat(len(self.units), 1)
            found = torch.searchsorted(sorted_ids, wanted).clamp(max=sorted_ids.shape[1] - 1)
            member = sorted_ids.gather(1, found) == wanted
            ranking.update(torch.where(member, best.T.cpu(), -torch.inf), positions, where.T)
            return ranking.state()

        images_per_batch = max(1, self.batch_size // len(patches))
        finished = self._run(2, union, saved, images_per_batch, step)
        if finished.state is not None:
            ranking = RunningTopK.restore(finished.state, top)

        rows = []
        for u in range(len(self.units)):
            keep = torch.isfinite(ranking.scores[u])
            ids = ranking.ids[u][keep]
            found = torch.searchsorted(sorted_ids[u], ids.long())
            image_scores = sorted_scores[u][found]
            rows.append(
                [
                    (
                        rank,
                        int(ids[rank]),
                        float(ranking.scores[u][rank]),
                        float(image_scores[rank]),
                        *patches.box(int(ranking.payload[u][rank])),
                        patches.crop,
                    )
                    for rank in range(len(ids))
                ]
            )
        return rows
