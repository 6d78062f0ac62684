"""Metrics of visualisations: plain functions over images (pixels in [0, 1]) and models.

Images are (N, 3, H, W) tensors of pixels in [0, 1]; each function normalises and resizes them
for the model it uses, so one set of images can be scored by models with different
preprocessing. Features come from the input of the model's final ``nn.Linear`` (its pooled
penultimate features) unless a layer is named, so no function knows any architecture.

- :func:`target_scores`, :func:`top_k_accuracy`: the explained model's (or a judge's)
  probability, rank and top-k hits for each image's target class (the paper's "Acc" is top-1).
- :func:`fid`: Fréchet distance between visualisations and real images in a chosen feature
  space (default: the explained model's penultimate features). Few images make it noisy and
  biased: the image counts are returned with it.
- :func:`realism`: per image, the cosine between its features and the mean features of real
  images of its class, beside the same against the other classes.
- :func:`clip_zero_shot`: CLIP top-1/top-5 when ``open_clip`` and local weights exist.
- :func:`target_activations`: each image's activation of its channel or direction target.
- :func:`evaluate`: what a record stores about a picture: class probability and rank, or the
  inner target's activation.
- :func:`relative_activation`: a channel's activation on images relative to its references.
- :func:`concentration`: the share of a transparency map's mass in its brightest quarter.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vital.errors import VitalError, first_forward
from vital.files import printable
from vital.relevance.seeds import target_activation
from vital.taps import check_layer, layers_command, tapped, to_positions
from vital.targets import Channel, ClassTarget, Direction, Target
from vital.zoo import Model


class MetricUnavailableError(VitalError):
    """A metric that cannot run here (a package or weights are missing); the message says why."""


def check_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Check a (N, 3, H, W) batch of pixels; raise a :class:`VitalError` otherwise."""
    if not isinstance(images, torch.Tensor):
        raise VitalError(f"{what} must be a (N, 3, H, W) tensor, got {type(images).__name__}.")
    if images.dim() != 4 or images.shape[1] != 3:
        raise VitalError(f"{what} must have shape (N, 3, H, W), got {tuple(images.shape)}.")
    if images.shape[0] == 0:
        raise VitalError(f"no {what} given: the set is empty.")
    return images


def _check_pairs(images: torch.Tensor, labels: Sequence[int], what: str) -> None:
    check_images(images, what)
    if len(labels) != images.shape[0]:
        raise VitalError(
            f"{images.shape[0]} {what} but {len(labels)} class labels: give one label per image."
        )


def model_input(model: Model, pixels: torch.Tensor) -> torch.Tensor:
    """Normalise pixels for ``model`` and resize them to its input size when they differ."""
    size = model.preprocessing.input_size
    x = pixels.to(model.device)
    if x.shape[-2:] != (size, size):
        # in float32: the antialiased filter has no float16 or bfloat16 kernel on the CPU
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
    return model.preprocessing.normalize(x.to(model.dtype))


def _chunks(images: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], size):
        yield images[start : start + size]


@torch.no_grad()
def probabilities(model: Model, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Softmax outputs of ``model`` for pixel images, (N, classes) on CPU."""
    check_images(images)
    outputs = [
        class_scores(model, model.module(model_input(model, chunk)))
        for chunk in _chunks(images, batch_size)
    ]
    return torch.cat(outputs).softmax(dim=-1).cpu()


@torch.no_grad()
def check_classifier(model: Model, largest_class: int) -> None:
    """Raise a :class:`VitalError` unless ``model`` gives a score to every class up to this one."""
    size = model.preprocessing.input_size
    with first_forward(size):
        output = model.module(model_input(model, torch.zeros(1, 3, size, size)))
    scores = class_scores(model, output)
    if not torch.isfinite(scores).all():
        # NaN compares false with every score: each picture's class would be recorded as
        # ranked first, with a probability of NaN
        raise VitalError(
            f"{model.name} gives class scores that are not finite (NaN or inf) on a plain "
            "image: check its weights for NaN or inf values, and that it runs in the dtype it "
            "was made for."
        )
    if largest_class >= scores.shape[1]:
        raise VitalError(
            f"class {largest_class} is not an output of {model.name}, which has "
            f"{scores.shape[1]} classes (0..{scores.shape[1] - 1})."
        )


def class_scores(model: Model, output: object) -> torch.Tensor:
    """The model's output checked to be one score per class, (N, classes)."""
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise VitalError(
            f"{model.name} returns {shape}, not one score per class (N, classes): class targets "
            "need a classifier. Visualise its channels instead (vital neuron --layer L)."
        )
    return output


def target_scores(
    model: Model, images: torch.Tensor, targets: Sequence[int], top: int = 5
) -> list[dict]:
    """Each image's target probability, rank (1 = top) and the ``top`` classes.

    Returns
    -------
    list of dict
        ``probability``, ``rank``, ``top5`` (``[index, name, probability]`` rows).
    """
    _check_pairs(images, targets, "images")
    scores = probabilities(model, images)
    name = model.labels.name if model.labels is not None else str
    rows = []
    for row, target in zip(scores, targets, strict=True):
        if not 0 <= target < row.shape[0]:
            raise VitalError(f"class {target} is not an output of {model.name}.")
        best = row.topk(min(top, row.shape[0])).indices.tolist()
        rows.append(
            {
                "probability": float(row[target]),
                "rank": int((row > row[target]).sum()) + 1,
                "top5": [[i, name(i), float(row[i])] for i in best],
            }
        )
    return rows


def top_k_accuracy(model: Model, images: torch.Tensor, targets: Sequence[int], k: int = 1) -> float:
    """Fraction of images whose target class is among ``model``'s top ``k``."""
    ranks = [row["rank"] for row in target_scores(model, images, targets)]
    return float(np.mean([rank <= k for rank in ranks]))


# --- features ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _final_linear_input(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the input of every ``nn.Linear`` that runs; the last one is the classifier's."""
    seen: list[torch.Tensor] = []

    def hook(_layer, inputs):
        seen.append(inputs[0])

    handles = [
        m.register_forward_pre_hook(hook) for m in module.modules() if isinstance(m, nn.Linear)
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def features(
    model: Model, images: torch.Tensor, layer: str | None = None, batch_size: int = 16
) -> torch.Tensor:
    """Pooled features of pixel images, (N, D) on CPU.

    Parameters
    ----------
    model
        Any model whose weights are local.
    images
        (N, 3, H, W) pixels.
    layer
        A module name: its output averaged over positions (or tokens). ``None``: the input of
        the model's final ``nn.Linear`` (the pooled penultimate features).
    """
    check_images(images)
    rows = []
    if layer is not None:
        check_layer(layer, model.module, model.zoo_name)
        with tapped(model.module, [layer], stop_early=True) as tap:
            for chunk in _chunks(images, batch_size):
                rows.append(tap(model_input(model, chunk))[layer].mean(dim=-1))
        return torch.cat(rows).float().cpu()
    with _final_linear_input(model.module) as seen:
        for chunk in _chunks(images, batch_size):
            seen.clear()
            model.module(model_input(model, chunk))
            if not seen:
                raise VitalError(
                    f"{model.name} has no nn.Linear classifier to read penultimate features "
                    f"from; name a feature layer instead (run {layers_command(model.zoo_name)})."
                )
            last = seen[-1]
            rows.append(last.flatten(1) if last.dim() == 2 else last.flatten(1, -2).mean(dim=1))
    return torch.cat(rows).float().cpu()


# --- Fréchet distance -------------------------------------------------------------------------


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(first: torch.Tensor | np.ndarray, second: torch.Tensor | np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½) between two (N, D) feature sets.

    Covariances are unbiased sample covariances, as in the usual FID code; the matrix square
    root uses symmetric eigen-decompositions, so rank-deficient covariances (fewer images
    than dimensions) are handled, though such FIDs are noisy and biased upwards.
    """
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    for name, x in (("first", a), ("second", b)):
        if x.ndim != 2:
            raise VitalError(f"the {name} feature set must be (N, D), got shape {x.shape}.")
        if x.shape[0] < 2:
            raise VitalError(
                f"the {name} feature set has {x.shape[0]} sample(s); a covariance needs at "
                "least 2 (FID needs many more to be meaningful)."
            )
    if a.shape[1] != b.shape[1]:
        raise VitalError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}.")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    value = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(value, 0.0))


@dataclass(frozen=True)
class FidResult:
    """A Fréchet distance with what it was computed from."""

    value: float
    images: int
    real_images: int
    dimensions: int
    feature_space: str

    def describe(self) -> str:
        """One line with the counts (FIDs from few images are noisy)."""
        return (
            f"FID {self.value:.2f} ({self.images} visualisations vs {self.real_images} real "
            f"images, {self.dimensions}-d {self.feature_space}"
            + ("; too few images for a stable FID" if self.images < self.dimensions else "")
            + ")"
        )


def fid(
    images: torch.Tensor,
    real_images: torch.Tensor,
    model: Model,
    layer: str | None = None,
) -> FidResult:
    """FID between visualisations and real images in ``model``'s feature space.

    Parameters
    ----------
    images, real_images
        (N, 3, H, W) pixels.
    model
        Whose features: the explained model by default in :mod:`vital.compare`, or
        Inception-v3 or any model with local weights.
    layer
        Feature layer (default: the penultimate features, see :func:`features`).
    """
    check_images(images, "visualisations")
    check_images(real_images, "real images")
    generated = features(model, images, layer)
    real = features(model, real_images, layer)
    space = f"{model.name} {layer or 'penultimate'} features"
    return FidResult(
        frechet_distance(generated, real),
        images.shape[0],
        real_images.shape[0],
        generated.shape[1],
        space,
    )


# --- realism ----------------------------------------------------------------------------------


def realism(
    judge: Model,
    images: torch.Tensor,
    labels: Sequence[int],
    real_images: torch.Tensor,
    real_labels: Sequence[int],
    layer: str | None = None,
) -> list[dict]:
    """Cosine similarity of each image's features to real images of its class and of others.

    Parameters
    ----------
    judge
        The model whose pooled features are compared (a second, independent model).
    images, labels
        Visualisations and their classes.
    real_images, real_labels
        Real images and their classes; every class in ``labels`` needs at least one.
    layer
        Feature layer (default: penultimate).

    Returns
    -------
    list of dict
        Per image: ``own`` (cosine to the mean feature of its class's real images),
        ``others`` (mean cosine to the other classes' means; ``None`` with one class) and
        ``margin`` (own − others).
    """
    _check_pairs(images, labels, "visualisations")
    _check_pairs(real_images, real_labels, "real images")
    missing = sorted(set(labels) - set(real_labels))
    if missing:
        raise VitalError(f"no real images of class(es) {missing}: realism needs some of each.")
    generated = F.normalize(features(judge, images, layer), dim=1)
    real = features(judge, real_images, layer)
    real_labels_tensor = torch.tensor(list(real_labels))
    classes = sorted(set(real_labels))
    means = F.normalize(
        torch.stack([real[real_labels_tensor == c].mean(dim=0) for c in classes]), dim=1
    )
    cosines = generated @ means.T
    rows = []
    for row, label in zip(cosines, labels, strict=True):
        own = float(row[classes.index(label)])
        others = [float(v) for c, v in zip(classes, row, strict=True) if c != label]
        other = float(np.mean(others)) if others else None
        rows.append({"own": own, "others": other, "margin": own - other if others else None})
    return rows


# --- CLIP -------------------------------------------------------------------------------------


def check_clip(weights: str | Path | None) -> None:
    """Raise :class:`MetricUnavailableError` when CLIP zero-shot cannot run, saying why.

    Callers that were given ``weights`` explicitly check this before any work: a metric asked
    for by name should not be skipped after the pictures were made.
    """
    if importlib.util.find_spec("open_clip") is None:
        raise MetricUnavailableError(
            "CLIP zero-shot needs open_clip, which is not installed (pip install "
            "open_clip_torch), and a local CLIP weights file."
        )
    if weights is None:
        raise MetricUnavailableError(
            "CLIP zero-shot needs a local CLIP weights file, and none was given (vital never "
            "downloads)."
        )
    if not Path(weights).is_file():
        raise MetricUnavailableError(
            f"CLIP zero-shot needs a local CLIP weights file, and {printable(weights)} does not "
            "exist (vital never downloads)."
        )


def clip_zero_shot(
    images: torch.Tensor,
    labels: Sequence[int],
    class_names: Sequence[str],
    weights: str | Path | None = None,
    architecture: str = "ViT-B-32",
) -> dict:
    """CLIP zero-shot top-1/top-5 over ``class_names`` ("a photo of a {name}").

    Needs ``open_clip`` and a local weights file; never downloads.

    Raises
    ------
    MetricUnavailableError
        When ``open_clip`` is not installed or no weights file is given.
    """
    _check_pairs(images, labels, "visualisations")
    check_clip(weights)
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        architecture, pretrained=str(weights)
    )
    tokenizer = open_clip.get_tokenizer(architecture)
    model.eval()
    mean = torch.tensor(preprocess.transforms[-1].mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    with torch.no_grad():
        text = model.encode_text(tokenizer([f"a photo of a {name}" for name in class_names]))
        x = F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True)
        vision = model.encode_image((x.clamp(0, 1) - mean) / std)
    scores = F.normalize(vision, dim=-1) @ F.normalize(text, dim=-1).T
    ranks = [int((row > row[label]).sum()) + 1 for row, label in zip(scores, labels, strict=True)]
    return {
        "top1": float(np.mean([r <= 1 for r in ranks])),
        "top5": float(np.mean([r <= 5 for r in ranks])),
        "images": len(ranks),
        "classes": len(class_names),
    }


# --- channels ---------------------------------------------------------------------------------


@torch.no_grad()
def target_activations(
    model: Model, images: torch.Tensor, targets: Sequence[Channel | Direction]
) -> list[float]:
    """Each image's activation of its target: the spatial mean of its channel (or projection).

    Image ``i`` is scored for ``targets[i]``; targets may lie in different layers.
    """
    check_images(images)
    if len(targets) != images.shape[0]:
        raise VitalError(f"{images.shape[0]} images but {len(targets)} targets.")
    layers = list(dict.fromkeys(t.layer for t in targets))
    with tapped(model.module, layers, stop_early=True) as tap:
        tap(model_input(model, images))
        values = []
        for i, target in enumerate(targets):
            output = tap.outputs[target.layer][i : i + 1]
            layout = tap.layout(target.layer)
            channels = (
                to_positions(output, layout).shape[1] if output.dim() > 2 else output.shape[1]
            )
            direction = torch.as_tensor(target.vector(channels)).to(output).view(1, -1)
            values.append(float(target_activation(output, direction, layout)[0]))
    return values


def evaluate(model: Model, images: torch.Tensor, targets: Sequence[Target]) -> list[dict]:
    """The scores a record keeps about each image.

    Class targets: the class's probability, rank and top 5; inner targets: the channel's or
    direction's activation.
    """
    if all(isinstance(t, ClassTarget) for t in targets):
        return target_scores(model, images, [t.index for t in targets])
    if any(isinstance(t, ClassTarget) for t in targets):
        raise VitalError("class and inner targets are evaluated in separate batches.")
    return [{"activation": a} for a in target_activations(model, images, targets)]


@torch.no_grad()
def relative_activation(
    model: Model,
    layer: str,
    channel: int,
    images: torch.Tensor,
    reference_images: torch.Tensor,
) -> list[float]:
    """Each image's mean activation of ``layer``'s ``channel`` divided by the references' mean.

    1.0 means the visualisation excites the channel as much as its references on average.
    """
    check_images(images, "visualisations")
    check_images(reference_images, "reference images")
    check_layer(layer, model.module, model.zoo_name)
    with tapped(model.module, [layer], stop_early=True) as tap:

        def mean_activation(pixels: torch.Tensor) -> torch.Tensor:
            values = tap(model_input(model, pixels))[layer]
            if not 0 <= channel < values.shape[1]:
                raise VitalError(f"{layer} has {values.shape[1]} channels; {channel} is not one.")
            return values[:, channel].mean(dim=-1).cpu()

        generated = mean_activation(images)
        reference = mean_activation(reference_images).mean()
    if abs(float(reference)) < 1e-12:
        raise VitalError(f"the references do not activate {layer} channel {channel} at all.")
    return (generated / reference).tolist()


def concentration(alpha: torch.Tensor, share: float = 0.25) -> float:
    """The share of a map's mass held by its brightest ``share`` of pixels.

    A flat map gives ``share`` (0.25 by default); a map whose mass sits in one quarter of the
    image, 1. Used for transparency maps: a high value means the picture's evidence for its
    unit is in one place.
    """
    values = torch.as_tensor(alpha).flatten().float().sort(descending=True).values
    total = float(values.sum())
    if total <= 0:
        return 0.0
    return float(values[: max(1, round(values.numel() * share))].sum()) / total
