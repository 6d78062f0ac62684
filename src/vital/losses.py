"""Sort matching and image priors: pure functions on tensors (METHOD.md section 1).

Every function returns one value per image, shape (B,), so that a batch of targets is a batch of
independent problems: summing the per-image losses gives each image exactly the gradient it would
get alone. :func:`sort_targets_ahead` finds each position's target on a worker thread, for a
caller that can start it before it needs it.
"""

from __future__ import annotations

import functools
import itertools
import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

# Rows up to this length fit their positions into the low half of a packed 64-bit sort key.
_PACKABLE_LENGTH = 2**32
# Rows are ordered a chunk of about this many values at a time, so that the temporaries (the
# order-preserving integers, the tie masks) stay small; as fast as one pass over the tap.
_CHUNK_VALUES = 65536
# Rows at least this long leave their minimum's ties out of the sort when these are at least
# an eighth of the row (ReLU's zeros, dead channels): a quarter off the sort of MobileNetV2's
# stem and ResNet-50's layer1; shorter rows gained nothing measurable.
_LONG_ROW = 2048
_TIES_WORTH_SKIPPING = 8
_SAMPLE_STRIDE = 16


def rank_order(values: torch.Tensor) -> torch.Tensor:
    """Ascending order of the last axis, ties in position order (``-0.0`` before ``0.0``).

    The order of ``values.argsort(dim=-1, stable=True)``, except that ``-0.0`` sorts before
    ``0.0``. torch's CPU argsort is the dearest step of a CPU sort-matching loss (about 15 ms for
    the 32 × 12,544 stem features of MobileNetV2 on one core). For float32 on the CPU the order
    comes instead from value sorts of packed 64-bit keys (the float's order-preserving integer in
    the high half, its position in the low half) in numpy, whose vectorised sort is about three
    times faster; other dtypes and devices use ``argsort`` (ties in any order).

    A long row whose minimum is shared by many values sorts only the others: ReLU features are
    a third to two thirds exact zeros, which come first in position order whatever the rest
    is, and a dead channel is all ties. The order is the same; the sort is shorter.
    """
    length = values.shape[-1]
    if not _sorted_by_numpy(values):
        return values.argsort(dim=-1)
    bits = np.ascontiguousarray(values.detach().numpy()).reshape(-1, length).view(np.int32)
    keys = np.empty(bits.shape, dtype=np.int64)
    positions = np.arange(length, dtype=np.int64)
    rows = max(1, _CHUNK_VALUES // length)
    for start in range(0, len(bits), rows):
        _sort_keys(bits[start : start + rows], keys[start : start + rows], positions)
    keys &= 0xFFFFFFFF
    return torch.from_numpy(keys).view(values.shape)


def _sorted_by_numpy(values: torch.Tensor) -> bool:
    return (
        values.device.type == "cpu"
        and values.dtype == torch.float32
        and values.shape[-1] < _PACKABLE_LENGTH
        and values.numel() > 0
    )


@functools.cache
def _sorter() -> ThreadPoolExecutor:
    # One worker: the orders of a step's taps come one after another, the earliest tap first.
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="vital-sort")


# Workers that sort a share of a tap's rows beside the caller. One, as for the sorts started
# during the forward pass: a process given one torch thread is often one of many such processes
# (OMP_NUM_THREADS=1 each), and a worker for every core in each would oversubscribe them all.
_SHARE_WORKERS = 1


@functools.cache
def _sharers() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_SHARE_WORKERS, thread_name_prefix="vital-share")


def _new_workers_in_a_child() -> None:
    _sorter.cache_clear()
    _sharers.cache_clear()


# A forked child has the parent's executors without their threads: work sent to them would
# wait forever. The child makes its own.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_workers_in_a_child)


@functools.cache
def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):  # the cores this process may use, not the machine's
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def core_free() -> bool:
    """Whether torch's threads leave this process a core for :func:`sort_targets_ahead`'s worker."""
    return torch.get_num_threads() < _cores()


def sort_targets(
    values: torch.Tensor, prototype: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Each position's target in sort matching: the prototype's value at the position's rank.

    Parameters
    ----------
    values
        (B, C, P) features.
    prototype
        (C, P) or (B, C, P) sorted prototypes.
    out
        Where to write the targets (a (B, C, P) tensor or view); a new tensor if not given.

    Returns
    -------
    torch.Tensor
        (B, C, P), in the positions' order: ``mean((values − targets)²)`` is the sort-matching
        loss, and its gradient is the sorted form's exactly (:func:`sort_matching_loss`).
    """
    order = rank_order(values)
    source = prototype.detach().to(values.device).expand(values.shape)
    if out is None:
        out = torch.empty(values.shape, dtype=prototype.dtype, device=values.device)
    if not _sorted_by_numpy(values):
        return out.scatter_(-1, order, source)
    _place(order, source, out)
    return out


def _place(order: torch.Tensor, source: torch.Tensor, out: torch.Tensor) -> None:
    """``out.scatter_(-1, order, source)`` in numpy, on CPU tensors; ``order`` is used up.

    The workers of :func:`sort_targets_ahead` and :func:`sort_targets_shared` call this: a
    parallel torch op there would start an OpenMP team of torch's thread count for each
    worker, whose waiting threads took a core from the main thread's passes (a bare pass of
    MobileNetV2 with torch on both cores ran 2× slower after a run that did).
    """
    length = order.shape[-1]
    positions = order.numpy().reshape(-1, length)
    positions += np.arange(0, positions.size, length, dtype=np.int64)[:, None]
    values = np.ascontiguousarray(source.numpy()).reshape(-1)
    target = out.numpy()
    if target.flags.c_contiguous:
        target.reshape(-1)[positions.reshape(-1)] = values
        return
    placed = np.empty(positions.size, dtype=target.dtype)
    placed[positions.reshape(-1)] = values
    target[...] = placed.reshape(target.shape)


# Below this many values a share is not worth handing to another thread.
_SHARE_VALUES = 8192


def sort_targets_shared(values: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor | None:
    """:func:`sort_targets` with the rows shared between this thread and a worker.

    For a caller whose torch work waits on the sorts (a loss after the forward or the relevance
    pass): numpy's sort runs on one thread, so a worker on a core that torch's threads leave
    free sorts a share of the rows while this thread sorts the other (each row is sorted on its
    own: the result is :func:`sort_targets`'s exactly). ``None`` where only this thread would
    sort (no core free, a small tensor, or a sort that numpy does not do): the loss's own sorted
    form is then as fast. With torch's threads on every core, a share sent to a worker gained
    nothing (benchmarks/RESULTS.md, "Step cost: the collector, the targets on the worker, and
    the neuron step's floor"), so none is sent there.
    """
    if not _sorted_by_numpy(values) or values.dim() < 2:
        return None
    rows = values.shape[-2]
    free = max(0, _cores() - torch.get_num_threads())
    shares = min(1 + min(free, _SHARE_WORKERS), rows, values.numel() // _SHARE_VALUES)
    if shares < 2:
        return None
    values = values.detach()
    out = torch.empty(values.shape, dtype=prototype.dtype, device=values.device)
    source = prototype.detach().expand(values.shape)
    bounds = [round(rows * share / shares) for share in range(shares + 1)]
    spans = [slice(low, high) for low, high in itertools.pairwise(bounds)]
    futures = [
        _sharers().submit(sort_targets, values[..., at, :], source[..., at, :], out[..., at, :])
        for at in spans[1:]
    ]
    at = spans[0]
    sort_targets(values[..., at, :], source[..., at, :], out[..., at, :])
    for future in futures:
        future.result()
    return out


def sort_targets_ahead(
    values: torch.Tensor, prototype: torch.Tensor
) -> Future[torch.Tensor] | None:
    """Start :func:`sort_targets` on a worker thread; ``None`` where that gains nothing.

    numpy's sort and its placing of the targets let go of the interpreter, so an early tap's
    targets are found on a core that torch leaves idle while the forward pass goes on to the
    later taps; the loss then takes them instead of sorting, gathering and (in its backward
    pass) scattering. Only the numpy sort's inputs are started ahead (a GPU's sort is queued on the
    device anyway), and only while torch's threads leave a core free: where they use every
    core the worker competes with them (`vital demo` on 2 cores with 2 threads: 8 % slower).
    ``values`` must not be written to until the targets are taken: callers check the tensor's
    version (:attr:`torch.Tensor._version`) and sort again if it changed.
    """
    if not _sorted_by_numpy(values) or not core_free():
        return None
    return _sorter().submit(sort_targets, values.detach(), prototype.detach())


def _sort_keys(bits: np.ndarray, keys: np.ndarray, positions: np.ndarray) -> None:
    """Write the sorted packed keys of the float32 rows ``bits`` (as int32) into ``keys``."""
    # Negative floats order in reverse as integers: flip their magnitude bits.
    ordered = bits >> 31
    ordered &= 0x7FFFFFFF
    ordered ^= bits
    keys[...] = ordered
    keys <<= 32
    keys |= positions
    length = len(positions)
    if length < _LONG_ROW:
        keys.sort(axis=-1)
        return
    # Which rows are worth it is judged on every 16th value, so that signed rows (no ties) pay
    # almost nothing for the question (a full count cost them about 5 % of their sort).
    minimum = ordered.min(axis=1, keepdims=True)
    sampled = np.count_nonzero(ordered[:, ::_SAMPLE_STRIDE] == minimum, axis=1)
    shorter = sampled * _SAMPLE_STRIDE * _TIES_WORTH_SKIPPING >= length
    if not shorter.any():
        keys.sort(axis=-1)
        return
    for row, values, lowest, skip in zip(keys, ordered, minimum, shorter, strict=True):
        if not skip:
            row.sort()
            continue
        at_minimum = values == lowest
        count = np.count_nonzero(at_minimum)
        if count < length:  # else a constant row: its keys are in position order already
            # The minimum's keys differ by position only, so they are in order as they stand.
            rest = row[~at_minimum]
            rest.sort()
            row[:count] = row[at_minimum]
            row[count:] = rest


def sorted_prototype(features: torch.Tensor) -> torch.Tensor:
    """Mean quantile function of reference features.

    Parameters
    ----------
    features
        (N, C, P) features of N reference images.

    Returns
    -------
    torch.Tensor
        (C, P): for each channel, the ascending-sorted values averaged over the N references.
    """
    if features.dim() != 3:
        raise ValueError(f"expected (N, C, P) features, got shape {tuple(features.shape)}")
    return features.sort(dim=-1).values.mean(dim=0)


def sort_matching_loss(
    features: torch.Tensor,
    prototype: torch.Tensor,
    importance: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared 1-D Wasserstein-2 distance per channel between features and prototype.

    Each position's target is the prototype value at the position's rank within its channel;
    ranks are constants, so gradients flow only through the feature values.

    Parameters
    ----------
    features
        (B, C, P) synthetic features.
    prototype
        (C, P) or (B, C, P) sorted prototypes (one per image when targets differ).
    importance
        Optional weights broadcastable to (B, C, 1) multiplying the squared errors
        (channel importance for inner neurons).
    targets
        ``sort_targets(features, prototype)`` where they were found already
        (:func:`sort_targets_ahead`): the loss is then taken in the positions' order, with the
        same gradient to the last bit and the same value up to the summation's rounding.

    Returns
    -------
    torch.Tensor
        (B,) mean squared error over (C, P) per image.
    """
    if features.shape[-2:] != prototype.shape[-2:]:
        raise ValueError(
            f"features {tuple(features.shape)} and prototype {tuple(prototype.shape)} differ in "
            "(C, P): synthetic and reference images must have the same resolution"
        )
    if importance is not None and importance.shape[-1] != 1:
        raise ValueError(
            f"importance weighs whole channels: its last axis must be 1, not "
            f"{tuple(importance.shape)}"
        )
    if targets is not None:
        if targets.shape != features.shape:
            raise ValueError(
                f"targets {tuple(targets.shape)} are not of features {tuple(features.shape)}"
            )
        return _PositionMatching.apply(features, targets.detach(), importance)
    return _SortMatching.apply(features, prototype.detach(), importance)


class _SortMatching(torch.autograd.Function):
    """:func:`sort_matching_loss` computed in sorted order, with its gradient written by hand.

    ``mean(w · (f − prototype[rank(f)])²)`` equals ``mean(w · (sort(f) − prototype)²)`` when
    ``w`` is constant along positions, so the forward pass gathers the sorted features and
    never builds the (B, C, P) target in position order; the backward pass scatters
    ``2 w (sort(f) − prototype) / (C·P)`` back to the positions the ranks came from. This is
    the autograd graph of the direct form with the passes it does not need left out (the
    target's scatter, the square's and the difference's backward): a few percent of a step.
    """

    @staticmethod
    def forward(ctx, features, prototype, importance):  # noqa: D102 - see the class
        order = rank_order(features)
        residual = features.gather(-1, order).sub_(prototype)
        weighted = residual * importance if importance is not None else residual
        count = features[0].numel()
        ctx.save_for_backward(order, weighted)
        ctx.count = count
        return (residual * weighted).flatten(1).sum(dim=1) / count

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - see the class
        order, weighted = ctx.saved_tensors
        scaled = weighted * (grad * (2.0 / ctx.count)).view(-1, *[1] * (weighted.dim() - 1))
        return torch.empty_like(scaled).scatter_(-1, order, scaled), None, None


class _PositionMatching(torch.autograd.Function):
    """:func:`sort_matching_loss` against targets already in the positions' order.

    The same residuals as :class:`_SortMatching`'s, each at its own position instead of its
    rank: the gradient is the scatter of that class's, element for element, and needs none.
    """

    @staticmethod
    def forward(ctx, features, targets, importance):  # noqa: D102 - see the class
        residual = features - targets
        weighted = residual * importance if importance is not None else residual
        count = features[0].numel()
        ctx.save_for_backward(weighted)
        ctx.count = count
        return (residual * weighted).flatten(1).sum(dim=1) / count

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - see the class
        (weighted,) = ctx.saved_tensors
        scale = (grad * (2.0 / ctx.count)).view(-1, *[1] * (weighted.dim() - 1))
        return weighted * scale, None, None


def _difference_images(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (
        x[..., :, :-1] - x[..., :, 1:],
        x[..., :-1, :] - x[..., 1:, :],
        x[..., 1:, :-1] - x[..., :-1, 1:],
        x[..., :-1, :-1] - x[..., 1:, 1:],
    )


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    """Sum of the Frobenius norms of the four difference images, per image: (B,)."""
    return sum(d.flatten(1).norm(dim=1) for d in _difference_images(x))


def tv_l1(x: torch.Tensor) -> torch.Tensor:
    """Sum of the mean absolute values of the four difference images, per image: (B,)."""
    return sum(d.abs().flatten(1).mean(dim=1) for d in _difference_images(x))


def l2(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each image: (B,)."""
    return x.flatten(1).norm(dim=1)
