"""Canonizers: temporary rewrites of a model so that the LRP rules apply (zennit's concept).

``ResidualSplitCanonizer`` routes residual sums through a :class:`ResidualSum` module (so that
a rule can split relevance between the branches), ``FoldBatchNorm`` folds positive-scale
BatchNorms into their convolutions (:func:`folded_batch_norms`: any scale, for the speed of a
step without relevance), ``OutOfPlaceCanonizer`` runs in-place activations out of
place, ``PooledHeadCanonizer`` routes a functional global average pool through a module (for
relevance from the logits, :mod:`vital.explanation`). Which blocks they touch is data in
:mod:`vital.presets` (the forwards they install are code, here, named there). Every
canonizer restores the model exactly on ``remove()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.core import collect_leaves

from vital import presets
from vital.presets import FOLDABLE_PAIRS, RESIDUAL_FLAGS, classes_named
from vital.relevance.rules import FOLDED_SCALE


class ResidualSum(nn.Module):
    """``shortcut + main`` as a module of its own, so that a rule can split relevance."""

    def forward(self, shortcut: torch.Tensor, main: torch.Tensor) -> torch.Tensor:
        """The residual sum."""
        return shortcut + main


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


def _regnet_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Torchvision's RegNet ``ResBottleneckBlock.forward``, the sum through ``canonizer_sum``."""
    shortcut = x if self.proj is None else self.proj(x)
    return self.activation(self.canonizer_sum(shortcut, self.f(x)))


def _timm_regnet_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The ``Bottleneck.forward`` of timm's RegNet with the sum through ``canonizer_sum``.

    timm's ``downsample`` is the shortcut (an identity, a projection, or ``None``: no shortcut).
    """
    main = self.conv3(self.se(self.conv2(self.conv1(x))))
    if self.downsample is not None:
        main = self.canonizer_sum(self.downsample(x), self.drop_path(main))
    return self.act3(main)


def _timm_tail(self, x: torch.Tensor, shortcut: torch.Tensor, act: nn.Module) -> torch.Tensor:
    """The end of timm's ResNet blocks: optional gate and drop path, the sum, the activation."""
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    shortcut = shortcut if self.downsample is None else self.downsample(shortcut)
    return act(self.canonizer_sum(shortcut, x))


def _timm_basic_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The ``BasicBlock.forward`` of timm's ResNet with the sum through ``canonizer_sum``."""
    out = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
    return _timm_tail(self, self.bn2(self.conv2(out)), x, self.act2)


def _timm_bottleneck_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The ``Bottleneck.forward`` of timm's ResNet with the sum through ``canonizer_sum``."""
    out = self.act1(self.bn1(self.conv1(x)))
    out = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(out)))))
    return _timm_tail(self, self.bn3(self.conv3(out)), x, self.act3)


# The forwards that :data:`vital.presets.RESIDUAL_FORWARDS` names, by name.
_FORWARDS: dict[str, Callable] = {
    "bottleneck": _bottleneck_forward,
    "basic_block": _basic_block_forward,
    "regnet": _regnet_forward,
    "timm_regnet": _timm_regnet_forward,
    "timm_basic_block": _timm_basic_block_forward,
    "timm_bottleneck": _timm_bottleneck_forward,
}
RESIDUAL_FORWARDS: dict[str, Callable] = {
    path: _FORWARDS[name] for path, name in presets.RESIDUAL_FORWARDS.items()
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
        flags = dict(
            zip(classes_named(list(RESIDUAL_FLAGS)), RESIDUAL_FLAGS.values(), strict=False)
        )
        forwards = dict(
            zip(classes_named(list(RESIDUAL_FORWARDS)), RESIDUAL_FORWARDS.values(), strict=False)
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
    stay (and pass relevance), unless ``positive_only`` is off (no relevance flows: the fold is
    then only the same forward pass in one module), and so do the pairs with a module in
    ``keep`` (ids of the modules whose output a tap or a target reads: a folded convolution
    would return the BatchNorm's output, a folded BatchNorm would not run). :meth:`remove`
    restores both modules.
    """

    def __init__(self, keep: frozenset[int] = frozenset(), positive_only: bool = True):
        self.keep = keep
        self.positive_only = positive_only
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
            zip(classes_named(list(FOLDABLE_PAIRS)), FOLDABLE_PAIRS.values(), strict=False)
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
                if self.keep.isdisjoint((id(conv), id(norm))) and self._foldable(conv, norm):
                    instance = self.copy()
                    instance.register(parent, norm_name, conv, norm)
                    instances.append(instance)
        return instances

    def _foldable(self, conv: nn.Module, norm: nn.Module) -> bool:
        return (
            type(conv) is nn.Conv2d
            # the convolutions whose z⁺ scales ε by the folded scale (ZPlus._conv2d)
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and type(norm) is nn.BatchNorm2d
            and not norm.training
            and norm.running_var is not None
            and norm.num_features == conv.out_channels
            and (not self.positive_only or bool((FoldBatchNorm._scale(norm) > 0).all()))
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
        # In the weight's own strides (see ``ZPlus._weight``): the product alone would make a
        # channels-last depthwise weight contiguous.
        folded = torch.empty_like(self.weight, memory_format=torch.preserve_format)
        torch.mul(self.weight.detach(), scale.view(-1, 1, 1, 1), out=folded)
        conv.weight = nn.Parameter(folded, requires_grad=False)
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
        return FoldBatchNorm(self.keep, self.positive_only)


@contextmanager
def folded_batch_norms(module: nn.Module, keep: Iterable[str] = ()) -> Iterator[None]:
    """Every foldable BatchNorm folded into its convolution while the block runs.

    The forward pass is the same up to float rounding, one module shorter per pair: on the
    CPU, MobileNetV2's forward and backward take about 18 % less time, ResNet-50's about 4 %
    (benchmarks/RESULTS.md, "Step cost: BatchNorms folded"). For steps that propagate no
    relevance (the relevance composites fold for themselves, positive scales only). The
    modules named in ``keep`` (taps, targets) and any module with hooks of its own keep
    returning their own outputs. The model is restored exactly at the end, also on errors.
    """
    modules = dict(module.named_modules())
    hook_kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    hooked = {id(m) for m in modules.values() if any(getattr(m, k, None) for k in hook_kinds)}
    kept = {id(modules[name]) for name in keep if name in modules} | hooked
    folds = FoldBatchNorm(frozenset(kept), positive_only=False).apply(module)
    try:
        yield
    finally:
        for fold in reversed(folds):
            fold.remove()


class MergeBatchNormKeeping(SequentialMergeBatchNorm):
    """zennit's BatchNorm merging for its named composites, except into layers in ``keep``.

    A linear layer whose output a tap or a target reads must keep returning its own output.
    """

    def __init__(self, keep: frozenset[int] = frozenset()):
        super().__init__()
        self.keep = keep

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Merge every BatchNorm that follows a linear layer not in ``keep``."""
        instances: list[Canonizer] = []
        last = None
        for leaf in collect_leaves(root_module):
            if (
                isinstance(last, self.linear_type)
                and isinstance(leaf, self.batch_norm_type)
                and id(last) not in self.keep
            ):
                instance = self.copy()
                instance.register((last,), leaf)
                instances.append(instance)
            last = leaf
        return instances

    def copy(self) -> MergeBatchNormKeeping:
        """A fresh canonizer with the same layers kept."""
        return MergeBatchNormKeeping(self.keep)


def _pooled_forward(features: str, classifier: str, activation: Callable | None = None):
    """A classifier's forward: features → [activation] → pooling module → flatten → head."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, features)(x)
        if activation is not None:
            x = activation(x)
        return getattr(self, classifier)(torch.flatten(self.canonizer_pool(x), 1))

    return forward


# :data:`vital.presets.POOLED_HEADS` as forwards that pool through a module.
_ACTIVATIONS: dict[str, Callable] = {"relu": F.relu}
POOLED_HEADS: dict[str, Callable] = {
    path: _pooled_forward(features, classifier, _ACTIVATIONS[act] if act else None)
    for path, (features, classifier, act) in presets.POOLED_HEADS.items()
}


class PooledHeadCanonizer(Canonizer):
    """Route a :data:`POOLED_HEADS` model's global average pool through a module for the run.

    The forward is the model's own with ``nn.functional.adaptive_avg_pool2d`` replaced by an
    ``nn.AdaptiveAvgPool2d`` (same output), which the relevance rules can hook.
    :meth:`remove` restores the model.
    """

    def __init__(self):
        self.module: nn.Module | None = None

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Canonize the root module if its class is in :data:`POOLED_HEADS`."""
        forwards = dict(zip(classes_named(list(POOLED_HEADS)), POOLED_HEADS.values(), strict=False))
        forward = forwards.get(type(root_module))
        if forward is None:
            return []
        instance = PooledHeadCanonizer()
        instance.register(root_module, forward)
        return [instance]

    def register(self, module: nn.Module, forward: Callable) -> None:
        """Give ``module`` a pooling module and a forward through it."""
        self.module = module
        module.canonizer_pool = nn.AdaptiveAvgPool2d(1)
        module.forward = forward.__get__(module)

    def remove(self) -> None:
        """Restore the model's own forward."""
        if self.module is not None:
            del self.module.forward
            del self.module.canonizer_pool
            self.module = None

    def copy(self) -> PooledHeadCanonizer:
        """A fresh canonizer."""
        return PooledHeadCanonizer()
