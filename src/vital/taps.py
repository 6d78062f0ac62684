"""Where to read features: presets for the authors' architectures, discovery for any other model.

A *tap* is a named module whose output is read during the forward pass. Every tap output is
brought to (B, C, P): convolutional maps (B, C, H, W) become (B, C, H·W), transformer tokens
(B, T, D) become (B, D, T), so that tokens act as positions and embedding dimensions as channels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vital.errors import VitalError, close_matches
from vital.presets import PRESETS, Tap


@dataclass(frozen=True)
class LayerInfo:
    """A module seen during a forward pass.

    Attributes
    ----------
    name
        Dotted module name.
    kind
        Class name of the module.
    shape
        Output shape without the batch dimension (first tensor if the output is a tuple).
    start, end
        Order in which the module's forward started and finished (one counter for both), so
        that ``a.end < b.start`` means ``a`` is computed strictly before ``b``.
    calls
        How often the module ran in one forward pass; modules that run more than once (a ReLU
        reused inside a block) cannot be tapped unambiguously.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    start: int
    end: int
    calls: int

    @property
    def positions(self) -> int:
        """Number of spatial positions or tokens (1 for vectors)."""
        if len(self.shape) == 3:
            return self.shape[1] * self.shape[2]
        if len(self.shape) == 2:
            return self.shape[0]
        return 1

    @property
    def channels(self) -> int:
        """Channels (or embedding dimensions for tokens)."""
        return self.shape[-1] if len(self.shape) == 2 else self.shape[0]


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def list_layers(module: nn.Module, input_size: int = 224) -> list[LayerInfo]:
    """Run one forward pass on zeros and record every module's output shape, in order.

    Parameters
    ----------
    module
        The network.
    input_size
        Side of the square input.
    """
    counter = iter(range(1 << 30))
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    kinds: dict[str, str] = {}

    def pre_hook(name: str):
        def hook(_module, _inputs):
            starts.setdefault(name, next(counter))

        return hook

    def post_hook(name: str):
        def hook(submodule, _inputs, output):
            ends[name] = next(counter)
            calls[name] = calls.get(name, 0) + 1
            kinds[name] = type(submodule).__name__
            tensor = _first_tensor(output)
            if tensor is not None:
                shapes.setdefault(name, tuple(tensor.shape[1:]))

        return hook

    handles = []
    try:
        for name, submodule in module.named_modules():
            if name:
                handles.append(submodule.register_forward_pre_hook(pre_hook(name)))
                handles.append(submodule.register_forward_hook(post_hook(name)))
        like = next(module.parameters(), torch.zeros(()))
        with torch.no_grad():
            module(like.new_zeros(1, 3, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()
    return [
        LayerInfo(name, kinds[name], shapes[name], starts[name], ends[name], calls[name])
        for name in sorted(shapes, key=lambda n: ends[n])
    ]


def discover_taps(layers: Sequence[LayerInfo], count: int = 5) -> tuple[Tap, ...]:
    """Choose ``count`` taps for a model without a preset: the stem, then the ends of stages.

    Convolutional networks: modules are grouped into runs of equal spatial resolution (in
    execution order); each run is represented by its shallowest module that finishes last,
    which is the stage container when there is one. The stem is the first shallow module; the
    last ``count - 1`` runs give the stages. Transformers (a sequence of blocks with token
    outputs): the patch embedding, then ``count - 1`` blocks spread evenly over the sequence.
    """
    usable = [info for info in layers if info.calls == 1 and len(info.shape) in (2, 3)]
    spatial = [info for info in usable if len(info.shape) == 3 and info.positions > 1]
    blocks = _longest_block_sequence([info for info in usable if len(info.shape) == 2])
    if len(blocks) >= count - 1:
        stem = spatial[0] if spatial and spatial[0].end < blocks[0].start else blocks[0]
        picks = [round(i * (len(blocks) - 1) / (count - 2)) for i in range(count - 1)]
        return (Tap(stem.name), *(Tap(blocks[i].name) for i in dict.fromkeys(picks)))
    runs: list[list[LayerInfo]] = []
    for info in spatial:
        if runs and runs[-1][0].shape[1:] == info.shape[1:]:
            runs[-1].append(info)
        else:
            runs.append([info])
    runs = _merge_broken_runs(runs)
    if len(runs) < 2:
        raise VitalError(
            "could not find feature stages automatically; name the taps yourself with "
            "--tap NAME=WEIGHT (run `vital layers MODEL` to list them)."
        )
    shallowest = min(info.name.count(".") for info in runs[0])
    stem = next(info for info in runs[0] if info.name.count(".") == shallowest)
    stages = [
        _representative(run, not_before=previous[0])
        for previous, run in zip([runs[0], *runs], runs, strict=False)
    ]
    stages = [info for info in stages if info.name != stem.name][-(count - 1) :]
    return tuple(Tap(info.name) for info in (stem, *stages))


def _merge_broken_runs(runs: list[list[LayerInfo]]) -> list[list[LayerInfo]]:
    """Join runs of the same resolution separated by a detour (e.g. a squeeze-excite's 1×1)."""
    merged: list[list[LayerInfo]] = []
    for run in runs:
        if merged and merged[-1][0].shape[1:] == run[0].shape[1:]:
            merged[-1].extend(run)
        elif len(merged) >= 2 and merged[-2][0].shape[1:] == run[0].shape[1:]:
            merged[-2].extend(merged.pop())
            merged[-1].extend(run)
        else:
            merged.append(run)
    return merged


def _representative(run: list[LayerInfo], not_before: LayerInfo) -> LayerInfo:
    """The shallowest module of a run that finishes last, ignoring containers of earlier stages.

    A module that started before the previous run began (``features`` around a whole
    backbone) spans several stages and says nothing about this one.
    """
    inside = [info for info in run if info.start > not_before.start] or run
    depth = min(info.name.count(".") for info in inside)
    shallow = [info for info in inside if info.name.count(".") == depth]
    return max(shallow, key=lambda info: info.end)


def _longest_block_sequence(tokens: list[LayerInfo]) -> list[LayerInfo]:
    """Numbered siblings of one class (``blocks.0``, ``blocks.1``, …): the longest such group.

    Ties go to the shallowest parent, so blocks win over numbered parts inside each block.
    """
    groups: dict[tuple[str, str, str, tuple[int, ...]], list[LayerInfo]] = {}
    for info in tokens:
        parent, _, leaf = info.name.rpartition(".")
        stem = leaf.rstrip("0123456789")
        if stem != leaf:
            groups.setdefault((parent, stem, info.kind, info.shape), []).append(info)
    if not groups:
        return []
    return max(groups.values(), key=lambda group: (len(group), -group[0].name.count(".")))


def check_layer(name: str, module: nn.Module) -> None:
    """Raise a helpful error when ``name`` is not a module of ``module``."""
    names = [n for n, _ in module.named_modules() if n]
    if name not in names:
        hints = close_matches(name, names)
        hint = f"; did you mean {', '.join(repr(h) for h in hints)}?" if hints else "."
        raise VitalError(f"layer {name!r} not found{hint} Run `vital layers MODEL` to list them.")


def parse_taps(specs: Sequence[str]) -> tuple[Tap, ...]:
    """Parse ``["layer1=1", "layer4=0.5", "layer2"]`` into taps (weight 1 when omitted)."""
    taps = []
    for spec in specs:
        name, _, weight = spec.partition("=")
        try:
            taps.append(Tap(name.strip(), float(weight) if weight else 1.0))
        except ValueError as error:
            raise VitalError(
                f"tap {spec!r} is not NAME or NAME=WEIGHT (e.g. layer3=0.5)"
            ) from error
    return tuple(taps)


def to_positions(features: torch.Tensor) -> torch.Tensor:
    """Bring a tap output to (B, C, P): maps are flattened, token axes swapped."""
    if features.dim() == 4:
        return features.flatten(2)
    if features.dim() == 3:
        return features.transpose(1, 2)
    raise VitalError(
        f"a tap output of shape {tuple(features.shape)} has no positions; tap a layer with "
        "(B, C, H, W) or (B, T, D) output."
    )


class _StopForward(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a hook once every needed tap has been read, to skip the rest."""


class FeatureTap:
    """Read features from named modules during a forward pass.

    Use :func:`tapped` to attach it; the hooks are removed when the block ends, also on errors.
    """

    def __init__(self, module: nn.Module, layers: Sequence[str], stop_early: bool = False):
        for name in layers:
            check_layer(name, module)
        self.module = module
        self.layers = tuple(dict.fromkeys(layers))
        self.stop_early = stop_early
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> None:
        """Register the hooks."""
        modules = dict(self.module.named_modules())
        for name in self.layers:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def detach(self) -> None:
        """Remove every hook this object registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            tensor = _first_tensor(output)
            if tensor is None:
                raise VitalError(f"layer {name!r} returns no tensor; tap another layer.")
            self.outputs[name] = tensor
            if self.stop_early and len(self.outputs) == len(self.layers):
                raise _StopForward

        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on ``x`` and return every tap's output as (B, C, P)."""
        self.outputs = {}
        try:
            self.module(x)
        except _StopForward:
            pass
        missing = [name for name in self.layers if name not in self.outputs]
        if missing:
            raise VitalError(f"layers {missing} did not run in the forward pass; tap others.")
        try:
            return {name: to_positions(self.outputs[name]) for name in self.layers}
        except VitalError as error:
            bad = next(n for n in self.layers if self.outputs[n].dim() not in (3, 4))
            raise VitalError(f"layer {bad!r}: {error}") from error


@contextmanager
def tapped(
    module: nn.Module, layers: Sequence[str], stop_early: bool = False
) -> Iterator[FeatureTap]:
    """Attach a :class:`FeatureTap` for the duration of a ``with`` block.

    Parameters
    ----------
    module
        The network.
    layers
        Module names to read.
    stop_early
        Abort the forward pass once all taps are read (the rest of the network is not needed).
    """
    tap = FeatureTap(module, layers, stop_early)
    tap.attach()
    try:
        yield tap
    finally:
        tap.detach()


def default_taps(model_name: str, layers: Sequence[LayerInfo]) -> tuple[tuple[Tap, ...], str]:
    """Taps for class targets: the preset for ``model_name``, else discovered ones.

    Returns
    -------
    taps, how
        The taps and a phrase saying where they came from (for logs and records).
    """
    if model_name in PRESETS:
        return PRESETS[model_name], f"preset for {model_name}"
    return discover_taps(layers), "discovered automatically (stem + end of each stage)"
