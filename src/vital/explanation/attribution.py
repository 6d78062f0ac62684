"""Which channels of a layer carried a prediction, and where each sits in the image.

Concept relevance in the manner of zennit-crp's "glocal" explanations, on vital's relevance
backends (:mod:`vital.relevance`): relevance starts at the explained class's logit (LRP: the
logit's value; gradient backends: its gradient), flows through the whole network with the
backend's zennit rules, and is read at the layer's output, where summing over positions gives
every channel's relevance (signed), and at the input (the heatmap). A channel's *conditional*
heatmap is the relevance that flows through that channel only: the relevance at the layer with
every other channel masked out, propagated on to the input. The rules are linear in the
relevance they receive, so the conditional heatmaps of all channels add up to the heatmap.

The rules are the backend's (its composite, canonizers and seed; for transformers under ``lrp``,
AttnLRP's rules, with relevance carried as a gradient and read as gradient × activation, as the
backend does), attached to every module from the input to the logits; the explained layer is
never rewritten. A transformer layer's tokens are its positions and its embedding dimensions
its channels. Relevance needs modules: where an architecture pools features with a
function rather than a module (torchvision's MobileNetV2 and DenseNet), the forward is routed
through a pooling module for the run (:class:`PooledHeadCanonizer`, from the table
:data:`POOLED_HEADS`), so that the average-pool rule spreads relevance over positions in
proportion to the activations instead of evenly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vital.errors import VitalError
from vital.presets import classes_named
from vital.relevance import RelevanceBackend, attention, check_supported, get_backend
from vital.relevance.canonizers import POOLED_HEADS, PooledHeadCanonizer
from vital.relevance.rules import AVERAGE_POOLS
from vital.relevance.seeds import gradient_seed, restricted_seed
from vital.taps import check_target_layer, list_layers, resolved_layout, tapped
from vital.zoo import Model


def pools_with_a_module(model: Model, layer: str) -> bool:
    """Whether an average-pool module runs after ``layer`` (or the model is in the table)."""
    if type(model.module) in classes_named(list(POOLED_HEADS)):
        return True
    layers = list_layers(model.module, model.preprocessing.input_size)
    end = next(info.end for info in layers if info.name == layer)
    pools = {cls.__name__ for cls in AVERAGE_POOLS}
    return any(info.kind in pools and info.start > end for info in layers)


@dataclass
class ChannelRelevance:
    """A prediction and the relevance of a layer's channels for one class.

    Attributes
    ----------
    probabilities
        (classes,) softmax of the logits.
    logits
        (classes,) the model's output.
    target
        The explained class.
    layer, backend
        Where relevance is read, and how it was computed.
    relevance
        (C, H, W) relevance at the layer's output, channels first whatever the layer's own
        layout (tokens: (C, T)).
    activation
        The layer's output on the image, same shape.
    heatmap
        (H, W) relevance at the input pixels, summed over colour channels.
    notes
        Caveats about this explanation (e.g. relevance that could not be localised).
    """

    probabilities: torch.Tensor
    logits: torch.Tensor
    target: int
    layer: str
    backend: str
    relevance: torch.Tensor
    activation: torch.Tensor
    heatmap: torch.Tensor
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> torch.Tensor:
        """(C,) each channel's relevance, summed over positions (signed)."""
        return self.relevance.flatten(1).sum(dim=1)

    @property
    def shares(self) -> torch.Tensor:
        """(C,) each channel's relevance as a share of the layer's absolute total."""
        channels = self.channels
        total = channels.abs().sum()
        return channels / total if total > 0 else torch.zeros_like(channels)

    def top(self, count: int) -> list[int]:
        """The ``count`` channels with the highest (most positive) relevance, best first.

        Where no channel has positive relevance (the image is evidence against the class at
        this layer), the channels that speak most against it, most negative first: channels
        of relevance 0 would explain nothing. :meth:`sign_notes` says which it is.
        """
        channels = self.channels
        against = not bool((channels > 0).any())
        order = torch.argsort(channels, descending=not against, stable=True)
        return [int(c) for c in order[:count]]

    def sign_notes(self) -> list[str]:
        """What the sign of the layer's relevance means for the channels shown, when it matters."""
        channels = self.channels
        total, absolute = float(channels.sum()), float(channels.abs().sum())
        if absolute == 0:
            return [
                f"the class's relevance at {self.layer} is 0 in every channel: its score does "
                "not depend on this layer's channels on this image (untrained weights or a head "
                "of zeros do this), so no channel explains it and the ranking is arbitrary."
            ]
        if total > 0:
            return []
        notes = [
            f"the class's relevance at {self.layer} is {total:.4g}, not positive: on this image "
            "the layer's evidence is against the class (an explanation of why it is not the "
            "prediction, rather than why it is)."
        ]
        if not bool((channels > 0).any()):
            notes.append(
                "no channel has positive relevance: the channels shown are the ones most against "
                "the class, most negative first."
            )
        return notes


def _channels_first(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """A layer output with channels on axis 1: maps (B, C, H, W), tokens (B, D, T)."""
    if layout == "NHWC":
        return tensor.permute(0, 3, 1, 2)
    return tensor.transpose(1, 2) if layout == "NLC" else tensor


def _own_layout(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """The inverse of :func:`_channels_first`."""
    if layout == "NHWC":
        return tensor.permute(0, 2, 3, 1)
    return tensor.transpose(1, 2) if layout == "NLC" else tensor


class Attributor:
    """Relevance of a layer's channels for a class, and conditional heatmaps (see the module).

    Use :func:`attributor` to attach it. ``attributor(...)(pixels)`` explains an image;
    :meth:`conditional` then gives the heatmaps of chosen channels for that image.
    """

    def __init__(self, model: Model, layer: str, backend: RelevanceBackend, tap, notes, gradient):
        self.model = model
        self.layer = layer
        self.backend = backend
        self._tap = tap
        self._notes = notes
        # Rules that carry relevance as a gradient (the transformer rules): read × activation.
        self._gradient_form = gradient
        self._graph: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._layout = "NCHW"

    def __call__(self, pixels: torch.Tensor, target: int | None = None) -> ChannelRelevance:
        """Explain one image.

        Parameters
        ----------
        pixels
            (3, H, W) in [0, 1], at the model's input size.
        target
            The class to explain; default: the predicted one.
        """
        model = self.model
        x = model.preprocessing.normalize(pixels[None].to(model.device, model.dtype))
        x.requires_grad_(True)
        with torch.enable_grad():
            logits = model.module(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = (
                f"shape {tuple(logits.shape)}"
                if isinstance(logits, torch.Tensor)
                else f"a {type(logits).__name__}"
            )
            raise VitalError(
                f"the model's output is {shape}, not one score per class (batch, classes); "
                "relevance to a class needs a classifier (wrap the model so that it returns "
                "its logits)."
            )
        activation = self._tap.outputs.get(self.layer)
        if activation is None:
            raise VitalError(
                f"layer {self.layer!r} does not run once the relevance rules are attached (they "
                "rewrite a residual block's forward, which then skips its stochastic-depth or "
                "drop-path module); choose the block itself or a layer inside its branch, or "
                "relevance='grad-x-act'."
            )
        if activation.dim() not in (3, 4):
            raise VitalError(
                f"layer {self.layer!r} has output shape {tuple(activation.shape)}; explain a "
                "layer with (B, C, H, W) or (B, H, W, C) maps or (B, T, D) tokens."
            )
        self._layout = resolved_layout(activation, self._tap.layout(self.layer))
        chosen = int(logits[0].argmax()) if target is None else int(target)
        if not 0 <= chosen < logits.shape[1]:
            raise VitalError(
                f"class {chosen} does not exist: the model has {logits.shape[1]} classes."
            )
        start = F.one_hot(torch.tensor([chosen]), logits.shape[1]).to(logits)
        seed = (gradient_seed if self._gradient_form else self.backend.seed)(logits.detach(), start)
        at_layer, at_input = torch.autograd.grad(
            logits, [activation, x], grad_outputs=seed, retain_graph=True
        )
        self._graph = (x, activation, at_layer)
        relevance = _channels_first(self._times_activation(at_layer, activation), self._layout)
        heatmap = self._times_activation(at_input, x).sum(dim=1)[0]
        return ChannelRelevance(
            probabilities=logits.detach()[0].softmax(dim=0).cpu(),
            logits=logits.detach()[0].cpu(),
            target=chosen,
            layer=self.layer,
            backend=self.backend.name,
            relevance=relevance[0].detach().cpu(),
            activation=_channels_first(activation.detach(), self._layout)[0].cpu(),
            heatmap=heatmap.detach().cpu(),
            notes=list(self._notes),
        )

    def _times_activation(self, gradient: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if self.backend.times_activation or self._gradient_form:
            return gradient * value.detach()
        return gradient

    def _mask(self, mask: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """A channel index or a channels-first mask, in the layer output's own layout."""
        first = _channels_first(like, self._layout)  # (1, C, ...)
        if isinstance(mask, int):
            mask = F.one_hot(torch.tensor(mask), first.shape[1])
        mask = torch.as_tensor(mask).to(like)
        if mask.dim() == 1:  # over channels, every position
            mask = mask.view(-1, *([1] * (first.dim() - 2)))
        return _own_layout(mask[None].expand_as(first), self._layout)

    def conditional(
        self,
        masks: Sequence[torch.Tensor] | Sequence[int],
        on_heatmap: Callable[[int], None] = lambda count: None,
    ) -> torch.Tensor:
        """Heatmaps of the relevance that flows through parts of the layer only.

        Parameters
        ----------
        masks
            Channel indices, or masks over the layer's output, channels first: ``(C,)`` over
            channels, or ``(C, H, W)`` / ``(C, T)`` over channels and positions; one per heatmap.
        on_heatmap
            Called with 1 after each heatmap (each is a relevance pass: hundreds take minutes).

        Returns
        -------
        torch.Tensor
            (K, H, W) input relevance, summed over colour channels.
        """
        if self._graph is None:
            raise RuntimeError("explain an image first")
        x, activation, at_layer = self._graph
        heatmaps = []
        for mask in masks:
            (at_input,) = torch.autograd.grad(
                activation,
                x,
                grad_outputs=at_layer * self._mask(mask, at_layer),
                retain_graph=True,
            )
            heatmaps.append(self._times_activation(at_input, x).sum(dim=1)[0].detach().cpu())
            on_heatmap(1)
        return torch.stack(heatmaps)


def _composite(backend: RelevanceBackend, keep: frozenset[int]):
    """The backend's zennit composite with the pooled-head canonizer."""
    composite = backend.composite(keep)
    composite.canonizers = [*(composite.canonizers or []), PooledHeadCanonizer()]
    return composite


@contextmanager
def attributor(
    model: Model, layer: str, backend: str | RelevanceBackend = "lrp"
) -> Iterator[Attributor]:
    """Attach the relevance rules to the whole model and a tap to ``layer`` while the block runs.

    Parameters
    ----------
    model
        The classifier.
    layer
        The layer whose channels are explained.
    backend
        A relevance backend name (``lrp``, ``grad-x-act``, ``guided-backprop``, a zennit
        composite such as ``epsilon-plus``) or a backend.

    Raises
    ------
    VitalError
        For an unknown layer or backend, a backend that starts at a position of an inner
        layer (``lrp-restricted``), or a module the rules do not cover.
    """
    check_target_layer(
        layer, model.module, model.preprocessing.input_size, model_name=model.zoo_name
    )
    chosen = get_backend(backend)
    if chosen.seed is restricted_seed:
        raise VitalError(
            f"relevance backend {chosen.name!r} starts from a position of an inner layer; an "
            "explanation starts at the class logit: use lrp (default), an epsilon composite, "
            "guided-backprop or grad-x-act."
        )
    layers = list_layers(model.module, model.preprocessing.input_size)
    names = {i.name for i in layers}
    transformer = chosen.transformer_rules and attention.applies(model.module, names)
    if transformer:
        attention.check_covered(model.module, names, chosen.name)
    elif chosen.is_lrp:
        check_supported(model.module, names, chosen.name, {i.name: i.calls for i in layers})
    notes = []
    if chosen.composite is not None and not transformer and not pools_with_a_module(model, layer):
        notes.append(
            "no average-pool module runs after this layer (the model pools with a function), "
            "so the rules spread relevance evenly over its positions: channel totals hold, "
            "heatmaps do not localise."
        )
    # The composite may fold BatchNorms into convolutions while attached: fingerprint first.
    model.fingerprint  # noqa: B018
    keep = frozenset({id(dict(model.module.named_modules())[layer])})
    if transformer:
        rules = attention.attention_rules(model.module, names)
    elif chosen.composite is not None:
        rules = _composite(chosen, keep).context(model.module)
    else:
        rules = nullcontext()
    with rules as switch:
        if isinstance(switch, attention.Switch):
            switch.active = True  # relevance in every backward pass while explaining
        with tapped(model.module, [layer]) as tap:
            yield Attributor(model, layer, chosen, tap, notes, gradient=transformer)
