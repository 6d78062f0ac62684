"""Starting relevance at the target layer, and the target's activation (METHOD.md sections 3–4).

A target is a direction ``v`` over a layer's channels (one-hot for a channel). Its activation is
the spatial mean of the projection ``Σ_c v_c A_c``; a backend's *seed* is the relevance it starts
from at that layer, in the layer's own layout. Maps are (B, C, H, W); transformer tokens are
(B, T, D), where the embedding dimensions are the channels and the tokens the positions.

Signed targets (a residual block's output, a linear bottleneck, a transformer's residual stream)
are seeded by :func:`upward`: only the positions where the projection is positive start
relevance, since a picture of a unit shows what drives it *up*; LRP from a negative position
would hand the image's evidence *against* the unit the same weight after normalisation.
"""

from __future__ import annotations

import torch

from vital.taps import from_positions, to_positions


def projection(
    activation: torch.Tensor, direction: torch.Tensor, layout: str | None = None
) -> torch.Tensor:
    """Per-position projection of a layer output on per-image directions.

    Parameters
    ----------
    activation
        The layer's raw output: (B, C, H, W), (B, H, W, C), (B, T, D) or (B, C).
    direction
        (B, C) one direction per image.
    layout
        The output's layout when its shape does not tell (:meth:`vital.taps.FeatureTap.layout`).

    Returns
    -------
    torch.Tensor
        (B, P): ``Σ_c v_c A_c`` at every position.
    """
    positions = _positions(activation, layout)
    return torch.einsum("bcp,bc->bp", positions, direction.to(activation.dtype))


def _positions(activation: torch.Tensor, layout: str | None = None) -> torch.Tensor:
    """(B, C, P) view: maps flattened, tokens and channels-last maps transposed."""
    return activation.unsqueeze(-1) if activation.dim() == 2 else to_positions(activation, layout)


def target_activation(
    activation: torch.Tensor, direction: torch.Tensor, layout: str | None = None
) -> torch.Tensor:
    """The target's activation: the spatial mean of the projection, (B,)."""
    return projection(activation, direction, layout).mean(dim=1)


def activation_seed(
    activation: torch.Tensor, direction: torch.Tensor, layout: str | None = None
) -> torch.Tensor:
    """LRP's starting relevance: the activation along the direction, ``A ⊙ v``.

    For a one-hot ``v`` that is channel k's activation map, all other channels zero.
    """
    seed = _positions(activation, layout) * direction.to(activation.dtype).unsqueeze(-1)
    return from_positions(seed, activation, layout)


def restricted_seed(
    activation: torch.Tensor, direction: torch.Tensor, layout: str | None = None
) -> torch.Tensor:
    """The direction ``v`` itself, at the position whose activation vector is most aligned with it.

    As in the authors' code the starting relevance there is ``v`` (for a channel, 1 at channel k),
    not the activation: so relevance flows even while the target is silent on the image.
    """
    flat = _positions(activation, layout)
    direction = direction.to(flat.dtype)
    cosine = torch.einsum("bcp,bc->bp", flat, direction) / (
        flat.norm(dim=1) * direction.norm(dim=1, keepdim=True) + 1e-12
    )
    mask = torch.zeros_like(cosine).scatter_(1, cosine.argmax(dim=1, keepdim=True), 1.0)
    return from_positions(direction.unsqueeze(-1) * mask.unsqueeze(1), activation, layout)


def gradient_seed(
    activation: torch.Tensor, direction: torch.Tensor, layout: str | None = None
) -> torch.Tensor:
    """The gradient of the target's mean activation with respect to the layer output."""
    flat = _positions(activation, layout)
    seed = direction.to(flat.dtype).unsqueeze(-1).expand_as(flat) / flat.shape[-1]
    return from_positions(seed.contiguous(), activation, layout)


def upward(
    seed: torch.Tensor,
    activation: torch.Tensor,
    direction: torch.Tensor,
    layout: str | None = None,
) -> torch.Tensor:
    """A seed kept only where the target fires: what drives it up (docs/method.md, "Signed units").

    Positions whose projection ``Σ_c v_c A_c`` is positive keep ``seed``; the others start no
    relevance. An image whose target is nowhere positive (a signed unit on the starting noise)
    is seeded with ``v`` at the positions of its largest projection (all of them where the map
    is constant), as the authors' restricted seed does where the unit is silent, so relevance
    still flows to where the unit is closest to firing.

    Parameters
    ----------
    seed
        A backend's seed, in the layer's own layout (:func:`activation_seed`,
        :func:`gradient_seed`).
    activation, direction, layout
        As for :func:`projection`.

    Returns
    -------
    torch.Tensor
        The seed, same shape and layout; rows whose direction is zero stay zero.
    """
    values = projection(activation, direction, layout)  # (B, P)
    positive = values > 0
    peak = values == values.amax(dim=1, keepdim=True)
    silent = ~positive.any(dim=1, keepdim=True)
    kept = _positions(seed, layout) * positive.unsqueeze(1).to(seed.dtype)
    fallback = direction.to(seed.dtype).unsqueeze(-1) * peak.unsqueeze(1).to(seed.dtype)
    chosen = torch.where(silent.unsqueeze(1), fallback, kept)
    return from_positions(chosen, activation, layout)


def negative_share(
    activation: torch.Tensor, direction: torch.Tensor, layout: str | None = None
) -> torch.Tensor:
    """The share of the target's map that is negative, per image: (B,) in [0, 1].

    ``Σ max(−p, 0) / Σ |p|`` over the positions of the projection ``p`` (:func:`projection`):
    what :func:`upward` leaves unseeded, in proportion. 0 for a ReLU output (never negative)
    and for rows whose direction or map is zero.
    """
    values = projection(activation, direction, layout).float()
    total = values.abs().sum(dim=1)
    negative = (-values).clamp_min(0).sum(dim=1)
    return torch.where(total > 0, negative / total.clamp_min(1e-12), 0.0)
