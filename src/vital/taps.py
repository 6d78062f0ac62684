"""Where to read features: presets, the library's own feature metadata, discovery for the rest.

A *tap* is a named module whose output is read during the forward pass. Every tap output is
brought to (B, C, P): convolutional maps (B, C, H, W) become (B, C, H·W), channels-last maps
(B, H, W, C) (timm's Swin stages, some ConvNeXt variants) become (B, C, H·W) too, and
transformer tokens (B, T, D) become (B, D, T), so that tokens act as positions and embedding
dimensions as channels.

Default taps come, in this order, from a preset for the authors' architectures (``PRESETS``),
from the library's feature metadata (timm's ``feature_info``: the stage ends with their
reductions and channels), or from discovery over the module's output shapes.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from vital.errors import VitalError, close_matches, first_forward, is_number, plain
from vital.presets import PRESETS, Tap

# Layouts of a tap output, in timm's naming: channels-first and channels-last maps, tokens,
# vectors.
LAYOUTS = ("NCHW", "NHWC", "NLC", "NC")


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
    layout
        ``"NCHW"``, ``"NHWC"`` (channels-last maps), ``"NLC"`` (tokens), ``"NC"`` (vectors), or
        ``""`` for other ranks.
    stage_reduction
        For a stage end the library lists in its feature metadata (timm's ``feature_info``),
        its reduction (input side / feature side); ``None`` for other modules.
    passes_on
        The block (a direct child with a convolution or linear layer inside it) whose output
        this module returns as it is: a stage of blocks returns its last block's. ``None`` for
        other modules.
    returns
        The direct child, block or not, whose output this module returns as it is (a
        ``Sequential`` ending in a ReLU returns the ReLU's): the two are one tensor, matched
        once. ``None`` when the module computes its output itself.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    start: int
    end: int
    calls: int
    layout: str = "NCHW"
    stage_reduction: int | None = None
    passes_on: str | None = None
    returns: str | None = None

    @property
    def spatial(self) -> tuple[int, ...]:
        """(H, W) of a map, (T,) of tokens, () otherwise."""
        if self.layout == "NHWC":
            return self.shape[:2]
        if self.layout == "NCHW" and len(self.shape) == 3:
            return self.shape[1:]
        if self.layout == "NLC":
            return self.shape[:1]
        return ()

    @property
    def positions(self) -> int:
        """Number of spatial positions or tokens (1 for vectors)."""
        count = 1
        for side in self.spatial:
            count *= side
        return count

    @property
    def channels(self) -> int:
        """Channels (or embedding dimensions for tokens)."""
        return self.shape[-1] if self.layout in ("NHWC", "NLC") else self.shape[0]


def infer_layout(
    shape: Sequence[int], channels: int | None = None, declared: str | None = None
) -> str:
    """The layout of an output of ``shape`` (batch dimension excluded).

    Parameters
    ----------
    shape
        Output shape without the batch dimension.
    channels
        The channel count when metadata knows it (timm's ``feature_info``).
    declared
        ``"NCHW"`` or ``"NHWC"`` when it is known otherwise: the module declares its output
        format (timm's ``output_fmt``), or :func:`list_layers` saw it unambiguously.

    Maps are fed square, so without metadata the two equal sides are the spatial ones:
    (C, S, S) is channels-first, (S, S, C) channels-last. A cube (S, S, S) cannot be told apart;
    it is read channels-first (PyTorch's convention) with a warning.
    """
    layout = _layout_or_none(shape, channels, declared)
    if layout is None:
        warnings.warn(
            f"an output of shape {tuple(shape)} could be channels-first or channels-last; it is "
            "read as (C, H, W). If that layer is channels-last, tap another one.",
            stacklevel=3,
        )
        return "NCHW"
    return layout


def _layout_or_none(
    shape: Sequence[int], channels: int | None = None, declared: str | None = None
) -> str | None:
    """:func:`infer_layout`, with ``None`` for a cube that nothing disambiguates."""
    shape = tuple(shape)
    if len(shape) == 1:
        return "NC"
    if len(shape) == 2:
        return "NLC"
    if len(shape) != 3:
        return ""
    if declared in ("NCHW", "NHWC"):
        return declared
    first, second, last = shape
    if channels is not None and (first == channels) != (last == channels):
        return "NCHW" if first == channels else "NHWC"
    if second == last and first != second:
        return "NCHW"
    if first == second and second != last:
        return "NHWC"
    return None if first == second == last else "NCHW"


@dataclass(frozen=True)
class _Seen:
    """What :func:`list_layers` saw of a model's layouts (at its own input size)."""

    layouts: dict[str, str]
    channels_last: bool


# Per module object, so that a map that is a cube at another resolution (32 channels at 32 x 32)
# keeps the layout it showed when the layers were listed.
_SEEN_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, _Seen] = weakref.WeakKeyDictionary()


def library_stages(module: nn.Module) -> dict[str, tuple[int, int]]:
    """The stage ends a library lists for ``module``: name → (reduction, channels).

    Reads timm's ``feature_info`` (a list of dicts on classifiers, a ``FeatureInfo`` on
    ``features_only`` models); entries that name no module of ``module`` are ignored, and a
    module without such metadata gives an empty dict.
    """
    info = getattr(module, "feature_info", None)
    if hasattr(info, "get_dicts"):
        info = info.get_dicts()
    if not isinstance(info, (list, tuple)):
        return {}
    names = {name for name, _ in module.named_modules() if name}
    stages = {}
    for entry in info:
        if isinstance(entry, dict) and entry.get("module") in names:
            try:
                stages[entry["module"]] = (int(entry["reduction"]), int(entry["num_chs"]))
            except (KeyError, TypeError, ValueError):
                continue
    return stages


def declared_layouts(module: nn.Module) -> dict[str, str]:
    """Output formats modules declare (timm's ``output_fmt``): name → ``NCHW`` or ``NHWC``.

    A model-level ``output_fmt`` (timm's Swin says ``NHWC``) applies to its stage ends.
    """
    declared = {}
    for name, submodule in module.named_modules():
        layout = str(getattr(getattr(submodule, "output_fmt", None), "value", "") or "")
        if layout not in ("NCHW", "NHWC"):
            layout = str(getattr(submodule, "output_fmt", "") or "")
        if layout in ("NCHW", "NHWC"):
            if name:
                declared[name] = layout
            else:
                declared.update({stage: layout for stage in library_stages(module)})
    return declared


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def list_layers(module: nn.Module, input_size: int = 224) -> list[LayerInfo]:
    """Run one forward pass on zeros and record every module's output shape, in order.

    Each layer's layout (channels-first or channels-last, tokens) and, where the library lists
    it as a stage end (timm's ``feature_info``), its reduction are recorded too. In a model
    with channels-last outputs, a map that is a cube at this size (C = H = W) is told apart by
    a second pass 32 px larger where the model accepts one.

    Parameters
    ----------
    module
        The network.
    input_size
        Side of the square input.
    """
    if not isinstance(module, nn.Module):
        raise VitalError(
            f"list_layers takes the network (an nn.Module, e.g. model.module), not "
            f"{type(module).__name__}."
        )
    from vital.zoo import unwrapped  # the layers of the module vital runs, named as it does

    module = unwrapped(module)
    starts, ends, shapes, calls, kinds, passes_on, returns = _trace(module, input_size)
    stages = library_stages(module)
    declared = declared_layouts(module)

    def layout(name: str, shape: tuple[int, ...]) -> str | None:
        return _layout_or_none(shape, stages.get(name, (0, None))[1], declared.get(name))

    layouts = {name: layout(name, shape) for name, shape in shapes.items()}
    channels_last = "NHWC" in layouts.values() or "NHWC" in declared.values()
    unresolved = [name for name, value in layouts.items() if value is None]
    if unresolved and channels_last:
        try:
            other = _trace(module, input_size + 32)[2]
        except Exception:  # noqa: BLE001 - models with a fixed input size refuse other sizes
            other = {}
        for name in unresolved:
            if name in other:
                layouts[name] = layout(name, other[name])
    elif unresolved:  # no channels-last output anywhere: PyTorch's convention holds
        layouts.update(dict.fromkeys(unresolved, "NCHW"))
    _SEEN_LAYOUTS[module] = _Seen(
        {name: value for name, value in layouts.items() if value}, channels_last
    )
    return [
        LayerInfo(
            name,
            kinds[name],
            shapes[name],
            starts[name],
            ends[name],
            calls[name],
            layouts[name] or "NCHW",  # still ambiguous: warned about when it is tapped
            stages[name][0] if name in stages else None,
            passes_on.get(name),
            returns.get(name),
        )
        for name in sorted(shapes, key=lambda n: ends[n])
    ]


_COMPUTING = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear,
)  # fmt: skip


def _trace(module: nn.Module, input_size: int) -> tuple[dict, dict, dict, dict, dict, dict, dict]:
    """One forward pass on zeros with hooks on every module.

    Returns starts, ends, shapes, calls, kinds, and for each module that returns the output of
    one of its blocks as it is (a stage of blocks), that block's name (``passes_on``), and of
    one of its children, block or not, that child's (``returns``).
    """
    counter = iter(range(1 << 30))
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    kinds: dict[str, str] = {}
    passes_on: dict[str, str] = {}
    returns: dict[str, str] = {}
    blocks = _blocks(module)
    # each parent's last finished block, and last finished child, with its output
    finished_block: dict[str, tuple[str, object]] = {}
    finished_child: dict[str, tuple[str, object]] = {}

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
            for finished, found in ((finished_block, passes_on), (finished_child, returns)):
                child, child_output = finished.pop(name, (None, None))
                if calls[name] == 1 and tensor is not None and child_output is tensor:
                    found[name] = child
            parent = name.rpartition(".")[0]
            finished_child[parent] = (name, tensor)
            if name in blocks:
                finished_block[parent] = (name, tensor)

        return hook

    handles = []
    try:
        for name, submodule in module.named_modules():
            if name:
                handles.append(submodule.register_forward_pre_hook(pre_hook(name)))
                handles.append(submodule.register_forward_hook(post_hook(name)))
        like = next(module.parameters(), torch.zeros(()))
        with torch.no_grad(), first_forward(input_size):
            module(like.new_zeros(1, 3, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()
    return starts, ends, shapes, calls, kinds, passes_on, returns


def same_tensor(layers: Sequence[LayerInfo] | Mapping[str, LayerInfo], name: str) -> str:
    """The innermost module whose output ``name`` returns as it is (``name`` itself if none).

    Two layers with the same answer are one tensor (a ``Sequential`` and its last ReLU, a
    stage and its last block): matched under both names, it would weigh twice.
    """
    info = layers if isinstance(layers, Mapping) else {i.name: i for i in layers}
    seen = {name}
    while name in info and (inner := info[name].returns) is not None and inner not in seen:
        seen.add(name := inner)
    return name


def computes(module: nn.Module) -> bool:
    """Whether ``module`` is or holds a convolution or linear layer.

    Such a module computes features of its own, where a normalisation, an activation or a
    dropout only transforms its input channel by channel.
    """
    return any(isinstance(inner, _COMPUTING) for inner in module.modules())


def _blocks(module: nn.Module) -> set[str]:
    """Modules with children and a convolution or linear layer inside them.

    A block computes features of its own; a normalisation with its activation (timm's
    ``BatchNormAct2d``) has children but is no block.
    """
    return {
        name
        for name, sub in module.named_modules()
        if name and next(sub.children(), None) is not None and computes(sub)
    }


def discover_taps(layers: Sequence[LayerInfo], count: int = 5) -> tuple[Tap, ...]:
    """Choose ``count`` taps for a model without a preset: the stem, then the ends of stages.

    Convolutional networks: modules are grouped into runs of equal spatial resolution (in
    execution order); each run is represented by its shallowest module that finishes last,
    which is the stage container when there is one. The stem is the first shallow module; the
    last ``count - 1`` runs give the stages. Transformers (a sequence of blocks with token
    outputs): the patch embedding, then ``count - 1`` blocks spread evenly over the sequence.
    """
    usable = [info for info in layers if info.calls == 1 and info.layout in LAYOUTS[:3]]
    spatial = [info for info in usable if info.layout != "NLC" and info.positions > 1]
    blocks = _longest_block_sequence([info for info in usable if info.layout == "NLC"])
    if len(blocks) >= count - 1:
        stem = spatial[0] if spatial and spatial[0].end < blocks[0].start else blocks[0]
        picks = [round(i * (len(blocks) - 1) / (count - 2)) for i in range(count - 1)]
        return (Tap(stem.name), *(Tap(blocks[i].name) for i in dict.fromkeys(picks)))
    runs: list[list[LayerInfo]] = []
    for info in spatial:
        if runs and runs[-1][0].spatial == info.spatial:
            runs[-1].append(info)
        else:
            runs.append([info])
    runs = _merge_broken_runs(runs)
    if len(runs) < 2:
        raise VitalError(
            "could not find feature stages automatically; name the taps yourself "
            "(taps=['NAME=WEIGHT'], one per layer; run `vital layers MODEL` to list them)."
        )
    shallowest = min(info.name.count(".") for info in runs[0])
    stem = next(info for info in runs[0] if info.name.count(".") == shallowest)
    stages = [
        _representative(run, not_before=previous[0])
        for previous, run in zip([runs[0], *runs], runs, strict=False)
    ]
    # a stage that is the stem's tensor under another name (a stem `Sequential` and its ReLU)
    # would weigh the stem twice
    by_name = {info.name: info for info in layers}
    stem_tensor = same_tensor(by_name, stem.name)
    stages = [info for info in stages if same_tensor(by_name, info.name) != stem_tensor]
    stages = stages[-(count - 1) :]
    return tuple(Tap(info.name) for info in (stem, *stages))


def _merge_broken_runs(runs: list[list[LayerInfo]]) -> list[list[LayerInfo]]:
    """Join runs of the same resolution separated by a detour (e.g. a squeeze-excite's 1×1)."""
    merged: list[list[LayerInfo]] = []
    for run in runs:
        if merged and merged[-1][0].spatial == run[0].spatial:
            merged[-1].extend(run)
        elif len(merged) >= 2 and merged[-2][0].spatial == run[0].spatial:
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


def check_positions(info: LayerInfo, model_name: str | None, so: str) -> None:
    """Refuse a layer whose output has no positions (a vector), saying what that rules out.

    ``so`` ends the message's first clause: "so it has no patches to mine".
    """
    if len(info.shape) not in (2, 3):
        raise VitalError(
            f"layer {info.name!r} has no positions (its output is {tuple(info.shape)}, not a "
            f"(C, H, W) map or (T, D) tokens), {so}; choose another layer (run "
            f"{layers_command(model_name)})."
        )


def layers_command(model_name: str | None = None) -> str:
    """The command that lists a model's layers: its name where the zoo loads it, else ``MODEL``.

    Looked up only here, when a message is written (the first lookup imports timm): a name
    the zoo does not know (a test's ``tiny_cnn``) would send the user to an error.
    """
    from vital.zoo import knows

    return f"`vital layers {model_name if model_name and knows(model_name) else 'MODEL'}`"


def check_layer(name: str, module: nn.Module, model_name: str | None = None) -> None:
    """Raise a helpful error when ``name`` is not a module of ``module``.

    ``model_name`` (:attr:`vital.Model.zoo_name`) names the model in the advice.
    """
    if not isinstance(name, str):  # layer=None would reach difflib as a TypeError
        raise VitalError(f"a layer is named by its module name (text), not {name!r}.")
    names = [n for n, _ in module.named_modules() if n]
    if name not in names:
        hints = close_matches(name, names)
        hint = f"; did you mean {', '.join(repr(h) for h in hints)}?" if hints else "."
        raise VitalError(
            f"layer {name!r} not found{hint} Run {layers_command(model_name)} to list them."
        )


def check_runs_once(
    name: str, layers: Sequence[LayerInfo], what: str = "layer", model_name: str | None = None
) -> None:
    """Refuse a layer that runs several times in one forward pass, or never.

    A module used at several places (a shared activation, a block applied twice) has no single
    output: a hook would read one of its calls and say nothing of the others. ``model_name``
    names the model in the advice.
    """
    info = {layer.name: layer for layer in layers}
    if name in info and info[name].calls > 1:
        raise VitalError(
            f"{what} {name!r} runs {info[name].calls} times in one forward pass (one module used "
            "at several places), so it has no single output to read; choose a module that runs "
            f"once ({layers_command(model_name)} marks the others)."
        )


def check_target_layer(
    name: str,
    module: nn.Module,
    input_size: int,
    layers: Sequence[LayerInfo] | None = None,
    model_name: str | None = None,
) -> None:
    """Refuse a layer to read a unit from that is not a module, never runs, or runs twice.

    ``layers`` is :func:`list_layers`' answer when the caller has it already; ``model_name``
    (:attr:`vital.Model.zoo_name`) names the model in the advice.
    """
    check_layer(name, module, model_name)
    layers = list_layers(module, input_size) if layers is None else layers
    # list_layers holds the modules that return a tensor; one missing may not run at all
    if all(layer.name != name for layer in layers) and name not in _trace(module, input_size)[3]:
        raise VitalError(
            f"layer {name!r} does not run in the model's forward pass; choose one that does "
            f"(run {layers_command(model_name)})."
        )
    check_runs_once(name, layers, model_name=model_name)


def parse_taps(specs: Sequence[str]) -> tuple[Tap, ...]:
    """Parse ``["layer1=1", "layer4=0.5", "layer2"]`` into taps (weight 1 when omitted)."""
    return user_taps(specs)


def _mapped_tap(name: object, weight: object) -> Tap:
    """One ``{layer: weight}`` entry as a tap."""
    weight = plain(weight)
    if not isinstance(name, str) or isinstance(weight, bool) or not is_number(weight):
        raise VitalError(
            f"taps given as a mapping are {{layer name: weight}} (e.g. {{'layer3': 0.5}}), not "
            f"{{{name!r}: {weight!r}}}."
        )
    return Tap(name.strip(), float(weight))


def _parsed_tap(spec: str) -> Tap:
    if not isinstance(spec, str):
        raise VitalError(f"a tap is a Tap or NAME=WEIGHT text (e.g. layer3=0.5), not {spec!r}.")
    name, _, weight = spec.partition("=")
    try:
        value = float(weight) if weight else 1.0
    except ValueError as error:
        raise VitalError(f"tap {spec!r} is not NAME or NAME=WEIGHT (e.g. layer3=0.5)") from error
    return Tap(name.strip(), value)


def user_taps(taps: Sequence[str | Tap]) -> tuple[Tap, ...]:
    """Taps as the user gave them (``Tap`` or ``"NAME=WEIGHT"``), each layer at most once.

    A single ``Tap`` or string is one tap (not a sequence of its characters). At least one
    weight must be positive: with every weight 0 the loss would have no term at all.
    """
    if isinstance(taps, (str, Tap)):
        taps = [taps]
    if isinstance(taps, Mapping):
        # {layer: weight} would iterate as its layers alone, each at weight 1
        taps = [_mapped_tap(name, weight) for name, weight in taps.items()]
    chosen = tuple(t if isinstance(t, Tap) else _parsed_tap(t) for t in taps)
    names = [tap.layer for tap in chosen]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # which weight would count is anyone's guess: say so rather than pick one
        raise VitalError(f"tap {twice[0]!r} is given twice; give each layer once (NAME=WEIGHT).")
    if chosen and not any(tap.weight > 0 for tap in chosen):
        raise VitalError(
            "every tap given has weight 0, so the loss would match nothing: give at least one "
            "tap a positive weight (NAME=WEIGHT), or leave the taps out for the model's own."
        )
    return chosen


def resolved_layout(features: torch.Tensor, layout: str | None = None) -> str:
    """``NCHW``, ``NHWC`` (4-D maps) or ``NLC`` (3-D tokens) of an output with a batch axis."""
    if features.dim() == 3:
        return "NLC"
    return layout or _layout_or_none(tuple(features.shape[1:])) or "NCHW"


def from_positions(values: torch.Tensor, like: torch.Tensor, layout: str | None = None):
    """The inverse of :func:`to_positions`: (B, C, P) back to ``like``'s shape and layout."""
    if like.dim() == 2:
        return values.squeeze(-1)
    layout = resolved_layout(like, layout)
    if layout == "NHWC":
        return values.transpose(1, 2).reshape(like.shape)
    if layout == "NCHW":
        return values.reshape(like.shape)
    return values.transpose(1, 2)


def to_positions(features: torch.Tensor, layout: str | None = None) -> torch.Tensor:
    """Bring a tap output to (B, C, P): maps are flattened, token axes swapped.

    Parameters
    ----------
    features
        A tap output: (B, C, H, W), (B, H, W, C) or (B, T, D).
    layout
        ``"NCHW"``, ``"NHWC"`` or ``"NLC"``; ``None`` infers it from the shape
        (:func:`infer_layout`), reading a cube (C = H = W) as channels-first: callers that
        know the layout (:meth:`FeatureTap.layout`) pass it.
    """
    if features.dim() in (3, 4):
        layout = resolved_layout(features, layout)
        if layout == "NHWC":
            return features.flatten(1, 2).transpose(1, 2)
        if layout == "NCHW":
            return features.flatten(2)
        return features.transpose(1, 2)
    raise VitalError(
        f"a tap output of shape {tuple(features.shape)} has no positions; tap a layer with "
        "(B, C, H, W), (B, H, W, C) or (B, T, D) output."
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
        stages = library_stages(module)
        declared = declared_layouts(module)
        self._channels = {name: stages[name][1] for name in self.layers if name in stages}
        self._declared = {name: declared[name] for name in self.layers if name in declared}
        self._declares_channels_last = "NHWC" in declared.values()
        self._input_size = 0
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._listeners: list[Callable[[str, torch.Tensor], None]] = []

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
            for listener in self._listeners:
                listener(name, tensor)
            if self.stop_early and len(self.outputs) == len(self.layers):
                raise _StopForward

        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on ``x`` and return every tap's output as (B, C, P)."""
        self.outputs = {}
        self._input_size = int(x.shape[-1])
        try:
            self.module(x)
        except _StopForward:
            pass
        missing = [name for name in self.layers if name not in self.outputs]
        if missing:
            raise VitalError(
                f"layers {missing} did not run in the forward pass; choose others (where "
                "relevance rules are attached, they rewrite a residual block's forward, which "
                "then skips its stochastic-depth or drop-path module: choose the block itself "
                "or a layer inside its branch, or relevance='grad-x-act')."
            )
        try:
            return {
                name: to_positions(self.outputs[name], self.layout(name)) for name in self.layers
            }
        except VitalError as error:
            bad = next(n for n in self.layers if self.outputs[n].dim() not in (3, 4))
            raise VitalError(f"layer {bad!r}: {error}") from error

    def notify(self, listener: Callable[[str, torch.Tensor], None]) -> None:
        """Call ``listener(name, output)`` as each tap's output is read, during the forward pass.

        For work that can start before the pass ends (the sort of an early tap's features).
        """
        self._listeners.append(listener)

    def known_layout(self, name: str) -> str | None:
        """:meth:`layout` where it is known without running the model; else ``None``.

        Safe inside a forward pass: :meth:`layout` may list the layers at another size to tell
        a cube's layout (C = H = W); this answers ``None`` for a cube until that was done.
        """
        if name not in self.outputs:
            raise VitalError(
                f"no output of {name!r} was read yet: a layout is that of the last output read, "
                "so call the tap on an input first."
            )
        shape = tuple(self.outputs[name].shape[1:])
        layout = _layout_or_none(shape, self._channels.get(name), self._declared.get(name))
        if layout is not None:
            return layout
        seen = _SEEN_LAYOUTS.get(self.module)
        if seen is None:
            return None
        if name in seen.layouts:
            return seen.layouts[name]
        if not (seen.channels_last or self._declares_channels_last):
            return "NCHW"
        return None

    def layout(self, name: str) -> str:
        """Layout of the last output read at ``name``.

        From the library's metadata, else the output's shape; a cube (C = H = W) keeps the
        layout :func:`list_layers` saw (listing the layers once at another size if nothing
        did yet), and is channels-first in a model without channels-last outputs.
        """
        layout = self.known_layout(name)
        if layout is None and self.module not in _SEEN_LAYOUTS:
            self._look_at_another_size()
            layout = self.known_layout(name)
        # else ambiguous in a channels-last model: infer_layout warns
        return layout or infer_layout(tuple(self.outputs[name].shape[1:]))

    def _look_at_another_size(self) -> _Seen:
        """Run :func:`list_layers` 32 px larger (without this tap's hooks) and keep what it saw."""
        attached = bool(self._handles)
        self.detach()
        try:
            list_layers(self.module, self._input_size + 32)
        except Exception:  # noqa: BLE001 - a model with a fixed input size refuses other sizes
            _SEEN_LAYOUTS[self.module] = _Seen({}, False)
        finally:
            if attached:
                self.attach()
        return _SEEN_LAYOUTS[self.module]


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


def library_taps(layers: Sequence[LayerInfo], count: int = 5) -> tuple[Tap, ...]:
    """Taps from the stage ends the library lists (``LayerInfo.stage_reduction``).

    The last listed module of each reduction ends a stage. With ``count`` or more stages the
    deepest ``count`` are the taps (the first acting as the stem, as timm's ResNet ``act1``
    does); with fewer, the stem is the shallowest module before the first stage (as in
    :func:`discover_taps`). Transformers list every block at one reduction: the stem, then
    ``count - 1`` blocks spread evenly. Empty when the library lists no stage.
    """
    listed = [info for info in layers if info.stage_reduction is not None and info.calls == 1]
    if not listed:
        return ()
    last_of: dict[int, LayerInfo] = {}
    for info in listed:
        last_of[info.stage_reduction] = info
    stages = sorted(last_of.values(), key=lambda info: info.end)
    if len(stages) == 1 and len(listed) > 1:  # blocks of a transformer
        picks = [round(i * (len(listed) - 1) / (count - 2)) for i in range(count - 1)]
        stages = [listed[i] for i in dict.fromkeys(picks)]
    elif len(stages) >= count:
        return tuple(Tap(info.name) for info in stages[-count:])
    before = [
        info
        for info in layers
        if info.calls == 1
        and info.end < stages[0].start
        and info.layout in ("NCHW", "NHWC")
        and info.positions > 1
    ]
    if not before:
        return tuple(Tap(info.name) for info in stages)
    first = [info for info in before if info.spatial == before[0].spatial]
    depth = min(info.name.count(".") for info in first)
    stem = max((i for i in first if i.name.count(".") == depth), key=lambda info: info.end)
    return (Tap(stem.name), *(Tap(info.name) for info in stages))


def default_taps(model_name: str, layers: Sequence[LayerInfo]) -> tuple[tuple[Tap, ...], str]:
    """Taps for class targets: the preset, else the library's stages, else discovered ones.

    Parameters
    ----------
    model_name
        Selects a preset (``PRESETS``).
    layers
        :func:`list_layers` of the model; it carries the library's stage metadata.

    Returns
    -------
    taps, how
        The taps and a phrase saying where they came from (for logs and records).
    """
    if model_name in PRESETS:
        return PRESETS[model_name], f"preset for {model_name}"
    from_library = library_taps(layers)
    if from_library:
        return from_library, "timm feature_info: the library's stage ends"
    return discover_taps(layers), "discovered automatically (stem + end of each stage)"
