"""LRP rules: how relevance passes one module (zennit hooks).

``ZPlus`` (z⁺ for convolutions and linear layers), ``PassThrough`` (activations, BatchNorm),
``AbsoluteShare`` (the residual split), plus zennit's own ``Norm`` for average pools. Each rule
is a zennit :class:`~zennit.core.Hook`; which rule goes where is :mod:`.composites`'s job.
"""

from __future__ import annotations

import functools
import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from zennit.core import BasicHook, Hook, ParamMod
from zennit.rules import Pass

from vital.presets import SAME_PADDING_CONVS, classes_named

EPSILON = 1e-5
# Attribute that FoldBatchNorm leaves on a convolution: the positive scale folded into it.
FOLDED_SCALE = "_vital_folded_scale"

# --- which module types each rule covers ------------------------------------------------------
# Activations that relevance passes through unchanged.
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.SiLU,
    nn.GELU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Softplus,
)
NORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LINEAR: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
AVERAGE_POOLS: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)
# Max pooling: the authors' rule set shares relevance as a 2×2 average pool would (below); the
# other LRP backends route it to the winning position (the gradient).
MAX_POOLS: tuple[type[nn.Module], ...] = (nn.MaxPool2d,)
# Modules that need no rule: identities in eval mode, reshapes, and max pooling (its gradient
# routes relevance to the winning position).
NEUTRAL: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.Flatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
)

# --- rules --------------------------------------------------------------------------------------


class _Junction(torch.autograd.Function):
    """An identity whose backward runs a module's rule: the node the rule is attached to.

    zennit attaches a rule as a hook on an identity node before the module. While relevance
    runs, every module's own backward is skipped (see :meth:`_LeanHook.post_forward`), so that
    node receives no gradient; autograd then fills it with zeros the size of the module's input
    (and a hook may not replace a missing gradient). The junction keeps the gradient missing and
    computes the rule itself: no tensor of zeros per module and pass.
    """

    @staticmethod
    def forward(ctx, rule, *inputs):
        """Pass the inputs on; ``rule`` maps the gradients to new ones, or ``None`` to pass."""
        ctx.set_materialize_grads(False)
        ctx.rule = rule
        return inputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        """The rule's gradients, or the arriving ones unchanged (``None`` stays ``None``)."""
        replaced = ctx.rule(grad_outputs)
        return (None, *(grad_outputs if replaced is None else replaced))


class _LeanHook(Hook):
    """zennit's hook, run by a :class:`_Junction`, without the defensive copy of every input.

    zennit clones a module's input after attaching its gradient hook so that in-place modules
    (``ReLU(inplace=True)``) cannot overwrite it; other modules do not need the copy, which
    otherwise costs a full read and write of every feature map in every forward pass.
    """

    def pre_forward(self, module, input):
        """Route the input through a junction that runs the rule (copied for in-place modules)."""
        hook_ref = weakref.ref(self)

        def rule(grad_input):
            hook = hook_ref()
            if hook is None or not hook.active:
                return None
            relevance = hook.stored_tensors["grad_output"]
            # No relevance arrived (a module inside a gate, whose rule hands its interior
            # none): none leaves either, as zeros, which zennit's own rules below expect.
            if all(r is None for r in relevance):
                return tuple(
                    None if like is None else torch.zeros(like[0], **like[1]) for like in shapes
                )
            return hook.backward(module, grad_input, relevance)

        if not isinstance(input, tuple):
            input = (input,)
        if not input[0].requires_grad:
            return input[0] if len(input) == 1 else input
        shapes = [
            (t.shape, {"dtype": t.dtype, "device": t.device}) if torch.is_tensor(t) else None
            for t in input
        ]
        post_input = _Junction.apply(rule, *input)
        if getattr(module, "inplace", False):
            # The junction's outputs are its inputs: an in-place module must not write them.
            post_input = tuple(e.clone() if torch.is_tensor(e) else e for e in post_input)
        return post_input[0] if len(post_input) == 1 else post_input

    def post_forward(self, module, input, output):
        """Catch the relevance arriving at the module output, and skip the module's own backward.

        zennit reads the output gradient in a hook that runs *after* the module's backward node,
        so every relevance pass also computed the module's true input gradient, only to
        replace it. A pre-hook reads it before the node runs and, while the rule is active,
        hands the node no gradient, so the node does no work (the loss's backward pass, with
        the rule inactive, is untouched).
        """
        first = output[0] if isinstance(output, tuple) else output
        if first.grad_fn is None:
            return output
        # Nested hooked modules can share one output tensor (timm's BatchNormAct2d and its
        # activation): one pre-hook per tensor serves every hook that listens to it.
        listeners = getattr(first, "_vital_relevance_listeners", None)
        if listeners is None:
            listeners = []
            first._vital_relevance_listeners = listeners

            def catch(grad_outputs):
                hooks = [h for ref in listeners if (h := ref()) is not None and h.active]
                if not hooks:
                    return None
                for hook in hooks:
                    hook.stored_tensors["grad_output"] = grad_outputs
                return tuple(None for _ in grad_outputs)

            self.tensor_handles.append(first.grad_fn.register_prehook(catch))
        listeners.append(weakref.ref(self))
        return output


@functools.cache
def _same_padding_convs() -> tuple[type, ...]:
    return classes_named(SAME_PADDING_CONVS)


def same_pads(size: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zeros that TensorFlow's "SAME" padding adds for ``size``.

    The output keeps ``ceil(size / stride)`` positions; an odd total goes to the right and the
    bottom.
    """
    pads = []
    for length, kernel, stride, dilation in zip(
        size, conv.kernel_size, conv.stride, conv.dilation, strict=True
    ):
        total = max(
            (math.ceil(length / stride) - 1) * stride + (kernel - 1) * dilation + 1 - length, 0
        )
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return left, right, top, bottom


class PassThrough(_LeanHook, Pass):
    """zennit's ``Pass`` rule (relevance passes unchanged), without the input copy."""

    def copy(self) -> PassThrough:
        """A fresh hook."""
        return PassThrough()


class ZPlus(_LeanHook, BasicHook):
    """z⁺ for convolutions and linear layers: positive weights, no bias, ε-stabilised.

    ``R_i = x_i Σ_j w⁺_ij R_j / (Σ_i x_i w⁺_ij + ε)`` for non-negative inputs. Where inputs can
    be negative (the linear bottlenecks of inverted residuals), negative inputs are paired with
    negative weights as in zennit's ``ZPlus`` (α1β0), which keeps every contribution positive;
    for non-negative inputs that term vanishes and is skipped, so a ReLU network pays one
    modified forward and one transposed convolution per layer. A convolution with signed inputs
    takes ``x⁺w⁺ + x⁻w⁻ = (w x + |w| |x|) / 2`` from its own output (one convolution, not two)
    and, where pointwise, both transposed products from one. Plain ``Conv2d`` and ``Linear``
    layers and the SAME-padding convolutions of :data:`vital.presets.SAME_PADDING_CONVS` (padded
    here as they pad) are computed directly with their clamped weights kept for the run; any
    other subclass through its own forward with modified parameters.
    """

    def __init__(self, stabilizer: float = EPSILON):
        super().__init__()
        self.stabilizer = stabilizer
        self._weights: dict[str, torch.Tensor | float] = {}
        self._nonnegative: bool | None = None

    def _weight(self, module: nn.Module, sign: str) -> torch.Tensor:
        # The model is frozen during a run: clamp its weights once per attachment.
        if sign not in self._weights:
            weight = module.weight.detach()
            # In the weight's own strides: a depthwise weight's channels-last strides differ
            # from its contiguous ones only where a size is 1, and a convolution whose weight
            # and input disagree runs about ten times slower on the CPU.
            clamped = torch.empty_like(weight, memory_format=torch.preserve_format)
            if sign == "+":
                torch.clamp(weight, min=0, out=clamped)
            elif sign == "-":
                torch.clamp(weight, max=0, out=clamped)
            else:  # "|/2": half the weights' magnitudes
                torch.abs(weight, out=clamped).mul_(0.5)
            self._weights[sign] = clamped
        return self._weights[sign]

    def backward(self, module, grad_input, grad_output):
        """Relevance at the module input from the relevance ``grad_output`` at its output."""
        original = self.stored_tensors["input"][0].detach()
        # Under autocast the input may be bfloat16 while the weights are float32: z⁺ runs in
        # the weights' precision and hands relevance back in the input's.
        given = grad_output[0].dtype
        original = original.to(module.weight.dtype)
        grad_output = tuple(g.to(module.weight.dtype) for g in grad_output)
        if self._nonnegative is None:
            # Whether this layer's input can be negative is a property of the network (after a
            # ReLU it never is): looked at once, not at every step (the look waits for a GPU).
            self._nonnegative = bool(original.amin() >= 0)
        if self._nonnegative:  # after a ReLU: no copies needed
            parts = [(original, "+")]
        else:
            parts = [(original.clamp(min=0), "+"), (original.clamp(max=0), "-")]
        if (
            type(module) is nn.Conv2d
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)  # "same" may pad unevenly
        ):
            relevance = self._conv2d(module, parts, grad_output[0], self._linear_part(module))
        elif isinstance(module, _same_padding_convs()) and module.padding == (0, 0):
            pads = same_pads(original.shape[-2:], module)
            padded = [(F.pad(part, pads), sign) for part, sign in parts]
            relevance = self._conv2d(module, padded, grad_output[0], self._linear_part(module))
            # Padded positions hold zeros, so they received no relevance: cut them off.
            height, width = original.shape[-2:]
            relevance = relevance[..., pads[2] : pads[2] + height, pads[0] : pads[0] + width]
        elif type(module) is nn.Linear:
            relevance = self._linear(module, parts, grad_output[0], self._linear_part(module))
        else:
            relevance = self._generic(module, parts, grad_output[0])
        # The module's own backward was skipped (see post_forward), so grad_input may be None.
        relevance = relevance.to(given)
        return tuple(
            relevance if g is None or g.shape == relevance.shape else None for g in grad_input
        )

    def forward(self, module, input, output):
        """Keep the module's input, and where it can be signed its output (:meth:`_linear_part`)."""
        super().forward(module, input, output)
        if self._nonnegative is not True and torch.is_tensor(output):
            self.stored_tensors["output"] = (output, output._version)

    def _linear_part(self, module) -> torch.Tensor | None:
        """``w x + b``: the module's output from its own forward pass; None if not usable.

        Usable while the stored output is unchanged (an in-place module after it would have
        written it) and in the weights' precision (under autocast it is rounded to bfloat16).
        Taken once: the rule lets go of it, so that a batch's outputs (50 references' at once)
        are not held beyond the relevance pass.
        """
        output, version = self.stored_tensors.pop("output", (None, None))
        if output is None or output._version != version or output.dtype != module.weight.dtype:
            return None
        return output.detach()

    def _stabilizer_tensor(self, module) -> torch.Tensor:
        """ε as a tensor of the weights' dtype and device (per channel where folded)."""
        if "eps tensor" not in self._weights:
            self._weights["eps tensor"] = torch.as_tensor(
                self._stabilizer(module), dtype=module.weight.dtype, device=module.weight.device
            )
        return self._weights["eps tensor"]

    def _z_from_output(self, module, half_magnitudes, output) -> torch.Tensor:
        """z⁺ of a signed input, ``x⁺w⁺ + x⁻w⁻ + ε``, as ``|w| |x| / 2 + (w x + b) / 2 − b/2 + ε``.

        ``half_magnitudes`` is the layer's product of ``|x|`` with ``|w|/2`` (written in place)
        and ``output`` the layer's own ``w x + b`` (:meth:`_linear_part`); ``max(z + ε, ε) =
        max(z, 0) + ε`` restores z ≥ 0 where rounding left it just below, so that ε stays a
        stabiliser.
        """
        if "eps-b/2" not in self._weights:
            stabilizer = self._stabilizer_tensor(module)
            if module.bias is not None:
                shape = (-1, *[1] * (module.weight.dim() - 2))
                stabilizer = stabilizer - 0.5 * module.bias.detach().view(shape)
            self._weights["eps-b/2"] = stabilizer.to(module.weight.dtype)
        z = half_magnitudes.add_(output, alpha=0.5).add_(self._weights["eps-b/2"])
        return torch.maximum(z, self._stabilizer_tensor(module), out=z)

    def _conv2d(self, module, parts, relevance_out, linear_part=None):
        options = {
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
        }
        # Every contribution is ≥ 0 (x⁺w⁺ and x⁻w⁻), so z ≥ 0 and z + ε is zennit's stabiliser.
        # Fresh tensors are updated in place: this runs for every layer at every step.
        if len(parts) == 2 and linear_part is not None:
            # x⁺w⁺ + x⁻w⁻ = (w x + |w| |x|) / 2, and the forward pass computed w x (+ b)
            # already: one convolution instead of two.
            magnitude = parts[0][0] - parts[1][0]
            half = F.conv2d(magnitude, self._weight(module, "|/2"), None, **options)
            z = self._z_from_output(module, half, linear_part)
        else:
            z = F.conv2d(parts[0][0], self._weight(module, parts[0][1]), None, **options)
            for part, sign in parts[1:]:
                z += F.conv2d(part, self._weight(module, sign), None, **options)
            z.add_(self._stabilizer(module))
        scaled = torch.div(relevance_out, z, out=z)  # z is not needed again
        size = parts[0][0].shape[-2:]
        if len(parts) == 2 and self._pointwise(module):
            # Both transposed products in one: the large relevance map is read once.
            both = F.conv2d(scaled, self._stacked_transposed(module))
            positive, negative = both.chunk(2, dim=1)
            return positive.mul_(parts[0][0]).addcmul_(negative, parts[1][0])
        relevance = self._conv2d_transposed(module, parts[0][1], scaled, size).mul_(parts[0][0])
        for part, sign in parts[1:]:
            relevance += self._conv2d_transposed(module, sign, scaled, size).mul_(part)
        return relevance

    def _stabilizer(self, module) -> float | torch.Tensor:
        """ε, per output channel where a BatchNorm was folded into the layer (kept for the run).

        A folded BatchNorm scaled z by its positive scale: scaling ε alike keeps the ratios those
        of the unfolded layer exactly.
        """
        if "eps" not in self._weights:
            folded = getattr(module, FOLDED_SCALE, None)
            self._weights["eps"] = (
                self.stabilizer if folded is None else self.stabilizer * folded.view(-1, 1, 1)
            )
        return self._weights["eps"]

    @staticmethod
    def _pointwise(module) -> bool:
        return (
            module.kernel_size == (1, 1)
            and module.stride == (1, 1)
            and module.padding == (0, 0)
            and module.groups == 1
        )

    def _stacked_transposed(self, module) -> torch.Tensor:
        """(w⁺ᵀ; w⁻ᵀ) of a pointwise convolution, kept for the run."""
        if "±T" not in self._weights:
            self._weights["±T"] = torch.cat(
                [self._weight(module, sign).transpose(0, 1) for sign in "+-"]
            ).contiguous()
        return self._weights["±T"]

    def _conv2d_transposed(self, module, sign, scaled, size):
        """``Wᵀ scaled``: the input gradient of the convolution with the clamped weights.

        Pointwise convolutions (most of an inverted-residual network) are a matrix product
        with the transposed weight, kept for the run; the others are transposed convolutions.
        Both are about twice as fast on the CPU as ``torch.nn.grad.conv2d_input``.
        """
        if self._pointwise(module):
            key = f"{sign}T"
            if key not in self._weights:
                self._weights[key] = self._weight(module, sign).transpose(0, 1).contiguous()
            return F.conv2d(scaled, self._weights[key])
        padding = module.padding
        # A strided convolution maps several input sizes to one output size: pick ours.
        output_padding = tuple(
            size[d]
            - ((scaled.shape[2 + d] - 1) * module.stride[d] - 2 * padding[d]
               + module.dilation[d] * (module.kernel_size[d] - 1) + 1)
            for d in range(2)
        )  # fmt: skip
        return F.conv_transpose2d(
            scaled,
            self._weight(module, sign),
            None,
            stride=module.stride,
            padding=padding,
            output_padding=output_padding,
            groups=module.groups,
            dilation=module.dilation,
        )

    def _linear(self, module, parts, relevance_out, linear_part=None):
        if len(parts) == 2 and linear_part is not None:
            # As for convolutions (see _conv2d): z from the layer's own output, and both
            # transposed products in one matrix product.
            magnitude = parts[0][0] - parts[1][0]
            z = self._z_from_output(
                module, F.linear(magnitude, self._weight(module, "|/2")), linear_part
            )
            if "±" not in self._weights:
                self._weights["±"] = torch.cat([self._weight(module, s) for s in "+-"], dim=1)
            positive, negative = (relevance_out / z).matmul(self._weights["±"]).chunk(2, dim=-1)
            return positive.mul_(parts[0][0]).addcmul_(negative, parts[1][0])
        pairs = [(part, self._weight(module, sign)) for part, sign in parts]
        z = sum(F.linear(part, w) for part, w in pairs)
        scaled = relevance_out / (z + self.stabilizer)
        return sum(part * (scaled @ w) for part, w in pairs)

    def _generic(self, module, parts, relevance_out):
        inputs, outputs = [], []
        with torch.autograd.enable_grad():
            for part, sign in parts:
                part = part.requires_grad_()
                clamp = (
                    (lambda p, _: p.clamp(min=0)) if sign == "+" else (lambda p, _: p.clamp(max=0))
                )
                modifier = ParamMod(clamp, zero_params=["bias"], require_params=False)
                with modifier(module) as modified:
                    outputs.append(modified.forward(part))
                inputs.append(part)
            scaled = relevance_out / (sum(outputs) + self.stabilizer)
            gradients = torch.autograd.grad(outputs, inputs, grad_outputs=[scaled] * len(outputs))
        return sum(i * g for i, g in zip(inputs, gradients, strict=True))

    def copy(self) -> ZPlus:
        """A fresh hook with the same stabiliser (one hook per module)."""
        return ZPlus(self.stabilizer)


class _SharingRule(_LeanHook):
    """A rule that shares relevance by the module's inputs: keeps them, has a stabiliser ε."""

    def __init__(self, stabilizer: float = EPSILON):
        super().__init__()
        self.stabilizer = stabilizer

    def forward(self, module, input, output):
        """Keep the inputs for the backward pass."""
        self.stored_tensors["input"] = input

    def copy(self) -> _SharingRule:
        """A fresh hook with the same stabiliser (one hook per module)."""
        return type(self)(self.stabilizer)


class AbsoluteShare(_SharingRule):
    """Residual sum: each branch receives the share ``|branch| / (|shortcut| + |main| + ε)``."""

    def backward(self, module, grad_input, grad_output):
        """Split the relevance of the sum between the branches."""
        # Fresh tensors, written in place: this runs for every residual sum at every step.
        shortcut, main = (branch.detach().abs() for branch in self.stored_tensors["input"])
        scaled = torch.add(shortcut, main).add_(self.stabilizer)
        torch.div(grad_output[0], scaled, out=scaled)
        return shortcut.mul_(scaled), main.mul_(scaled)


class MaxPoolAsAverage(_SharingRule):
    """Max pooling passes relevance as the z-rule of a 2×2 average pool (the authors' choice).

    ``R_i = x_i Σ_j w_ij R_j / (Σ_i w_ij x_i + ε)`` with ``w`` the weights of a 2×2, stride-2
    average pool, as the authors' ``lrp_layers.py`` substitutes for every max pool; where that
    pool's output does not have the max pool's shape, the max pool's own window is averaged.
    Every input of a window gets a share, not only the winner.
    """

    def backward(self, module, grad_input, grad_output):
        """Relevance at the pool's input from the relevance at its output."""
        x = self.stored_tensors["input"][0].detach()
        relevance_out = grad_output[0]
        with torch.enable_grad():
            leaf = x.clone().requires_grad_(True)
            z = F.avg_pool2d(leaf, 2)
            if z.shape[-2:] != relevance_out.shape[-2:]:
                z = F.avg_pool2d(
                    leaf, module.kernel_size, module.stride, module.padding, module.ceil_mode
                )
            (share,) = torch.autograd.grad(z, leaf, relevance_out / (z.detach() + self.stabilizer))
        return (x * share,)
