"""Composites: which rule goes where, and which modules relevance may cross.

:func:`vital_composite` is the authors' rule set (METHOD.md section 3); zennit's named
composites get the residual split; :func:`check_supported` refuses models that contain a module
no rule covers, naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import nn
from zennit.composites import COMPOSITES, LayerMapComposite
from zennit.core import Composite
from zennit.rules import Norm, ReLUGuidedBackprop

from vital.errors import VitalError
from vital.presets import GATES, NEUTRAL_BY_NAME, classes_named
from vital.relevance.canonizers import (
    FoldBatchNorm,
    MergeBatchNormKeeping,
    OutOfPlaceCanonizer,
    ResidualSplitCanonizer,
    ResidualSum,
)
from vital.relevance.rules import (
    ACTIVATIONS,
    AVERAGE_POOLS,
    EPSILON,
    LINEAR,
    MAX_POOLS,
    NEUTRAL,
    NORMS,
    AbsoluteShare,
    MaxPoolAsAverage,
    PassThrough,
    ZPlus,
)
from vital.taps import LayerInfo


def vital_composite(keep: frozenset[int] = frozenset()) -> Composite:
    """The authors' LRP rule set (METHOD.md section 3) as a zennit composite.

    ``keep``: ids of the modules whose outputs are read (taps, targets); they are not rewritten.
    """
    return LayerMapComposite(
        layer_map=[
            (ACTIVATIONS, PassThrough()),
            (NORMS, PassThrough()),
            (ResidualSum, AbsoluteShare(EPSILON)),
            (AVERAGE_POOLS, Norm(EPSILON)),
            (MAX_POOLS, MaxPoolAsAverage(EPSILON)),
            (LINEAR, ZPlus(EPSILON)),
        ],
        canonizers=[FoldBatchNorm(keep), ResidualSplitCanonizer(), OutOfPlaceCanonizer()],
    )


def zennit_composite(name: str) -> Callable[[frozenset[int]], Composite]:
    """A builder of zennit's composite ``name`` with the residual split and canonizers."""

    def build(keep: frozenset[int] = frozenset()) -> Composite:
        # zennit's composites have no rule for a two-input sum: they get the residual split.
        return COMPOSITES[name](
            layer_map=[(ResidualSum, AbsoluteShare(EPSILON))],
            canonizers=[
                MergeBatchNormKeeping(keep),
                ResidualSplitCanonizer(),
                OutOfPlaceCanonizer(),
            ],
        )

    return build


def guided_backprop_composite(keep: frozenset[int] = frozenset()) -> Composite:
    """Zennit's guided backpropagation, extended to ReLU6."""
    return LayerMapComposite(layer_map=[((nn.ReLU, nn.ReLU6), ReLUGuidedBackprop())])


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
    gates = classes_named(GATES)
    neutral = (*NEUTRAL, ResidualSum, *classes_named(NEUTRAL_BY_NAME))
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
