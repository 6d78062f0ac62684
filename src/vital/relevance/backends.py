"""Relevance backends: one small interface over LRP and gradient-based relevance.

A backend is built per run (:func:`get_backend`), attached to a model for the run
(:meth:`RelevanceBackend.attached`) and asked for relevance once per step. See the package
docstring for the available backends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from zennit.composites import COMPOSITES
from zennit.core import Composite

from vital.errors import VitalError
from vital.relevance import attention
from vital.relevance.attention import Switch
from vital.relevance.composites import (
    check_supported,
    guided_backprop_composite,
    modules_between,
    vital_composite,
    zennit_composite,
)
from vital.relevance.seeds import activation_seed, gradient_seed, restricted_seed, upward
from vital.taps import LayerInfo, to_positions


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
        Builds the zennit composite from the ids of the modules it must not rewrite (those
        whose outputs are read); ``None``: plain gradients.
    times_activation
        Multiply the gradient arriving at a tap by the tap's activation.
    is_lrp
        Whether the backend relies on LRP rules (and so refuses layers it has no rule for).
    transformer_rules
        Where relevance crosses attention blocks, use AttnLRP's rules (:mod:`.attention`)
        instead of the composite.
    upward
        Start relevance only where the target fires (:func:`.seeds.upward`), so that a signed
        unit's relevance shows what drives it up; off for ``lrp-restricted``, whose seed is
        already one position where the target is most aligned.
    """

    name: str
    seed: Callable[[torch.Tensor, torch.Tensor, str | None], torch.Tensor]
    composite: Callable[[frozenset[int]], Composite] | None = None
    times_activation: bool = False
    is_lrp: bool = False
    transformer_rules: bool = False
    upward: bool = True

    def __post_init__(self) -> None:
        self._attached: Composite | None = None
        self._switch: Switch | None = None

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
        if self.transformer_rules and attention.applies(module, span):
            attention.check_covered(module, span, self.name)
            with attention.attention_rules(module, span) as switch:
                self._switch = switch
                try:
                    yield self
                finally:
                    self._switch = None
            return
        if self.is_lrp:
            check_supported(module, span, self.name, {i.name: i.calls for i in layers})
        # Layers whose outputs are read keep returning them, whatever is folded for speed.
        modules = dict(module.named_modules())
        keep = frozenset(id(modules[name]) for name in (*taps, *targets))
        composite = self.composite(keep)
        base_map = composite.module_map

        def restricted_map(ctx, name, child):
            # Rules only where relevance flows; elsewhere the forward stays untouched.
            inside = name in span or name.rpartition(".")[0] in span
            return base_map(ctx, name, child) if inside else None

        composite.module_map = restricted_map
        composite.register(module)
        self._attached = composite
        self._activate(False)
        try:
            yield self
        finally:
            self._attached = None
            composite.remove()

    def _activate(self, active: bool) -> None:
        """Switch the attached rules on (relevance) or off (true gradients)."""
        if self._attached is not None:
            for hook in self._attached.hook_refs:
                hook.active = active
        if self._switch is not None:
            self._switch.active = active

    def relevance(
        self,
        outputs: Mapping[str, torch.Tensor],
        directions: Mapping[str, torch.Tensor],
        taps: Sequence[str],
        layouts: Mapping[str, str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Relevance of every tap position for each image's target, in one backward pass.

        The backend's seed starts only where each target fires (:func:`.seeds.upward`, unless
        the backend's ``upward`` is off).

        Parameters
        ----------
        outputs
            Raw layer outputs of one forward pass with a graph (taps and target layers).
        directions
            Target layer → (B, C) directions; rows of images whose target is elsewhere are 0.
        taps
            Layers to return relevance for.
        layouts
            Layer → layout of its output (``NCHW``, ``NHWC``, ``NLC``) where the shape does not
            tell (:meth:`vital.taps.FeatureTap.layout`).

        Returns
        -------
        dict
            Tap → (B, C, P) relevance, detached (0 where no relevance arrives).
        """
        if self.composite is not None and self._attached is None and self._switch is None:
            raise RuntimeError(f"relevance backend {self.name!r} is used without attached()")
        # The transformer rules carry relevance as a gradient, read as gradient × activation.
        gradient_form = self._switch is not None
        layouts = layouts or {}
        seed = gradient_seed if gradient_form else self.seed
        starts = [outputs[layer] for layer in directions]
        seeds = []
        for layer, direction in directions.items():
            output = outputs[layer].detach()
            direction = direction.to(output.device)
            start = seed(output, direction, layouts.get(layer))
            if self.upward:
                start = upward(start, output, direction, layouts.get(layer))
            seeds.append(start)
        ends = [outputs[tap] for tap in taps]
        self._activate(True)
        try:
            gradients = torch.autograd.grad(
                starts, ends, grad_outputs=seeds, retain_graph=True, allow_unused=True
            )
        finally:
            self._activate(False)
        relevance = {}
        for tap, end, gradient in zip(taps, ends, gradients, strict=True):
            value = torch.zeros_like(end) if gradient is None else gradient.detach()
            if self.times_activation or gradient_form:
                value = value * end.detach()
            relevance[tap] = to_positions(value, layouts.get(tap))
        return relevance


def _backend(name: str, seed, composite=None, **flags) -> Callable[[], RelevanceBackend]:
    return functools.partial(RelevanceBackend, name, seed, composite, **flags)


_ZENNIT_COMPOSITES = (
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "excitation_backprop",
)

# Name → factory: a backend holds the state of its attachment, so each run builds its own.
BACKENDS: dict[str, Callable[[], RelevanceBackend]] = {
    "lrp": _backend("lrp", activation_seed, vital_composite, is_lrp=True, transformer_rules=True),
    "lrp-restricted": _backend(
        "lrp-restricted", restricted_seed, vital_composite, is_lrp=True, upward=False
    ),
    "guided-backprop": _backend("guided-backprop", gradient_seed, guided_backprop_composite),
    "grad-x-act": _backend("grad-x-act", gradient_seed, times_activation=True),
    **{
        n.replace("_", "-"): _backend(
            n.replace("_", "-"), activation_seed, zennit_composite(n), is_lrp=True
        )
        for n in _ZENNIT_COMPOSITES
        if n in COMPOSITES
    },
}


def backend_name(name: object) -> object:
    """A backend's name as :data:`BACKENDS` spells it (``" GRAD-X-ACT"`` → ``grad-x-act``).

    Typed by people, like method and setting names, which are taken in any case too.
    """
    return name.strip().lower() if isinstance(name, str) else name


def get_backend(name: str | RelevanceBackend) -> RelevanceBackend:
    """A new backend by name, in any case (or a backend the caller built, as it is)."""
    if isinstance(name, RelevanceBackend):
        return name
    name = backend_name(name)
    if not isinstance(name, str) or name not in BACKENDS:
        raise VitalError(
            f"unknown relevance backend {name!r}; choose one of {', '.join(BACKENDS)}."
        )
    return BACKENDS[name]()
