"""How much memory a picture's step needs at a large resolution, and how much is free.

A step's memory grows with the square of the picture's side: MobileNetV2's graph for one
2048 px picture is about 6 GB, so the default batch of 8 would need about 50 GB. Above the usual
input side the driver asks :func:`pictures_at_once` how many pictures fit, instead of letting the
operating system kill the process halfway through a run.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch

from vital.errors import VitalError, warn_at_caller
from vital.optimize import MAX_RESOLUTION
from vital.zoo import Model

# Up to this side every batch is taken as asked: the usual input side, where a batch of 8
# MobileNetV2 pictures needs well under 1 GB.
CHECKED_ABOVE = 224

# A run's peak holds more than the model's forward graph: the objective's taps, sorts and
# gradients, and for inner units the relevance pass beside the forward graph, in the steps and
# in the references' passes (one view per pass at least). Measured at 512 px
# (benchmarks/peak_memory.py: the process's peak above the loaded model over the probed graph;
# RESULTS "Memory at large resolutions" and "The step's memory on four architectures"):
# classes 1.15 (MobileNetV2), 1.37 (EfficientNet-Lite0), 1.71 (ResNet-50), 2.1-2.2 (ConvNeXt-T);
# inner units 2.5, 3.0 and 4.5 (the first three). A batch is sized by its kind's largest share,
# with a margin.
STEP_SHARES = {"class": 2.5, "unit": 5.0}

# The side a probe pass runs at; the graph is scaled from it by the square of the side.
PROBE_SIDE = 128


def free_bytes(device: torch.device) -> int | None:
    """Memory free for a new allocation on ``device`` (None where it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def graph_bytes(model: Model, side: int) -> int:
    """Bytes autograd keeps for one (1, 3, side, side) image's forward, weights excluded."""
    weights = {
        tensor.untyped_storage().data_ptr()
        for tensor in [*model.module.parameters(), *model.module.buffers()]
    }
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    image = torch.zeros(1, 3, side, side, device=model.device, dtype=model.dtype)
    image.requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.module(image)
    return sum(kept.values())


# Per module, (resolution, device, dtype) → its picture's graph: an atlas runs every unit
# through the driver, the probe runs once per model and side.
_PICTURE_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def picture_bytes(model: Model, resolution: int) -> int:
    """The forward graph of one ``resolution`` px picture, from a probe at a smaller side.

    A model that takes only its own input size (a ViT) is probed at ``resolution`` itself.
    """
    known = _PICTURE_BYTES.setdefault(model.module, {})
    key = (resolution, str(model.device), model.dtype)
    if key not in known:
        known[key] = _probed_picture_bytes(model, resolution)
    return known[key]


def _probed_picture_bytes(model: Model, resolution: int) -> int:
    side = min(resolution, PROBE_SIDE)
    try:
        return graph_bytes(model, side) * resolution**2 // side**2
    except (AssertionError, RuntimeError, ValueError):
        if side == resolution:
            raise
        return graph_bytes(model, resolution)


def pictures_at_once(model: Model, resolution: int, batch_size: int, kind: str = "unit") -> int:
    """How many ``resolution`` px pictures to optimise at once: ``batch_size`` where they fit.

    Fewer (with a warning that says so) where the free memory holds fewer. Refused where even
    one picture's step (its kind's share of :data:`STEP_SHARES` times its forward graph:
    ``"class"``, or ``"unit"`` for inner units and concepts) is larger than the free memory.
    """
    if resolution <= CHECKED_ABOVE or batch_size < 1:
        return batch_size
    free = free_bytes(model.device)
    if free is None:
        return batch_size
    graph = picture_bytes(model, resolution)
    step = STEP_SHARES[kind] * graph
    if step > free:
        fitting = int(resolution * (free / step) ** 0.5) // 16 * 16
        raise VitalError(
            f"one {resolution}px picture needs about {_gigabytes(step)} for a step (the model's "
            f"graph and the objective's), and {_gigabytes(free)} are free on {model.device}; "
            f"give a smaller resolution=R (about {max(fitting, 16)} fits) or free some memory."
        )
    fits = int(free // step)
    if fits < batch_size:
        warn_at_caller(
            f"{batch_size} pictures of {resolution}px at once would need about "
            f"{_gigabytes(batch_size * step)} and {_gigabytes(free)} are free on "
            f"{model.device}: optimising {fits} at a time (batch_size={fits})."
        )
        return fits
    return batch_size


def check_fits(model: Model, overrides: dict | None, kind: str = "unit") -> None:
    """Refuse, before any mining or unit runs, a resolution at which no picture fits.

    For commands that run many units (``explain``, ``concepts``, ``atlas build``): each unit would
    be refused alike, after the work before it. ``overrides`` are the run's setting changes;
    ``kind`` is the pictures' (:func:`pictures_at_once`).
    """
    resolution = (overrides or {}).get("resolution")
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        if CHECKED_ABOVE < resolution <= MAX_RESOLUTION:  # else refused by the settings' check
            pictures_at_once(model, resolution, 1, kind)


def _gigabytes(count: float) -> str:
    """Bytes as GB, with the precision that keeps small amounts apart (0.08 GB, 1.5 GB)."""
    gigabytes = count / 2**30
    return f"{gigabytes:.1f} GB" if gigabytes >= 1 else f"{gigabytes:.2f} GB"
