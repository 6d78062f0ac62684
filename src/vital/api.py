"""The library's front door: visualise targets of a model and get (and store) the results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vital.driver import SettingsOverrides, run_setting
from vital.errors import VitalError, check_count, plain
from vital.methods import DEFAULT_METHOD, get_method
from vital.methods.vital_class import class_references
from vital.optimize import DEFAULT_SETTING
from vital.store import Result, ResultSink
from vital.targets import Target, class_target, resolve_targets
from vital.zoo import Model, as_model, frozen


@torch.no_grad()
def classify(model: Model, images: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities of normalised images (B, 3, H, W)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise VitalError(f"classify takes normalised images as a (B, 3, H, W) tensor, not {shape}.")
    if not images.is_floating_point():  # uint8 pixels would fail inside the first convolution
        raise VitalError(
            f"classify takes normalised float images, not {images.dtype}; convert with "
            "model.preprocessing.normalize(images.float() / 255)."
        )
    model = as_model(model)
    return model.module(images.to(model.device, model.dtype)).softmax(dim=-1)


def visualize(
    model: Model | nn.Module | str,
    targets: Sequence[Target | int | str] | Target | int | str,
    references: Any = None,
    *,
    method: str = DEFAULT_METHOD,
    setting: int | str | None = DEFAULT_SETTING,
    settings: SettingsOverrides = None,
    seeds: Sequence[int] | None = None,
    out: str | Path | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_result: Callable[[Result], None] | None = None,
    force: bool = False,
    **options: Any,
) -> list[Result]:
    """Visualise classes, inner channels or concept directions of ``model``.

    Parameters
    ----------
    model
        A model name (``"mobilenet_v2"``), a :class:`vital.Model`, or any ``nn.Module``
        classifier taking normalised images (ImageNet's mean and std assumed; wrap it in a
        :class:`vital.Model` to say otherwise). A plain module is handed back in the training
        mode and with the ``requires_grad`` it came with.
    targets
        Classes by index, name, WordNet id or :class:`ClassTarget`, or :class:`Channel` /
        :class:`Direction` targets (one kind per call); optimised together in batches.
    references
        Real images the targets respond to (VITAL). Classes: ``None`` for the embedded photos,
        a folder (ImageNet-style tree, class sub-folders, or one class's images), a
        :class:`ReferenceSet`, or a mapping target → set. Channels and directions: a folder,
        a set, a mapping, or ``None`` for the embedded photos. Baselines take none.
    method
        ``"vital"`` (default), or a baseline to compare with: ``"fourier"``, ``"maco"``,
        ``"deepinversion"`` (:mod:`vital.methods`).
    setting
        A named setting of the method: VITAL's ``"fast"`` (the default: the authors' loss in
        300 steps through a Fourier parametrisation) or the authors' own 0, 1 (2000 steps) and
        2. The baselines run their published defaults (the default name stands for them). The
        record's ``settings`` say what ran.
    settings
        Changes to the method's defaults for this model, as a mapping of
        :class:`~vital.optimize.Settings` fields (``{"steps": 300, "seed": 1}``), or a complete
        :class:`~vital.optimize.Settings` to use as it is (then the model's preset priors are
        not added).
    seeds
        One seed per target; default ``settings.seed + i`` for the ``i``-th target.
    out
        Folder for PNG + JSON records; nothing is written when ``None``.
    batch_size
        Targets optimised together.
    device
        ``"cpu"`` or ``"cuda"``; default: where the model is.
    progress
        Show progress bars.
    on_result
        Called with each result as soon as it is finished.
    force
        Compute every picture again. By default a batch whose pictures are all in ``out``
        already, made with exactly the same inputs (model weights, target, settings with the
        seed, references, method options), is read back instead (``result.stored``): an
        interrupted call, made again, goes on where it stopped.
    **options
        The method's own options. VITAL: ``taps`` (``["layer1=1", ...]``),
        ``reference_count`` (N, 50), ``reference_seed``, ``cache_dir``; for channels and
        directions also ``relevance`` (``"lrp"`` …), ``patch_side`` (``"auto"``: patches the
        size of the unit's receptive field; 32 or 64: the best patch of each reference image
        at that side; 0: whole images) and ``rank``. Baselines: their fields (e.g. MaCo's
        ``spectrum_source``).

    Returns
    -------
    list of Result
        One per target, in order; ``result.record`` (:class:`vital.record.Record`) says what
        ran and how the picture scores (``evaluation``).
    """
    batch_size, force, progress = plain(batch_size), plain(force), plain(progress)
    batch_size = check_count(batch_size, "batch_size")  # before ``out`` is made
    for name, flag in (("force", force), ("progress", progress)):
        if not isinstance(flag, bool):  # "no" would be taken as true
            raise VitalError(f"{name} is True or False, not {flag!r}.")
    if on_result is not None and not callable(on_result):  # said now, not after the run
        raise VitalError(f"on_result is a function of one Result (or None), not {on_result!r}.")
    with frozen(model):
        model = as_model(model, device)
        resolved = resolve_targets(model, targets)
        chosen = get_method(method, resolved, **options)
        return run_setting(
            chosen,
            model,
            resolved,
            references,
            setting=setting,
            overrides=settings,
            seeds=seeds,
            batch_size=batch_size,
            sink=ResultSink(out, on_result, reuse=not force),
            progress=progress,
        )


__all__ = ["class_references", "class_target", "classify", "visualize"]
