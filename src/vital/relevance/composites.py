"""Composites: which rule goes where, and which modules relevance may cross.

:func:`vital_composite` is the authors' rule set (METHOD.md section 3); zennit's named
composites get the residual split and the gate rule; :func:`check_supported` refuses models
that contain a module no rule covers, or a block whose forward adds or multiplies two computed
tensors that no canonizer or rule handles, naming it.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.fx
from torch import nn
from zennit.composites import COMPOSITES, LayerMapComposite
from zennit.core import Composite
from zennit.rules import Norm, ReLUGuidedBackprop

from vital.errors import VitalError
from vital.presets import GATES, NEUTRAL_BY_NAME, REFUSED, RESIDUAL_FLAGS, classes_named
from vital.relevance.canonizers import (
    RESIDUAL_FORWARDS,
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


def _without_gate_interiors(composite: Composite) -> Composite:
    """Give the modules inside a gate (:data:`~vital.presets.GATES`) no rule of their own.

    The gate's own pass-through rule already decides the relevance at its input (its hook
    replaces whatever gradient arrives there) and hands its interior no relevance at all, so
    rules inside would only run for nothing, and the gate's sigmoid has no rule to give.
    """
    base_map = composite.module_map
    gates = classes_named(GATES)

    def module_map(ctx, name, child):
        # named_modules() visits a gate before its interior.
        inside = ctx.setdefault("gates", [])
        if any(name.startswith(gate + ".") for gate in inside):
            return None
        if isinstance(child, gates):
            inside.append(name)
        return base_map(ctx, name, child)

    composite.module_map = module_map
    return composite


def vital_composite(keep: frozenset[int] = frozenset()) -> Composite:
    """The authors' LRP rule set (METHOD.md section 3) as a zennit composite.

    Extended beyond the authors' set (which met no gates) by the gate rule: a
    squeeze-excitation gate ``x · s(x)`` passes all relevance to ``x`` (see
    :data:`~vital.presets.GATES`).

    ``keep``: ids of the modules whose outputs are read (taps, targets); they are not rewritten.
    """
    composite = LayerMapComposite(
        layer_map=[
            (classes_named(GATES), PassThrough()),
            (ACTIVATIONS, PassThrough()),
            (NORMS, PassThrough()),
            (ResidualSum, AbsoluteShare(EPSILON)),
            (AVERAGE_POOLS, Norm(EPSILON)),
            (MAX_POOLS, MaxPoolAsAverage(EPSILON)),
            (LINEAR, ZPlus(EPSILON)),
        ],
        canonizers=[FoldBatchNorm(keep), ResidualSplitCanonizer(), OutOfPlaceCanonizer()],
    )
    return _without_gate_interiors(composite)


def zennit_composite(name: str) -> Callable[[frozenset[int]], Composite]:
    """A builder of zennit's composite ``name`` with the residual split and canonizers."""

    def build(keep: frozenset[int] = frozenset()) -> Composite:
        # zennit's composites have no rule for a two-input sum or a gate: they get ours.
        composite = COMPOSITES[name](
            layer_map=[
                (ResidualSum, AbsoluteShare(EPSILON)),
                (classes_named(GATES), PassThrough()),
            ],
            canonizers=[
                MergeBatchNormKeeping(keep),
                ResidualSplitCanonizer(),
                OutOfPlaceCanonizer(),
            ],
        )
        return _without_gate_interiors(composite)

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


class _OwnForward(torch.fx.Tracer):
    """Traces a block's own forward only: every child module stays one call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


# Sums (and differences), whose relevance a gradient would copy whole into both operands.
_SUMS = {
    *(operator.add, operator.iadd, torch.add, "add", "add_"),
    *(operator.sub, operator.isub, torch.sub, "sub", "sub_"),
}
# Products (and quotients, matrix products), whose relevance a gradient would not share out.
_PRODUCTS = {
    *(operator.mul, operator.imul, torch.mul, "mul", "mul_"),
    *(operator.truediv, operator.itruediv, torch.div, "div", "div_"),
    *(operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"),
}
# Calls that read a tensor's shape or type, not its values: what they return is no feature.
_QUERIES = {"size", "dim", "numel", "shape", "dtype", "device", "ndim"}


def combines_computed_tensors(block: nn.Module) -> str:
    """What in ``block``'s own forward adds or multiplies two computed tensors, or ``""``.

    Such a sum (a residual connection) needs the residual split, and such a product (a gate)
    a rule of its own; in a block no canonizer or rule knows, relevance would instead pass
    the operation as a gradient: copied whole into both branches of a sum. The forward is
    traced symbolically with every child as one call (:mod:`torch.fx`); a forward that cannot
    be traced is reported too, since it cannot be checked.
    """
    # Options after the input (timm's ``pre_logits=False``) are traced at their defaults.
    parameters = list(inspect.signature(block.forward).parameters.values())[1:]
    options = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    try:
        graph = _OwnForward().trace(block, concrete_args=options or None)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "cannot check"
        return f"has a forward that cannot be checked for residual sums ({type(error).__name__})"
    features: set[torch.fx.Node] = set()
    for node in graph.nodes:
        arguments = [a for a in node.args if isinstance(a, torch.fx.Node) and a in features]
        # Parameters and buffers (``get_attr``) are constants for relevance: a learned shift
        # or scale is no second branch.
        if node.op in ("placeholder", "call_module"):
            features.add(node)
        elif node.op in ("call_function", "call_method") and arguments:
            query = node.target in _QUERIES or (
                node.target is getattr and len(node.args) > 1 and node.args[1] in _QUERIES
            )
            if not query:
                features.add(node)
        if node.op not in ("call_function", "call_method") or len(arguments) < 2:
            continue
        if node.target in _SUMS:
            return "adds or subtracts two computed tensors (a residual sum) that nothing splits"
        if node.target in _PRODUCTS:
            return "multiplies or divides two computed tensors (a gate) that no rule covers"
    return ""


def check_supported(
    module: nn.Module, names: set[str], backend: str, calls: Mapping[str, int] | None = None
) -> None:
    """Raise a :class:`VitalError` naming the first module that the LRP rules do not cover.

    Modules inside a gate (:data:`~vital.presets.GATES`) are not checked: the gate rule
    passes relevance around them. Every other block with a forward of its own, except the
    residual blocks the canonizer rewrites, is checked for sums and products of computed
    tensors (:func:`combines_computed_tensors`), so that no residual is crossed unsplit.
    ``calls`` (module name → calls per forward pass) flags weighted layers used at several
    places, whose rule would mix up the inputs of its calls.
    """
    gates = classes_named(GATES)
    refused = dict(zip(classes_named(list(REFUSED)), REFUSED.values(), strict=False))
    neutral = (*NEUTRAL, ResidualSum, *classes_named(NEUTRAL_BY_NAME))
    rules = ACTIVATIONS + NORMS + LINEAR + AVERAGE_POOLS
    residual = (*classes_named(list(RESIDUAL_FLAGS)), *classes_named(list(RESIDUAL_FORWARDS)))
    calls = calls or {}
    inside: list[str] = []
    blocks: list[tuple[str, nn.Module]] = []
    for name, child in module.named_modules():
        if any(name.startswith(gate + ".") for gate in inside):
            continue
        if isinstance(child, gates):
            inside.append(name)
        if name not in names:
            continue
        problem = ""
        if type(child) in refused:
            problem = refused[type(child)]
        elif isinstance(child, gates):
            continue
        elif not list(child.children()) and not isinstance(child, rules + neutral):
            problem = "has no LRP rule"
        elif isinstance(child, LINEAR) and calls.get(name, 1) > 1:
            problem = "is the same module used at several places"
        elif list(child.children()) and not isinstance(child, residual):
            blocks.append((name, child))
        if problem:
            _refuse(backend, name, child, problem)
    # The blocks that hold those modules (up to the model itself) combine their outputs too.
    holders = {prefix for name in names for prefix in _prefixes(name.rpartition(".")[0])}
    for name, child in module.named_modules():
        if name in holders and name not in names and not isinstance(child, residual + gates):
            if not any(name.startswith(gate + ".") for gate in inside):
                blocks.append((name, child))
    # Blocks last, so that a module without a rule is named before the block that holds it.
    for name, child in blocks:
        if type(child).forward in (nn.Sequential.forward, nn.Identity.forward):
            continue  # applies its children one after the other: nothing to combine
        problem = combines_computed_tensors(child)
        if problem:
            _refuse(backend, name, child, problem)


def _prefixes(name: str) -> list[str]:
    """``a.b.c`` → ``["", "a", "a.b", "a.b.c"]``: the module and every module above it."""
    parts = name.split(".") if name else []
    return ["", *(".".join(parts[: i + 1]) for i in range(len(parts)))]


def _refuse(backend: str, name: str, child: nn.Module, problem: str) -> None:
    where = f"layer {name!r}" if name else "the model's own forward"
    raise VitalError(
        f"relevance backend {backend!r}: {where} ({type(child).__name__}) "
        f"{problem}; use relevance=grad-x-act (gradient × activation, works for "
        "any differentiable model), or target a layer below it."
    )
