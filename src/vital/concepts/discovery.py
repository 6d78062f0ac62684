"""Finding concepts: a layer's activations over many crops, factorised into non-negative parts.

As in CRAFT (Fel et al., CVPR 2023): every crop's activations at the layer are averaged over
positions, and the (crops × channels) matrix is factorised by non-negative matrix factorisation
(scikit-learn's :class:`~sklearn.decomposition.NMF`, Frobenius loss, ``nndsvda`` start). A
concept is one row of the factorisation's basis: a non-negative direction in the layer's channel
space, scaled to unit length. How much of a concept a crop (or one position of an image) holds
is its *coefficient*: the non-negative least-squares fit of the activations on the fixed basis
(:meth:`ConceptBasis.coefficients`), the same fit for crops, positions and pictures.

A layer with signed outputs (a linear bottleneck, a transformer's residual stream) is split into
its positive and negative parts, ``[max(A, 0), max(-A, 0)]``, so that its 2C features are
non-negative; a concept then has a direction over the 2C features, and its direction in the
layer's own channel space is the positive half minus the negative half.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls

from vital.errors import VitalError
from vital.optimize import check_seed
from vital.taps import tapped, to_positions
from vital.zoo import Model

DEFAULT_COUNT = 10
NMF_ITERATIONS = 1000


@torch.no_grad()
def layer_features(
    model: Model,
    layer: str,
    pixels: torch.Tensor,
    batch_size: int = 32,
    on_batch: Callable[[int], None] = lambda count: None,
) -> torch.Tensor:
    """(N, C, P) a layer's outputs on images in [0, 1], channels first (tokens: (N, D, T)).

    ``on_batch`` hears how many images each batch held, as it finishes (a progress bar).
    """
    values = []
    with tapped(model.module, [layer], stop_early=True) as tap:
        for chunk in pixels.split(batch_size):
            tap(model.preprocessing.normalize(chunk.to(model.device, model.dtype)))
            output = tap.outputs[layer]
            if output.dim() not in (3, 4):
                raise VitalError(
                    f"layer {layer!r} has output shape {tuple(output.shape)}; concepts need a "
                    "layer with positions ((C, H, W) maps or (T, D) tokens)."
                )
            values.append(to_positions(output, tap.layout(layer)).float().cpu())
            on_batch(len(chunk))
    return torch.cat(values)


def split_sign(features: torch.Tensor, signed: bool) -> torch.Tensor:
    """(..., C, P) → non-negative (..., 2C, P) parts of a signed layer; itself otherwise."""
    if not signed:
        return features.clamp_min(0)
    return torch.cat([features.clamp_min(0), (-features).clamp_min(0)], dim=-2)


@dataclass(frozen=True)
class ConceptBasis:
    """K concepts of a layer.

    Attributes
    ----------
    layer
        The layer's module name.
    directions
        (K, F) non-negative unit rows over the layer's features (F = C, or 2C when signed).
    signed
        Whether the layer's outputs take negative values (features split by sign).
    """

    layer: str
    directions: np.ndarray
    signed: bool

    @property
    def count(self) -> int:
        """K, the number of concepts."""
        return self.directions.shape[0]

    @property
    def channels(self) -> int:
        """C, the layer's channels."""
        return self.directions.shape[1] // (2 if self.signed else 1)

    def features(self, activations: torch.Tensor) -> torch.Tensor:
        """(..., C, P) layer outputs → the non-negative (..., F, P) features concepts live in."""
        return split_sign(activations, self.signed)

    def direction(self, index: int) -> np.ndarray:
        """(C,) concept ``index`` in the layer's own channel space (positive − negative half)."""
        row = self.directions[index]
        return row[: self.channels] - row[self.channels :] if self.signed else row.copy()

    def coefficients(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N, K) non-negative least-squares coefficients of (N, F) feature vectors."""
        rows = np.asarray(features, dtype=np.float64)
        basis = self.directions.T.astype(np.float64)
        return (
            np.stack([nnls(basis, row)[0] for row in rows])
            if len(rows)
            else np.zeros((0, self.count))
        )

    def position_coefficients(self, activation: torch.Tensor) -> np.ndarray:
        """(K, P) coefficients at every position of one (C, P) layer output."""
        return self.coefficients(self.features(activation).T).T

    def reconstruction(self, coefficients: np.ndarray, concepts=None) -> np.ndarray:
        """(F, P) Σ_k W_k H_k over ``concepts`` (default all) for (K, P) coefficients."""
        chosen = list(range(self.count)) if concepts is None else list(concepts)
        return self.directions[chosen].T @ coefficients[chosen]

    def to_activation(self, features: np.ndarray) -> np.ndarray:
        """(F, P) features → (C, P) layer output (positive part minus negative part)."""
        return features[: self.channels] - features[self.channels :] if self.signed else features


def check_concept_count(count: int, crops: int) -> None:
    """Refuse a number of concepts that ``crops`` crops cannot give (before any work)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise VitalError(f"the number of concepts (count=K) is at least 1, not {count!r}.")
    if count > crops:
        raise VitalError(
            f"{count} concepts cannot be found in {crops} crops; ask for fewer (count=K) or "
            "more crops (crops=N)."
        )


def nmf_seed(seed: int) -> int:
    """The seed scikit-learn's NMF is given for vital's ``seed`` (it takes 0 … 2**32 - 1).

    A seed below 2**32 is NMF's as it is, so results (and the keys of stored concept sets)
    stay those of earlier versions; a larger one is hashed into 32 bits by numpy's
    ``SeedSequence``, the same number on every machine.
    """
    if seed < 2**32:
        return seed
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def discover(
    features: torch.Tensor, layer: str, count: int = DEFAULT_COUNT, seed: int = 0
) -> ConceptBasis:
    """Factorise crops' position-averaged activations into ``count`` concepts.

    Parameters
    ----------
    features
        (N, C, P) the layer's outputs on N crops.
    layer
        The layer's name (kept in the basis).
    count
        K, the number of concepts.
    seed
        Seed of the factorisation (0 … 2**63 - 1, as every seed of vital's; see
        :func:`nmf_seed`).
    """
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    seed = check_seed(seed)
    check_concept_count(count, features.shape[0])
    signed = bool((features < 0).any())
    matrix = split_sign(features, signed).mean(dim=-1).double().numpy()
    if not matrix.any():
        raise VitalError(
            f"layer {layer!r} is zero on every crop; choose another layer or other images."
        )
    used = matrix.any(axis=0)  # features that never fire stay out of NMF's initialisation
    if count > int(used.sum()):
        # NMF's start (nndsvda) takes at most as many concepts as features; said in vital's
        # words instead of scikit-learn's
        kind = (
            f"features (its {matrix.shape[1] // 2} channels split by sign)"
            if signed
            else "channels"
        )
        raise VitalError(
            f"{count} concepts cannot be found at {layer!r}: only {int(used.sum())} of its "
            f"{matrix.shape[1]} {kind} are ever above zero on these crops; ask for at most "
            f"{int(used.sum())} (count=K), or choose a layer with more channels."
        )
    nmf = NMF(count, init="nndsvda", max_iter=NMF_ITERATIONS, random_state=nmf_seed(seed))
    with warnings.catch_warnings():  # a concept basis is usable before full convergence
        warnings.simplefilter("ignore", ConvergenceWarning)
        nmf.fit(matrix[:, used])
    directions = np.zeros((count, matrix.shape[1]))
    directions[:, used] = nmf.components_
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    keep = norms[:, 0] > 0
    if not keep.any():
        raise VitalError(f"no concept could be found at {layer!r}; try other images or a layer.")
    directions = directions[keep] / norms[keep]
    return ConceptBasis(layer, directions, signed)
