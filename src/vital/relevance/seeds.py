"""Starting relevance at the target layer, and the target's activation (METHOD.md sections 3–4).

A target is a direction ``v`` over a layer's channels (one-hot for a channel). Its activation is
the spatial mean of the projection ``Σ_c v_c A_c``; a backend's *seed* is the relevance it starts
from at that layer, in the layer's own layout. Maps are (B, C, H, W); transformer tokens are
(B, T, D), where the embedding dimensions are the channels and the tokens the positions.
"""

from __future__ import annotations

import torch


def projection(activation: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Per-position projection of a layer output on per-image directions.

    Parameters
    ----------
    activation
        (B, C, ...) layer output, or (B, T, D) tokens.
    direction
        (B, C) one direction per image.

    Returns
    -------
    torch.Tensor
        (B, P): ``Σ_c v_c A_c`` at every position.
    """
    return torch.einsum("bcp,bc->bp", _positions(activation), direction.to(activation.dtype))


def _positions(activation: torch.Tensor) -> torch.Tensor:
    """(B, C, P) view: maps flattened, tokens transposed, vectors with one position."""
    if activation.dim() == 3:
        return activation.transpose(1, 2)
    return activation.flatten(2) if activation.dim() > 2 else activation.unsqueeze(-1)


def target_activation(activation: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The target's activation: the spatial mean of the projection, (B,)."""
    return projection(activation, direction).mean(dim=1)


def _broadcast(direction: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 3:  # tokens: the channels are the last axis
        return direction.to(like.dtype).unsqueeze(1)
    return direction.to(like.dtype).view(*direction.shape, *([1] * (like.dim() - 2)))


def activation_seed(activation: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """LRP's starting relevance: the activation along the direction, ``A ⊙ v``.

    For a one-hot ``v`` that is channel k's activation map, all other channels zero.
    """
    return activation * _broadcast(direction, activation)


def restricted_seed(activation: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The direction ``v`` itself, at the position whose activation vector is most aligned with it.

    As in the authors' code the starting relevance there is ``v`` (for a channel, 1 at channel k),
    not the activation: so relevance flows even while the target is silent on the image.
    """
    flat = _positions(activation)
    cosine = torch.einsum("bcp,bc->bp", flat, direction.to(flat.dtype)) / (
        flat.norm(dim=1) * direction.norm(dim=1, keepdim=True) + 1e-12
    )
    mask = torch.zeros_like(cosine).scatter_(1, cosine.argmax(dim=1, keepdim=True), 1.0)
    if activation.dim() == 3:
        return _broadcast(direction, activation) * mask.unsqueeze(-1)
    return _broadcast(direction, activation) * mask.view(-1, 1, *activation.shape[2:])


def gradient_seed(activation: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The gradient of the target's mean activation with respect to the layer output."""
    positions = _positions(activation).shape[-1]
    return _broadcast(direction, activation).expand_as(activation) / positions
