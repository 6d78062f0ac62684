"""Relevance backends: how much each tap position matters to an inner target (METHOD.md section 3).

Every backend answers one question with one backward pass for a whole batch: given the model's
raw layer outputs from a forward pass (a graph that is kept for the loss), and for each image a
*seed* (a direction over the channels of its target layer), what is the relevance of every
position of every tap below the target? The result is a constant: it is computed with
``torch.autograd.grad`` towards the tap outputs only, never towards the image, and returned
detached.

Backends
--------
``lrp``
    The authors' rule set on zennit: z⁺ for convolutions and linear layers (positive weights, no
    bias, ε = 1e-5), BatchNorm and activations passed through, and the residual sum split in
    proportion to ``|main|`` and ``|shortcut|``. Residual blocks (torchvision ResNet blocks, the
    inverted residuals of torchvision MobileNetV2 and timm EfficientNet) are rewritten for the
    run by :class:`ResidualSplitCanonizer`, after zennit's ResNet canonizers, but with a
    two-input sum module instead of a stack and a sum over its last axis (which is slow).
    BatchNorms with positive scales are folded into their convolutions for the run
    (:class:`FoldBatchNorm`), which leaves z⁺ exactly as with the BatchNorm passed and saves
    a module per convolution.
``lrp-restricted``
    As ``lrp``, started only at the position of the target layer whose activation vector is
    most aligned with the target direction, with the direction itself as starting relevance
    (as the authors' code does).
``guided-backprop``
    zennit's guided backpropagation of the target's mean activation.
``grad-x-act``
    Gradient of the target's mean activation times the tap activation: works for any
    differentiable model (the fallback where no LRP canonizer covers an architecture).
zennit composites
    ``epsilon-plus``, ``epsilon-plus-flat``, ``epsilon-alpha2-beta1``,
    ``epsilon-alpha2-beta1-flat``, ``excitation-backprop`` by name, with zennit's BatchNorm
    merging, the residual canonizer and its split rule.

The zennit hooks are attached once per run (:meth:`RelevanceBackend.attached`) and are *inactive*
except inside :meth:`RelevanceBackend.relevance`, so the same forward graph serves the relevance
pass (modified gradients) and the loss's backward pass (true gradients).
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.composites import COMPOSITES, LayerMapComposite
from zennit.core import BasicHook, Composite, Hook, Identity, ParamMod
from zennit.rules import Norm, Pass, ReLUGuidedBackprop

from vital.errors import VitalError
from vital.taps import LayerInfo, to_positions

EPSILON = 1e-5
# Attribute that FoldBatchNorm leaves on a convolution: the positive scale folded into it.
FOLDED_SCALE = "_vital_folded_scale"

# --- model knowledge, as data ------------------------------------------------------------------

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

# Residual blocks whose skip connection is switched by a boolean attribute: the canonizer turns
# the flag off (the block then returns its main path) and adds the shortcut through a
# ``ResidualSum``.
RESIDUAL_FLAGS: dict[str, str] = {
    "torchvision.models.mobilenetv2.InvertedResidual": "use_res_connect",
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": "has_skip",
    "timm.models._efficientnet_blocks.InvertedResidual": "has_skip",
    "timm.models._efficientnet_blocks.CondConvResidual": "has_skip",
    "timm.models._efficientnet_blocks.EdgeResidual": "has_skip",
    "timm.models._efficientnet_blocks.UniversalInvertedResidual": "has_skip",
}

# Blocks whose forward applies these (convolution, BatchNorm) children one after the other.
FOLDABLE_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "torchvision.models.resnet.Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "torchvision.models.resnet.BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "torchvision.models.resnet.ResNet": (("conv1", "bn1"),),
}

# Blocks that multiply features by a computed gate; no LRP rule here covers the product.
GATES: tuple[str, ...] = (
    "torchvision.ops.misc.SqueezeExcitation",
    "timm.models._efficientnet_blocks.SqueezeExcite",
    "timm.layers.squeeze_excite.SEModule",
    "timm.layers.squeeze_excite.EffectiveSEModule",
    "torch.nn.modules.activation.MultiheadAttention",
)

# Blocks that timm stores as drop-path wrappers (identity in eval mode).
NEUTRAL_BY_NAME: tuple[str, ...] = ("timm.layers.drop.DropPath",)


def _classes(paths: Sequence[str]) -> tuple[type, ...]:
    """Import the classes named by dotted paths, skipping packages that are not installed."""
    found = []
    for path in paths:
        module_name, _, class_name = path.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


# --- rules --------------------------------------------------------------------------------------


class _LeanHook(Hook):
    """zennit's hook without the defensive copy of every module input.

    zennit clones a module's input after attaching its gradient hook so that in-place modules
    (``ReLU(inplace=True)``) cannot overwrite it; other modules do not need the copy, which
    otherwise costs a full read and write of every feature map in every forward pass.
    """

    def pre_forward(self, module, input):
        """Attach the input-gradient hook; copy the input only for in-place modules."""
        if getattr(module, "inplace", False):
            return super().pre_forward(module, input)
        hook_ref = weakref.ref(self)

        def wrapper(grad_input, grad_output):
            hook = hook_ref()
            if hook is not None and hook.active:
                return hook.backward(module, grad_input, hook.stored_tensors["grad_output"])
            return None

        if not isinstance(input, tuple):
            input = (input,)
        if not input[0].requires_grad:
            return input[0] if len(input) == 1 else input
        post_input = Identity.apply(*input)
        self.tensor_handles.append(post_input[0].grad_fn.register_hook(wrapper))
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
    modified forward and one transposed convolution per layer. Plain ``Conv2d`` and ``Linear``
    layers are computed directly with their clamped weights kept for the run; any other
    subclass (e.g. timm's ``Conv2dSame``) through its own forward with modified parameters.
    """

    def __init__(self, stabilizer: float = EPSILON):
        super().__init__()
        self.stabilizer = stabilizer
        self._weights: dict[str, torch.Tensor | float] = {}

    def _weight(self, module: nn.Module, sign: str) -> torch.Tensor:
        # The model is frozen during a run: clamp its weights once per attachment.
        if sign not in self._weights:
            weight = module.weight.detach()
            self._weights[sign] = weight.clamp(min=0) if sign == "+" else weight.clamp(max=0)
        return self._weights[sign]

    def backward(self, module, grad_input, grad_output):
        """Relevance at the module input from the relevance ``grad_output`` at its output."""
        original = self.stored_tensors["input"][0].detach()
        if bool(original.amin() >= 0):  # after a ReLU: no copies needed
            parts = [(original, "+")]
        else:
            parts = [(original.clamp(min=0), "+"), (original.clamp(max=0), "-")]
        if (
            type(module) is nn.Conv2d
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)  # "same" may pad unevenly
        ):
            relevance = self._conv2d(module, parts, grad_output[0])
        elif type(module) is nn.Linear:
            relevance = self._linear(module, parts, grad_output[0])
        else:
            relevance = self._generic(module, parts, grad_output[0])
        # The module's own backward was skipped (see post_forward), so grad_input may be None.
        return tuple(
            relevance if g is None or g.shape == relevance.shape else None for g in grad_input
        )

    def _conv2d(self, module, parts, relevance_out):
        options = {
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
        }
        # Every contribution is ≥ 0 (x⁺w⁺ and x⁻w⁻), so z ≥ 0 and z + ε is zennit's stabiliser.
        # Fresh tensors are updated in place: this runs for every layer at every step.
        z = F.conv2d(parts[0][0], self._weight(module, parts[0][1]), None, **options)
        for part, sign in parts[1:]:
            z += F.conv2d(part, self._weight(module, sign), None, **options)
        scaled = relevance_out / z.add_(self._stabilizer(module))
        size = parts[0][0].shape[-2:]
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

    def _conv2d_transposed(self, module, sign, scaled, size):
        """``Wᵀ scaled``: the input gradient of the convolution with the clamped weights.

        Pointwise convolutions (most of an inverted-residual network) are a matrix product
        with the transposed weight, kept for the run; the others are transposed convolutions.
        Both are about twice as fast on the CPU as ``torch.nn.grad.conv2d_input``.
        """
        pointwise = (
            module.kernel_size == (1, 1)
            and module.stride == (1, 1)
            and module.padding == (0, 0)
            and module.groups == 1
        )
        if pointwise:
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

    def _linear(self, module, parts, relevance_out):
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


class ResidualSum(nn.Module):
    """``shortcut + main`` as a module of its own, so that a rule can split relevance."""

    def forward(self, shortcut: torch.Tensor, main: torch.Tensor) -> torch.Tensor:
        """The residual sum."""
        return shortcut + main


class AbsoluteShare(_LeanHook):
    """Residual sum: each branch receives the share ``|branch| / (|shortcut| + |main| + ε)``."""

    def __init__(self, stabilizer: float = EPSILON):
        super().__init__()
        self.stabilizer = stabilizer

    def forward(self, module, input, output):
        """Keep both branches for the backward pass."""
        self.stored_tensors["input"] = input

    def backward(self, module, grad_input, grad_output):
        """Split the relevance of the sum between the branches."""
        shortcut, main = (branch.detach().abs() for branch in self.stored_tensors["input"])
        scaled = grad_output[0] / (shortcut + main + self.stabilizer)
        return shortcut * scaled, main * scaled

    def copy(self) -> AbsoluteShare:
        """A fresh hook with the same stabiliser."""
        return AbsoluteShare(self.stabilizer)


def _bottleneck_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Torchvision's ResNet ``Bottleneck.forward`` with the sum through ``canonizer_sum``."""
    shortcut = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    return self.relu(self.canonizer_sum(shortcut, self.bn3(self.conv3(out))))


def _basic_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Torchvision's ResNet ``BasicBlock.forward`` with the sum through ``canonizer_sum``."""
    shortcut = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.canonizer_sum(shortcut, self.bn2(self.conv2(out))))


# Residual blocks whose forward is replaced outright (their sum is an in-place ``+=``).
RESIDUAL_FORWARDS: dict[str, Callable] = {
    "torchvision.models.resnet.Bottleneck": _bottleneck_forward,
    "torchvision.models.resnet.BasicBlock": _basic_block_forward,
}


class ResidualSplitCanonizer(Canonizer):
    """Rewrite known residual blocks so that their sum runs through a :class:`ResidualSum`.

    Blocks in :data:`RESIDUAL_FLAGS` have their skip flag switched off (their own forward then
    returns the main path) and get a forward returning ``ResidualSum(x, main(x))``; blocks in
    :data:`RESIDUAL_FORWARDS` get the listed forward, as zennit's ResNet canonizers do.
    :meth:`remove` restores flags and forwards.
    """

    def __init__(self):
        self.module: nn.Module | None = None
        self.flag = ""

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Canonize every applicable block under ``root_module``."""
        flags = dict(zip(_classes(list(RESIDUAL_FLAGS)), RESIDUAL_FLAGS.values(), strict=False))
        forwards = dict(
            zip(_classes(list(RESIDUAL_FORWARDS)), RESIDUAL_FORWARDS.values(), strict=False)
        )
        instances = []
        for module in root_module.modules():
            flag = flags.get(type(module))
            if (flag is not None and getattr(module, flag, False)) or type(module) in forwards:
                instance = ResidualSplitCanonizer()
                instance.register(module, flag, forwards.get(type(module)))
                instances.append(instance)
        return instances

    def register(self, module: nn.Module, flag: str | None, forward: Callable | None) -> None:
        """Route the block's residual sum through a :class:`ResidualSum`."""
        self.module, self.flag = module, flag or ""
        module.canonizer_sum = ResidualSum()
        if forward is not None:
            module.forward = forward.__get__(module)
            return
        main_path = module.forward

        def split_forward(x: torch.Tensor) -> torch.Tensor:
            return module.canonizer_sum(x, main_path(x))

        setattr(module, flag, False)
        module.forward = split_forward

    def remove(self) -> None:
        """Restore the block."""
        if self.module is None:
            return
        del self.module.forward
        del self.module.canonizer_sum
        if self.flag:
            setattr(self.module, self.flag, True)

    def copy(self) -> ResidualSplitCanonizer:
        """A fresh canonizer."""
        return ResidualSplitCanonizer()


class OutOfPlaceCanonizer(Canonizer):
    """Run in-place modules (``ReLU6(inplace=True)``) out of place while the rules are attached.

    A rule's hook must see a module's input unmodified, so for in-place modules zennit copies
    every input; an out-of-place activation writes its result once instead of copying first
    and overwriting after. :meth:`remove` restores the flag.
    """

    def __init__(self):
        self.module: nn.Module | None = None

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """One instance per in-place module under ``root_module``."""
        instances = []
        for module in root_module.modules():
            if getattr(module, "inplace", None) is True:
                instance = OutOfPlaceCanonizer()
                instance.register(module)
                instances.append(instance)
        return instances

    def register(self, module: nn.Module) -> None:
        """Switch the module to out of place."""
        self.module = module
        module.inplace = False

    def remove(self) -> None:
        """Switch it back."""
        if self.module is not None:
            self.module.inplace = True

    def copy(self) -> OutOfPlaceCanonizer:
        """A fresh canonizer."""
        return OutOfPlaceCanonizer()


class FoldBatchNorm(Canonizer):
    """Fold a BatchNorm into the convolution before it, when that leaves z⁺ unchanged.

    z⁺ ignores biases, and a positive per-channel scale cancels in its ratios
    ``x_i w⁺_ij / Σ_i x_i w⁺_ij``; so when every channel of the BatchNorm scales by a positive
    ``γ / σ``, z⁺ on the folded convolution is z⁺ on the convolution with the BatchNorm passed,
    as METHOD.md specifies, once ε is scaled alike (the scale is left on the convolution as
    :data:`FOLDED_SCALE` for :class:`ZPlus`). The folded pair costs one module instead of two,
    and the relevance pass one rule instead of two. BatchNorms with a negative or zero scale
    stay (and pass relevance). :meth:`remove` restores both modules.
    """

    def __init__(self):
        self.parent: nn.Module | None = None
        self.name = ""
        self.norm: nn.Module | None = None
        self.conv: nn.Conv2d | None = None
        self.weight: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Fold the foldable ``Conv2d`` → ``BatchNorm2d`` pairs under ``root_module``.

        Pairs are consecutive children of a ``Sequential``, or the named pairs of the blocks
        in :data:`FOLDABLE_PAIRS` (whose forward calls them in that order).
        """
        named_pairs = dict(
            zip(_classes(list(FOLDABLE_PAIRS)), FOLDABLE_PAIRS.values(), strict=False)
        )
        instances = []
        for parent in root_module.modules():
            # Only a Sequential's own forward is known to apply its children in order.
            if isinstance(parent, nn.Sequential) and type(parent).forward is nn.Sequential.forward:
                children = list(parent.named_children())
                pairs = [(a, b) for (a, _), (b, _) in zip(children, children[1:], strict=False)]
            else:
                pairs = named_pairs.get(type(parent), ())
            for conv_name, norm_name in pairs:
                conv, norm = parent._modules.get(conv_name), parent._modules.get(norm_name)
                if self._foldable(conv, norm):
                    instance = FoldBatchNorm()
                    instance.register(parent, norm_name, conv, norm)
                    instances.append(instance)
        return instances

    @staticmethod
    def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
        return (
            type(conv) is nn.Conv2d
            # the convolutions whose z⁺ scales ε by the folded scale (ZPlus._conv2d)
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and type(norm) is nn.BatchNorm2d
            and not norm.training
            and norm.running_var is not None
            and norm.num_features == conv.out_channels
            and bool((FoldBatchNorm._scale(norm) > 0).all())
        )

    @staticmethod
    def _scale(norm: nn.BatchNorm2d) -> torch.Tensor:
        weight = norm.weight.detach() if norm.weight is not None else 1.0
        return weight / (norm.running_var + norm.eps).sqrt()

    def register(self, parent: nn.Module, name: str, conv: nn.Conv2d, norm: nn.Module) -> None:
        """Fold ``norm`` into ``conv`` and put an identity in its place."""
        self.parent, self.name, self.norm, self.conv = parent, name, norm, conv
        self.weight, self.bias = conv.weight, conv.bias
        scale = self._scale(norm)
        shift = norm.bias.detach() if norm.bias is not None else 0.0
        bias = self.bias.detach() if self.bias is not None else 0.0
        # New parameters rather than new ``.data``: a graph built while folded keeps the
        # folded weights even if its backward runs after :meth:`remove`.
        conv.weight = nn.Parameter(
            self.weight.detach() * scale.view(-1, 1, 1, 1), requires_grad=False
        )
        conv.bias = nn.Parameter((bias - norm.running_mean) * scale + shift, requires_grad=False)
        setattr(conv, FOLDED_SCALE, scale)
        parent._modules[name] = nn.Identity()

    def remove(self) -> None:
        """Restore the convolution and the BatchNorm."""
        if self.parent is None:
            return
        self.conv.weight = self.weight
        self.conv.bias = self.bias
        delattr(self.conv, FOLDED_SCALE)
        self.parent._modules[self.name] = self.norm

    def copy(self) -> FoldBatchNorm:
        """A fresh canonizer."""
        return FoldBatchNorm()


def vital_composite() -> Composite:
    """The authors' LRP rule set (METHOD.md section 3) as a zennit composite."""
    return LayerMapComposite(
        layer_map=[
            (ACTIVATIONS, PassThrough()),
            (NORMS, PassThrough()),
            (ResidualSum, AbsoluteShare(EPSILON)),
            (AVERAGE_POOLS, Norm(EPSILON)),
            (LINEAR, ZPlus(EPSILON)),
        ],
        canonizers=[FoldBatchNorm(), ResidualSplitCanonizer(), OutOfPlaceCanonizer()],
    )


def _zennit_composite(name: str) -> Callable[[], Composite]:
    def build() -> Composite:
        # zennit's composites have no rule for a two-input sum: they get the residual split.
        return COMPOSITES[name](
            layer_map=[(ResidualSum, AbsoluteShare(EPSILON))],
            canonizers=[
                SequentialMergeBatchNorm(),
                ResidualSplitCanonizer(),
                OutOfPlaceCanonizer(),
            ],
        )

    return build


def guided_backprop_composite() -> Composite:
    """Zennit's guided backpropagation, extended to ReLU6."""
    return LayerMapComposite(layer_map=[((nn.ReLU, nn.ReLU6), ReLUGuidedBackprop())])


# --- seeds ------------------------------------------------------------------------------------


def projection(activation: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Per-position projection of a layer output on per-image directions.

    Parameters
    ----------
    activation
        (B, C, ...) layer output.
    direction
        (B, C) one direction per image.

    Returns
    -------
    torch.Tensor
        (B, P): ``Σ_c v_c A_c`` at every position.
    """
    flat = activation.flatten(2) if activation.dim() > 2 else activation.unsqueeze(-1)
    return torch.einsum("bcp,bc->bp", flat, direction.to(flat.dtype))


def target_activation(activation: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The target's activation: the spatial mean of the projection, (B,)."""
    return projection(activation, direction).mean(dim=1)


def _broadcast(direction: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
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
    flat = activation.flatten(2)
    cosine = torch.einsum("bcp,bc->bp", flat, direction.to(flat.dtype)) / (
        flat.norm(dim=1) * direction.norm(dim=1, keepdim=True) + 1e-12
    )
    mask = torch.zeros_like(cosine).scatter_(1, cosine.argmax(dim=1, keepdim=True), 1.0)
    return _broadcast(direction, activation) * mask.view(-1, 1, *activation.shape[2:])


def gradient_seed(activation: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The gradient of the target's mean activation with respect to the layer output."""
    positions = activation[0, 0].numel()
    return _broadcast(direction, activation).expand_as(activation) / positions


# --- backends ---------------------------------------------------------------------------------


@dataclass
class RelevanceBackend:
    """One way of computing relevance; see the module docstring for the available ones.

    Attributes
    ----------
    name
        Registry name (recorded with each result).
    seed
        Starting relevance at the target layer from its activation and direction.
    composite
        Builds the zennit composite (``None``: plain gradients).
    times_activation
        Multiply the gradient arriving at a tap by the tap's activation.
    is_lrp
        Whether the backend relies on LRP rules (and so refuses layers it has no rule for).
    """

    name: str
    seed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    composite: Callable[[], Composite] | None = None
    times_activation: bool = False
    is_lrp: bool = False

    def __post_init__(self) -> None:
        self._attached: Composite | None = None

    @contextmanager
    def attached(
        self,
        module: nn.Module,
        layers: Sequence[LayerInfo],
        taps: Sequence[str],
        targets: Sequence[str],
    ) -> Iterator[RelevanceBackend]:
        """Attach the backend's rules to the modules between the taps and the targets.

        The hooks stay inactive (true gradients) except inside :meth:`relevance`; canonizers
        and hooks are removed when the block ends, also on errors. Attach it *before* any
        feature tap, so the rules see each module's output before a tap can stop the forward.

        Raises
        ------
        VitalError
            For an LRP backend, when a module between the taps and the targets has no rule.
        """
        if self.composite is None:
            yield self
            return
        span = modules_between(layers, taps, targets)
        if self.is_lrp:
            check_supported(module, span, self.name, {i.name: i.calls for i in layers})
        composite = self.composite()
        base_map = composite.module_map

        def restricted_map(ctx, name, child):
            # Rules only where relevance flows; elsewhere the forward stays untouched.
            inside = name in span or name.rpartition(".")[0] in span
            return base_map(ctx, name, child) if inside else None

        composite.module_map = restricted_map
        composite.register(module)
        self._set_active(composite, False)
        self._attached = composite
        try:
            yield self
        finally:
            self._attached = None
            composite.remove()

    @staticmethod
    def _set_active(composite: Composite, active: bool) -> None:
        for hook in composite.hook_refs:
            hook.active = active

    def relevance(
        self,
        outputs: Mapping[str, torch.Tensor],
        directions: Mapping[str, torch.Tensor],
        taps: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        """Relevance of every tap position for each image's target, in one backward pass.

        Parameters
        ----------
        outputs
            Raw layer outputs of one forward pass with a graph (taps and target layers).
        directions
            Target layer → (B, C) directions; rows of images whose target is elsewhere are 0.
        taps
            Layers to return relevance for.

        Returns
        -------
        dict
            Tap → (B, C, P) relevance, detached (0 where no relevance arrives).
        """
        if self.composite is not None and self._attached is None:
            raise RuntimeError(f"relevance backend {self.name!r} is used without attached()")
        starts = [outputs[layer] for layer in directions]
        seeds = [
            self.seed(outputs[layer].detach(), direction.to(outputs[layer].device))
            for layer, direction in directions.items()
        ]
        ends = [outputs[tap] for tap in taps]
        if self._attached is not None:
            self._set_active(self._attached, True)
        try:
            gradients = torch.autograd.grad(
                starts, ends, grad_outputs=seeds, retain_graph=True, allow_unused=True
            )
        finally:
            if self._attached is not None:
                self._set_active(self._attached, False)
        relevance = {}
        for tap, end, gradient in zip(taps, ends, gradients, strict=True):
            value = torch.zeros_like(end) if gradient is None else gradient.detach()
            if self.times_activation:
                value = value * end.detach()
            relevance[tap] = to_positions(value)
        return relevance


def modules_between(
    layers: Sequence[LayerInfo], taps: Sequence[str], targets: Sequence[str]
) -> set[str]:
    """Names of the modules that run after the lowest tap ends and before the last target ends."""
    by_name = {info.name: info for info in layers}
    floor = min(by_name[t].end for t in taps) if taps else -1
    ceiling = max(by_name[t].end for t in targets)
    return {info.name for info in layers if info.start > floor and info.end <= ceiling}


def check_supported(
    module: nn.Module, names: set[str], backend: str, calls: Mapping[str, int] | None = None
) -> None:
    """Raise a :class:`VitalError` naming the first module that the LRP rules do not cover.

    ``calls`` (module name → calls per forward pass) flags weighted layers used at several
    places, whose rule would mix up the inputs of its calls.
    """
    gates = _classes(GATES)
    neutral = (*NEUTRAL, ResidualSum, *_classes(NEUTRAL_BY_NAME))
    rules = ACTIVATIONS + NORMS + LINEAR + AVERAGE_POOLS
    calls = calls or {}
    for name, child in module.named_modules():
        if name not in names:
            continue
        problem = ""
        if isinstance(child, gates):
            problem = "multiplies features by a computed gate, which no LRP rule here covers"
        elif not list(child.children()) and not isinstance(child, rules + neutral):
            problem = "has no LRP rule"
        elif isinstance(child, LINEAR) and calls.get(name, 1) > 1:
            problem = "is the same module used at several places"
        if problem:
            raise VitalError(
                f"relevance backend {backend!r}: layer {name!r} ({type(child).__name__}) "
                f"{problem}; use --relevance grad-x-act (gradient × activation, works for "
                "any differentiable model), or target a layer below it."
            )


def _composite_backends() -> dict[str, RelevanceBackend]:
    names = (
        "epsilon_plus",
        "epsilon_plus_flat",
        "epsilon_alpha2_beta1",
        "epsilon_alpha2_beta1_flat",
        "excitation_backprop",
    )
    return {
        n.replace("_", "-"): RelevanceBackend(
            n.replace("_", "-"), activation_seed, _zennit_composite(n), is_lrp=True
        )
        for n in names
        if n in COMPOSITES
    }


BACKENDS: dict[str, RelevanceBackend] = {
    "lrp": RelevanceBackend("lrp", activation_seed, vital_composite, is_lrp=True),
    "lrp-restricted": RelevanceBackend(
        "lrp-restricted", restricted_seed, vital_composite, is_lrp=True
    ),
    "guided-backprop": RelevanceBackend(
        "guided-backprop", gradient_seed, guided_backprop_composite
    ),
    "grad-x-act": RelevanceBackend("grad-x-act", gradient_seed, times_activation=True),
    **_composite_backends(),
}


def get_backend(name: str | RelevanceBackend) -> RelevanceBackend:
    """A backend by name (or the backend itself)."""
    if isinstance(name, RelevanceBackend):
        return name
    if name not in BACKENDS:
        raise VitalError(
            f"unknown relevance backend {name!r}; choose one of {', '.join(BACKENDS)}."
        )
    return BACKENDS[name]


__all__ = [
    "BACKENDS",
    "RelevanceBackend",
    "get_backend",
    "projection",
    "target_activation",
    "vital_composite",
]
