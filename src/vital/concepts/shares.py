"""Each concept's share of a class's relevance at the layer, and the residual.

The class's relevance at the layer, R (C × P), comes from LRP started at the class logit
(:func:`vital.explanation.attributor`). Each feature value F[f, p] > 0 is reconstructed from
the concepts as Σ_k W[f, k] H[k, p]; concept k receives the relevance of every feature value
in proportion to the part of the *true* value it reconstructs:

    share_k = Σ_{f, p : F > 0} R[f, p] · W[f, k] H[k, p] / F[f, p]

and the residual is the layer's relevance minus the shares, so that shares + residual = the
layer's relevance exactly. Under LRP, R[f, p] / F[f, p] is the relevance per unit of
activation there, so a share is that rate applied to the concept's reconstruction: where the
head after the layer is linear (global pooling, then a linear classifier) it is the concept's
exact contribution to the logit. What the concepts reconstruct badly (or over-shoot) lands in
the residual, never silently in a concept. On a signed layer the relevance at a position goes to
the part (positive or negative) that carries the value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vital.concepts.discovery import ConceptBasis


@dataclass(frozen=True)
class ConceptShares:
    """Relevance of each concept in one or more images.

    Attributes
    ----------
    relevance
        (K,) each concept's relevance (same units as the layer's relevance: the logit's, for LRP).
    residual
        The layer's relevance that no concept carries.
    total
        The layer's relevance: ``relevance.sum() + residual``.
    """

    relevance: np.ndarray
    residual: float
    total: float

    @property
    def shares(self) -> np.ndarray:
        """(K,) relevance as a fraction of the layer's total (0 when the total is 0)."""
        return self.relevance / self.total if self.total else np.zeros_like(self.relevance)

    @property
    def explained(self) -> float:
        """The concepts' share together."""
        return float(self.shares.sum())

    def __add__(self, other: ConceptShares) -> ConceptShares:
        return ConceptShares(
            self.relevance + other.relevance,
            self.residual + other.residual,
            self.total + other.total,
        )


def split_relevance(
    relevance: torch.Tensor, activation: torch.Tensor, signed: bool
) -> torch.Tensor:
    """(C, P) relevance → (F, P): on a signed layer, to the part (+ or −) carrying each value."""
    if not signed:
        return relevance
    return torch.cat([relevance * (activation > 0), relevance * (activation < 0)])


def concept_shares(
    basis: ConceptBasis,
    activation: torch.Tensor,
    relevance: torch.Tensor,
    coefficients: np.ndarray | None = None,
) -> ConceptShares:
    """Distribute one image's relevance at the layer over the concepts (see the module).

    Parameters
    ----------
    basis
        The concepts.
    activation, relevance
        (C, P) the layer's output on the image and the class's relevance there.
    coefficients
        (K, P) the concepts' coefficients at each position (default: fitted here).
    """
    features = basis.features(activation).double().numpy()
    split = split_relevance(relevance, activation, basis.signed).double().numpy()
    if coefficients is None:
        coefficients = basis.position_coefficients(activation)
    present = features > 0
    rate = np.where(present, split / np.where(present, features, 1.0), 0.0)  # relevance per unit
    # Σ_{f,p} rate[f,p] W[f,k] H[k,p] for every k at once.
    values = np.einsum("fp,kf,kp->k", rate, basis.directions, coefficients)
    total = float(split.sum())
    return ConceptShares(values, total - float(values.sum()), total)
