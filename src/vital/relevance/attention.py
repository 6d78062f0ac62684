"""LRP for transformers: AttnLRP's rules in the gradient × input form (Achtibat et al., ICML 2024).

Vision transformers have no z⁺ rule set in the authors' code; where relevance crosses attention
blocks, ``lrp`` uses the rules of AttnLRP, as the ``lxt`` package applies them to torchvision's
ViT (its "CP-LRP" variant):

- relevance is carried as a gradient and read as gradient × activation, so linear layers,
  convolutions and residual sums pass it by the z-rule (LRP-0) without rules of their own;
- normalisation layers use the identity rule: their division by the standard deviation is a
  constant for relevance (the gradient does not flow through the statistics);
- element-wise activations (GELU, SiLU, …) use the identity rule: relevance passes unchanged;
- attention passes relevance only through the values: the attention weights are constants
  (no gradient reaches the queries and keys).

The rules must not change the loss's own backward pass, which runs through the same forward
graph: each rewritten output is ``switched(true output, rule output)``, equal in value, whose
gradient goes to the true output unless the :class:`Switch` is on (as inside
:meth:`vital.relevance.RelevanceBackend.relevance`). Which attention blocks exist is data in
:mod:`vital.presets` (``ATTENTION_QKV``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vital.errors import VitalError
from vital.presets import ATTENTION_QKV, GATES, NEUTRAL_BY_NAME, classes_named
from vital.relevance.rules import ACTIVATIONS, AVERAGE_POOLS, LINEAR, NEUTRAL, NORMS

# Normalisations whose statistics are constants for relevance (the identity rule).
LAYER_NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm)


@dataclass
class Switch:
    """Whether a backward pass computes relevance (on) or true gradients (off)."""

    active: bool = False


class _Switched(torch.autograd.Function):
    """The true output forward; backward, the gradient goes to the rule's output if switched on."""

    @staticmethod
    def forward(ctx, switch: Switch, true_output: torch.Tensor, rule_output: torch.Tensor):
        ctx.switch = switch
        return true_output.view_as(true_output)

    @staticmethod
    def backward(ctx, gradient):
        if ctx.switch.active:
            return None, None, gradient
        return None, gradient, None


def switched(switch: Switch, true_output: torch.Tensor, rule_output: torch.Tensor) -> torch.Tensor:
    """``true_output`` in value; its gradient flows through ``rule_output`` while switched on."""
    return _Switched.apply(switch, true_output, rule_output)


def identity_rule(x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """An element-wise function as ``x · (f(x)/x)`` with the ratio constant: relevance passes."""
    ratio = output.detach() / torch.where(x.detach() == 0, 1e-12, x.detach())
    return x * ratio


def normalised_with_constant_statistics(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A LayerNorm/GroupNorm whose mean stays but whose standard deviation is a constant."""
    if isinstance(module, nn.LayerNorm):
        dims = tuple(range(-len(module.normalized_shape), 0))
        mean = x.mean(dim=dims, keepdim=True)
        std = (x.var(dim=dims, keepdim=True, unbiased=False) + module.eps).sqrt()
        y = (x - mean) / std.detach()
    else:  # GroupNorm over (B, C, ...)
        grouped = x.reshape(x.shape[0], module.num_groups, -1)
        mean = grouped.mean(dim=-1, keepdim=True)
        std = (grouped.var(dim=-1, keepdim=True, unbiased=False) + module.eps).sqrt()
        y = ((grouped - mean) / std.detach()).reshape(x.shape)
    if getattr(module, "weight", None) is not None:
        shape = (
            module.weight.shape
            if isinstance(module, nn.LayerNorm)
            else (-1,) + (1,) * (x.dim() - 2)
        )
        y = y * module.weight.view(shape)
    if getattr(module, "bias", None) is not None:
        shape = (
            module.bias.shape if isinstance(module, nn.LayerNorm) else (-1,) + (1,) * (x.dim() - 2)
        )
        y = y + module.bias.view(shape)
    return y


def _values_only(qkv: torch.Tensor) -> torch.Tensor:
    """A fused (…, 3·D) query-key-value projection whose queries and keys carry no gradient."""
    width = qkv.shape[-1] // 3
    return torch.cat([qkv[..., : 2 * width].detach(), qkv[..., 2 * width :]], dim=-1)


def _self_attention_values_only(module: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Torchvision's self-attention (batch first, no mask) with constant attention weights."""
    batch, tokens, width = x.shape
    heads = module.num_heads
    qkv = F.linear(x, module.in_proj_weight, module.in_proj_bias)
    q, k, v = _values_only(qkv).view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(batch, tokens, width)
    return F.linear(out, module.out_proj.weight, module.out_proj.bias)


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is an attention block the rules know."""
    return isinstance(module, (nn.MultiheadAttention, *classes_named(list(ATTENTION_QKV))))


def applies(module: nn.Module, names: set[str]) -> bool:
    """Whether relevance crosses attention: the transformer rules apply.

    A convolutional network with layer or group normalisation but no attention keeps the
    authors' rule set (which refuses those normalisations), not a silent change of rules.
    """
    return any(name in names and is_attention(child) for name, child in module.named_modules())


def check_covered(module: nn.Module, names: set[str], backend: str) -> None:
    """Raise a :class:`VitalError` naming the first module the transformer rules do not cover."""
    known = (
        *LAYER_NORMS, *ACTIVATIONS, *NORMS, *AVERAGE_POOLS, *NEUTRAL, *LINEAR,
        *classes_named(NEUTRAL_BY_NAME),
    )  # fmt: skip
    gates = classes_named(GATES)
    # Inside an attention block only the values carry relevance: its softmax and the like need
    # no rule of their own.
    blocks = [name + "." for name, child in module.named_modules() if is_attention(child)]
    for name, child in module.named_modules():
        if name not in names or is_attention(child) or name.startswith(tuple(blocks)):
            continue
        problem = ""
        if isinstance(child, gates):
            problem = "multiplies features by a computed gate, which no rule here covers"
        elif not list(child.children()) and not isinstance(child, known):
            problem = "has no rule in the transformer rule set"
        if problem:
            raise VitalError(
                f"relevance backend {backend!r}: layer {name!r} ({type(child).__name__}) "
                f"{problem}; use relevance=grad-x-act (gradient × activation, works for "
                "any differentiable model), or target a layer below it."
            )


@contextmanager
def attention_rules(module: nn.Module, names: set[str]) -> Iterator[Switch]:
    """Attach the rules to the modules named ``names`` of ``module`` for the block's duration.

    Yields the :class:`Switch` that turns relevance on for a backward pass. Forward values are
    unchanged; the hooks and replaced forwards are removed when the block ends.
    """
    switch = Switch()
    qkv_children = dict(
        zip(classes_named(list(ATTENTION_QKV)), ATTENTION_QKV.values(), strict=False)
    )
    handles, replaced = [], []

    def norm_hook(layer, inputs, output):
        return switched(switch, output, normalised_with_constant_statistics(layer, inputs[0]))

    def activation_hook(_layer, inputs, output):
        return switched(switch, output, identity_rule(inputs[0], output))

    def qkv_hook(_layer, _inputs, output):
        return switched(switch, output, _values_only(output))

    for name, child in module.named_modules():
        if name not in names:
            continue
        if isinstance(child, LAYER_NORMS):
            handles.append(child.register_forward_hook(norm_hook))
        elif isinstance(child, ACTIVATIONS):
            handles.append(child.register_forward_hook(activation_hook))
        elif type(child) in qkv_children:
            fused = getattr(child, qkv_children[type(child)])
            handles.append(fused.register_forward_hook(qkv_hook))
        elif isinstance(child, nn.MultiheadAttention):
            replaced.append(child)
            child.forward = _attention_forward(child, switch)
    try:
        yield switch
    finally:
        for handle in handles:
            handle.remove()
        for child in replaced:
            del child.forward


def _attention_forward(module: nn.MultiheadAttention, switch: Switch):
    original = module.forward

    def forward(query, key, value, *args, **kwargs):
        output, weights = original(query, key, value, *args, **kwargs)
        plain = query is key is value and module.batch_first and module._qkv_same_embed_dim
        plain = (
            plain
            and not args
            and not any(kwargs.get(k) is not None for k in ("key_padding_mask", "attn_mask"))
        )
        if not plain:  # the general case: the attention computed once more with q, k constant
            rule, _ = original(query.detach(), key.detach(), value, *args, **kwargs)
        else:
            rule = _self_attention_values_only(module, query)
        return switched(switch, output, rule), weights

    return forward
