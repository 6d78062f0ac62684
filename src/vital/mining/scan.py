"""The two-stage mining pass (METHOD.md section 3), run shard by shard, resumable from its index.

Stage 1 reads every image once and keeps, for every unit at once, the ``top_images`` images
with the highest spatial maximum. Stage 2 cuts each of those images' centre crop into square
patches (stride half a side), resizes every patch to the model's input size, scores it by the
unit's spatially averaged activation, keeps the best patch per image and the
``reference_count`` images by that score (the unit's references).

Both stages cut their ordered image list into fixed shards and hand them to an engine (this
process, or Ray tasks on a cluster: see ``vital.engines``); each shard comes back with its own
top-k, and this driver merges the lists in whatever order they arrive (ties go to the earlier
image, so the result depends only on the data), records each finished shard in the index at
once and snapshots the merged state every ``checkpoint_seconds``. A resumed pass skips the
recorded shards: an interruption, of a worker or of this driver, loses at most the shards in
flight. The driver is the only writer of the index.
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

from vital.engines import Engine, check_engine, make_engine
from vital.errors import VitalError, check_count
from vital.files import exclusive, printable
from vital.mining.datasets import ImageList, list_images
from vital.mining.index import MiningIndex, PassState, database_path
from vital.mining.shards import (
    UNREADABLE_NAMED,
    Decoder,
    Patches,
    Shard,
    ShardFailure,
    StageScorer,
)
from vital.mining.topk import RunningTopK
from vital.mining.units import Units, channel_units, direction_units
from vital.progress import progress_bar
from vital.references import DEFAULT_REFERENCES, check_apart
from vital.renamed import renamed
from vital.store import output_folder
from vital.taps import check_positions, check_target_layer, list_layers, tapped
from vital.targets import Direction
from vital.zoo import Model, as_model, frozen, resolve_device

DEFAULT_TOP_IMAGES = 10_000
DEFAULT_PATCH = 64
DEFAULT_MINING_BATCH = 32
DEFAULT_SHARD = 1024
PASS_FORMAT = "shards-1"  # in the pass key: passes saved by another layout are not resumed


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
    unreadable_examples
        Paths of the first few of them that this call read (a resumed or reused pass read
        the others before, and counted them without names).
    not_images
        Other files in the folder (ignored).
    seconds
        Time spent in each stage of this call.
    scanned
        Images read by stage 1 in this call (less than ``images`` after a resume).
    engine
        Where the shards ran (``local`` or ``ray``).
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
    engine: str = "local"
    unreadable_examples: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Stage 1 throughput of this call (0 when it had nothing to do)."""
        seconds = self.seconds.get("stage1", 0.0)
        return self.scanned / seconds if seconds > 0 else 0.0


def _layer_channels(model: Model, layer: str) -> int:
    """The layer's channel count, from the one probe pass that also checks the layer."""
    size = model.preprocessing.input_size
    layers = list_layers(model.module, size)
    check_target_layer(layer, model.module, size, layers, model.zoo_name)
    for info in layers:
        if info.name == layer:
            # said here, before any shard: each shard failed on it, and the message then said
            # to run the same command again
            check_positions(info, model.zoo_name, "so it has no patches to mine")
            return info.channels
    with tapped(model.module, [layer], stop_early=True) as tap, torch.no_grad():
        features = tap(torch.zeros(1, 3, size, size, device=model.device))[layer]
    return features.shape[1]


def _checked_counts(
    top_images: int, reference_count: int, shard_size: int, batch_size: int, workers: int | None
) -> tuple[int, int, int, int]:
    """The counts of a pass as Python's ints (:func:`check_count`), and the workers checked."""
    top_images, reference_count, shard_size, batch_size = (
        check_count(value, name)
        for value, name in (
            (top_images, "top_images"),
            (reference_count, "reference_count"),
            (shard_size, "shard_size"),
            (batch_size, "batch_size"),
        )
    )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 0):  # fmt: skip
        raise VitalError(f"workers=N is 0 (decode in this process) or more, not {workers!r}.")
    if workers is not None and workers > (most := 4 * (os.cpu_count() or 1)):
        # each is a process: `--workers 100000` started processes until the machine stalled
        raise VitalError(
            f"workers=N is at most {most} (4 per core of this machine; more decoding "
            f"processes only wait for the cores), not {workers!r}."
        )
    return top_images, reference_count, shard_size, batch_size


@renamed(top="reference_count", database="out")
def mine(
    model: Model,
    layer: str,
    data: str | Path | ImageList,
    out: str | Path,
    channels: Sequence[int] | None = None,
    directions: np.ndarray | Sequence[Direction] | None = None,
    direction_name: str = "direction",
    top_images: int = DEFAULT_TOP_IMAGES,
    reference_count: int = DEFAULT_REFERENCES,
    patch_side: int = DEFAULT_PATCH,
    batch_size: int = DEFAULT_MINING_BATCH,
    workers: int | None = None,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
    engine: str | Engine = "local",
    address: str | None = None,
    shard_size: int = DEFAULT_SHARD,
    device: str | torch.device | None = None,
) -> MiningReport:
    """Mine the top images and patches of every selected unit of ``layer`` in one pass.

    Parameters
    ----------
    model
        A :class:`vital.zoo.Model`, an ``nn.Module`` or a model name.
    layer
        Module name of the layer (see ``vital layers``).
    data
        A folder tree of images (any depth; ImageNet-style class folders are recorded as
        labels), a list file with one image path per line, or an :class:`ImageList`.
    out
        Where the SQLite index goes: a folder to hold ``mining.sqlite`` (``--out``), or the
        index file itself. Finished lists in it are reused, an interrupted pass with the same
        inputs resumes (``database=``, the old name, still works with a warning).
    channels
        Channel indices; ``None`` for all channels (ignored when ``directions`` are given).
    directions
        Concept directions instead of channels: a (C,) or (D, C) array, or ``Direction``s.
    direction_name
        Display name of array directions.
    top_images
        N of stage 1: images kept per unit by spatial-maximum activation.
    reference_count
        k of stage 2: images kept per unit by their best patch, the unit's references
        (``--ref-count``; ``top=``, the old name, still works with a warning).
    patch_side
        Patch side on the centre crop (32 or 64 in METHOD.md for a 224 crop); 0 skips stage 2
        and ranks whole images by their spatial maximum (the box is then the whole crop).
    batch_size
        Images per forward pass in stage 1; patches per forward pass in stage 2 (at least
        one image's patches).
    workers
        DataLoader processes that decode images for the local engine (default:
        :func:`default_workers`); the Ray engine decodes each shard in a CPU task of its own.
    checkpoint_seconds
        Fold the recorded shards into one snapshot of the running top-k at most this often
        (0: after every shard). Every finished shard is recorded at once regardless.
    progress
        Show progress bars with images/s.
    engine
        ``"local"`` (shards one after the other in this process), ``"ray"`` (shards as Ray
        tasks; the model on a GPU worker when the cluster has GPUs), or an engine object from
        :mod:`vital.engines` (left running).
    address
        With ``engine="ray"``: the cluster's address (default: start a local Ray instance,
        stopped again at the end).
    shard_size
        Images per shard in stage 1 (stage 2: images whose patches make as many forward
        passes). The unit of distribution and of resuming; the result does not depend on it.
    device
        Where a model given by name or module runs (``None``: ``"auto"`` for a name, the
        module's own device otherwise).

    Returns
    -------
    MiningReport

    Raises
    ------
    VitalError
        Missing or empty data, unknown layer, channels or direction of the wrong size, Ray
        asked for but not installed, or a shard that kept failing (the finished shards are
        saved: run again to retry the rest).
    """
    top_images, reference_count, shard_size, batch_size = _checked_counts(
        top_images, reference_count, shard_size, batch_size, workers
    )
    if device is not None:  # a device that is not there: refused before the folder is made
        resolve_device(device)
    database = database_path(out)
    check_apart(data, database.parent)
    with frozen(model.module if isinstance(model, Model) else model):
        model = as_model(model, device)
        # the layer, units, patches and images before the folder and its lock: a run refused
        # for them left `mining.lock` (and the folder) behind
        plan = plan_mining(
            model, layer, data, channels, directions, direction_name, patch_side, engine, address
        )
        output_folder(database.parent, "mining folder")
        # Two runs into one index take turns: the second then reuses what the first finished.
        with exclusive(database.with_suffix(".lock"), f"run mining into {database}"):
            return _mine(
                model, layer, plan, out, top_images, reference_count, batch_size, workers,
                checkpoint_seconds, progress, engine, address, shard_size,
            )  # fmt: skip


@dataclass(frozen=True)
class MiningPlan:
    """What a pass mines, checked before anything is written (:func:`plan_mining`).

    Attributes
    ----------
    images
        The images, listed once: give them to :func:`mine` as its ``data``.
    units
        The units of the layer to mine.
    patches
        The stage-2 patches; ``None`` ranks whole images.
    """

    images: ImageList
    units: Units
    patches: Patches | None


def plan_mining(
    model: Model,
    layer: str,
    data: str | Path | ImageList,
    channels: Sequence[int] | None = None,
    directions: np.ndarray | Sequence[Direction] | None = None,
    direction_name: str = "direction",
    patch_side: int = DEFAULT_PATCH,
    engine: str | Engine = "local",
    address: str | None = None,
    top_images: int = DEFAULT_TOP_IMAGES,
    reference_count: int = DEFAULT_REFERENCES,
    batch_size: int = DEFAULT_MINING_BATCH,
    workers: int | None = None,
    shard_size: int = DEFAULT_SHARD,
) -> MiningPlan:
    """Check what :func:`mine` would mine, writing nothing: the refusals it makes before its pass.

    A caller that writes a folder of its own before mining (``atlas build``) checks first, so
    that a run refused for its layer or images leaves nothing behind.

    Parameters
    ----------
    model
        A loaded :class:`vital.zoo.Model`.
    layer, data, channels, directions, direction_name, patch_side, engine, address
        As for :func:`mine`.
    top_images, reference_count, batch_size, workers, shard_size
        As for :func:`mine`: checked only.

    Raises
    ------
    VitalError
        A count that is not one, an unknown engine, missing or empty data, an unknown layer
        or one without positions, channels or directions that do not fit it, or a patch side
        outside the crop.
    """
    _checked_counts(top_images, reference_count, shard_size, batch_size, workers)
    if isinstance(engine, str):
        check_engine(engine, address)  # before listing a large dataset, not after
    elif address is not None:
        raise VitalError("address goes with an engine name; this engine is already connected.")
    images = data if isinstance(data, ImageList) else list_images(data)
    layer_channels = _layer_channels(model, layer)
    if directions is not None:
        units = direction_units(directions, layer_channels, direction_name)
    else:
        units = channel_units(channels, layer_channels)
    patches = Patches(patch_side, model.preprocessing.input_size) if patch_side else None
    return MiningPlan(images, units, patches)


def _mine(
    model: Model,
    layer: str,
    plan: MiningPlan,
    database: str | Path,
    top_images: int,
    reference_count: int,
    batch_size: int,
    workers: int | None,
    checkpoint_seconds: float,
    progress: bool,
    engine: str | Engine,
    address: str | None,
    shard_size: int,
) -> MiningReport:
    images, units, patches = plan.images, plan.units, plan.patches
    patch = patches.size if patches else 0
    resolution = model.preprocessing.input_size
    # made once the layer, units and patches are known to be good: a refused run leaves no
    # empty database behind
    index = MiningIndex(database)
    settings = json.dumps(
        {
            "top_images": top_images,
            # Stored as "top" (its name before): finished lists of older indexes still match.
            "top": min(reference_count, top_images),
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
    identity = [PASS_FORMAT, model.fingerprint, layer, images.identity, settings, todo.keys]
    key = hashlib.sha256(json.dumps([*identity, shard_size]).encode()).hexdigest()[:24]
    runner = make_engine(engine, address) if isinstance(engine, str) else engine
    report.engine = runner.name
    scan = _Pass(
        model,
        layer,
        todo,
        images,
        index,
        key,
        runner,
        batch_size=batch_size,
        shard_size=shard_size,
        workers=default_workers() if workers is None else workers,
        checkpoint_seconds=checkpoint_seconds,
        progress=progress,
    )
    try:
        final = scan.run(top_images, min(reference_count, top_images), patches)
    finally:
        if runner is not engine:  # made here: stop the Ray instance it started
            runner.shutdown()
    report.seconds, report.scanned, report.unreadable = scan.seconds, scan.scanned, scan.unreadable
    report.unreadable_examples = [images.paths[p] for p in scan.unreadable_positions]
    if scan.unreadable >= len(images):  # else "nothing was mined for stage3 channel 0"
        named = ", ".join(printable(p) for p in report.unreadable_examples[:3])
        named = f" (e.g. {named})" if named else ""  # a resumed pass names none
        raise VitalError(
            f"none of the {len(images)} images could be read{named}: nothing was mined; "
            "check the files (they are not images, or are damaged)."
        )

    headers = [
        {
            "model": model.fingerprint,
            "model_name": model.name,
            "layer": layer,
            "unit": unit,
            "unit_name": todo.names[u],
            "dataset": dataset,
            "settings": settings,
            "scanned": len(images),
            "unreadable": scan.unreadable,
        }
        for u, unit in enumerate(todo.keys)
    ]
    index.finish_pass(key, headers, final)
    return report


@dataclass
class _Pass:
    """Runs the stages of one pass on an engine and records every shard in the index."""

    model: Model
    layer: str
    units: Units
    images: ImageList
    index: MiningIndex
    key: str
    engine: Engine
    batch_size: int
    shard_size: int
    workers: int
    checkpoint_seconds: float
    progress: bool
    seconds: dict[str, float] = field(default_factory=dict)
    scanned: int = 0  # stage-1 images read in this call
    unreadable: int = 0  # stage-1 unreadable images, this call and before
    unreadable_positions: list[int] = field(default_factory=list)  # the first few, this call

    def run(
        self, top_images: int, reference_count: int, patches: Patches | None
    ) -> list[list[tuple]]:
        """Both stages (or what is left of them): each unit's ranked rows for the index."""
        saved = self.index.load_pass(self.key)
        self.unreadable = saved.unreadable if saved is not None else 0
        started = time.perf_counter()
        if saved is None or saved.stage == 1:
            scorer = self._scorer(top_images)
            positions = list(range(len(self.images)))
            ranking = self._stage(1, positions, scorer, self.shard_size, self.batch_size, saved)
            candidates = ranking.state()
            self.index.save_pass(self.key, list(self.units.keys), 2, None, candidates)
            saved = None
        else:
            candidates = saved.candidates
        self.seconds["stage1"] = time.perf_counter() - started
        started = time.perf_counter()
        if patches is None:
            rows = self._whole_images(candidates, reference_count)
        else:
            rows = self._stage2(candidates, patches, reference_count, saved)
        self.seconds["stage2"] = time.perf_counter() - started
        return rows

    def _scorer(self, capacity: int, **stage2) -> StageScorer:
        return StageScorer(
            self.model,
            self.layer,
            self.units,
            capacity,
            self.batch_size,
            device="auto" if self.engine.remote else None,
            **stage2,
        )

    def _stage(
        self,
        stage: int,
        positions: list[int],
        scorer: StageScorer,
        per_shard: int,
        batch_size: int,
        saved: PassState | None,
    ) -> RunningTopK:
        """Run the shards of ``positions`` not yet recorded; return the merged top-k."""
        keys = list(self.units.keys)
        capacity = scorer.capacity
        ranking = RunningTopK(len(self.units), capacity)
        done: dict[int, int] = {}
        if saved is not None and saved.stage == stage:
            if saved.state is not None:
                ranking = RunningTopK.restore(saved.state, capacity)
            for changes in saved.changes:
                ranking.merge_changes(changes)
            done = saved.done
        shards = [positions[i : i + per_shard] for i in range(0, len(positions), per_shard)]
        failures: list[ShardFailure] = []
        paths = self.images.paths

        def jobs():
            for number, chosen in enumerate(shards):
                if number in done:
                    continue
                if failures:  # stop submitting; the shards in flight still finish
                    return
                full = ranking.width == capacity
                yield Shard(
                    stage,
                    number,
                    tuple(chosen),
                    tuple(paths[p] for p in chosen),
                    ranking.scores[:, -1].clone() if full else None,
                )

        decoder = Decoder(
            self.model.preprocessing.input_size,
            batch_size,
            0 if self.engine.remote else self.workers,
        )
        bar = progress_bar(
            len(positions),
            f"mining stage {stage}",
            initial=sum(done.values()),
            unit="img",
            desc=f"stage {stage}",
            disable=not self.progress,
            smoothing=0.1,
        )
        last_snapshot = time.monotonic()
        try:
            for outcome in self.engine.run(jobs(), scorer, decoder, ShardFailure):
                if isinstance(outcome, ShardFailure):
                    failures.append(outcome)
                    continue
                new = ranking.merge(outcome.scores, outcome.ids, outcome.payload)
                self.index.record_shard(
                    self.key,
                    keys,
                    stage,
                    outcome.number,
                    outcome.images,
                    outcome.unreadable,
                    ranking.changes(new),
                )
                done[outcome.number] = outcome.images
                if stage == 1:
                    self.scanned += outcome.images
                    self.unreadable += outcome.unreadable
                    room = UNREADABLE_NAMED - len(self.unreadable_positions)
                    self.unreadable_positions += list(outcome.unreadable_positions[:room])
                bar.update(outcome.images)
                if time.monotonic() - last_snapshot >= self.checkpoint_seconds:
                    self.index.save_pass(self.key, keys, stage, ranking.state())
                    last_snapshot = time.monotonic()
        finally:
            bar.close()
        if failures:
            numbers = ", ".join(str(f.shard.number) for f in failures)
            raise VitalError(
                f"stage {stage} shard(s) {numbers} failed ({failures[0].error}); the "
                f"{len(done)} finished shard(s) are saved in {self.index.path}: run the same "
                "command again to retry the rest."
            )
        return ranking

    def _whole_images(self, candidates: dict, reference_count: int) -> list[list[tuple]]:
        """Without stage 2: each unit's first ``reference_count`` stage-1 images (by maximum)."""
        crop = self.model.preprocessing.input_size
        rows = []
        for u in range(len(self.units)):
            scores = candidates["scores"][u][:reference_count]
            ids = candidates["ids"][u][:reference_count]
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

    def _stage2(
        self, candidates: dict, patches: Patches, reference_count: int, saved: PassState | None
    ) -> list[list[tuple]]:
        """Best patch of every candidate image; returns each unit's ranked rows."""
        candidate_ids = torch.where(
            torch.isfinite(candidates["scores"]), candidates["ids"].long(), torch.tensor(-1)
        )
        sorted_ids, order = candidate_ids.sort(dim=1)
        sorted_scores = candidates["scores"].gather(1, order)
        union = [int(p) for p in torch.unique(candidate_ids) if p >= 0]
        scorer = self._scorer(reference_count, patches=patches, members=sorted_ids)
        ranking = self._stage(
            2,
            union,
            scorer,
            max(1, self.shard_size // len(patches)),
            max(1, self.batch_size // len(patches)),
            saved,
        )
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
                        float(ranking.scores[u][keep][rank]),
                        float(image_scores[rank]),
                        *patches.box(int(ranking.payload[u][keep][rank])),
                        patches.crop,
                    )
                    for rank in range(len(ids))
                ]
            )
        return rows
