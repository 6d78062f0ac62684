"""``lrp`` across squeeze-excitation gates and the residuals around them.

The gate rule (a gate ``x · s(x)`` passes all relevance to ``x``, none into the branch that
computes ``s``) against an explicit reimplementation written here; the blocks ``lrp`` refuses
because it cannot split them; and the real families with gates (EfficientNet, MobileNetV3,
RegNetY), whose relevance must stay non-negative and conserved.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.efficientnet import MBConv, MBConvConfig
from torchvision.ops import SqueezeExcitation

from test_relevance import bn, conv_zplus, one_hot, split, upward_seed
from vital.errors import VitalError
from vital.relevance import BACKENDS, backends, composites, get_backend
from vital.taps import list_layers, tapped


def _randomise_norms(net: nn.Module, shift: bool = True) -> None:
    """Trained-like BatchNorms: random positive scales, random shifts unless ``shift`` is off."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            if shift:
                module.running_mean.uniform_(-0.3, 0.3)
                module.bias.data.uniform_(-0.2, 0.2)
            else:
                module.running_mean.zero_()
                module.bias.data.zero_()


class GatedNet(nn.Module):
    """Stem (convolution, BatchNorm, ReLU), a squeeze-excitation gate, an EfficientNet block
    (a residual with a flag and a gate of its own), a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.gate = SqueezeExcitation(8, 4)
        self.block = MBConv(MBConvConfig(2, 3, 1, 8, 8, 1), 0.0, nn.BatchNorm2d)
        self.head = nn.Conv2d(8, 6, 3, 1, 1)

    def forward(self, x):
        return self.head(self.block(self.gate(self.stem(x))))


def make_gated_net() -> GatedNet:
    torch.manual_seed(0)
    net = GatedNet()
    # Gates far from 0 and 1 in both directions, so that a wrong gate rule shows.
    for gate in (net.gate, net.block.block[2]):
        gate.fc2.bias.data.uniform_(-1.0, 1.0)
    _randomise_norms(net)
    return net.eval().requires_grad_(False).double()


TAPS = ["stem", "gate", "block"]


def gated_relevance(net, x, channels):
    layers = list_layers(net, x.shape[-1])
    chosen = get_backend("lrp")
    with (
        chosen.attached(net, layers, TAPS, ["head"]),
        tapped(net, [*TAPS, "head"], stop_early=True) as tap,
    ):
        tap(x.clone().requires_grad_(True))
        return chosen.relevance(tap.outputs, {"head": one_hot(channels)}, TAPS)


def _gate_scale(gate: SqueezeExcitation, x, activation):
    """A squeeze-excitation gate's per-channel scale, by hand."""
    squeezed = x.mean(dim=(2, 3), keepdim=True)
    hidden = activation(F.conv2d(squeezed, gate.fc1.weight, gate.fc1.bias))
    return torch.sigmoid(F.conv2d(hidden, gate.fc2.weight, gate.fc2.bias))


def explicit_gated_relevance(net: GatedNet, x, channels):
    """Forward by hand, then relevance from ``head`` channel k of each image down to the taps.

    z⁺ through every convolution, BatchNorm and activations passed, the residual split, and
    every gate a constant: the relevance at a gate's input is the relevance at its output.
    """
    stem = F.relu(bn(net.stem[1], F.conv2d(x, net.stem[0].weight, None, 1, 1)))
    gated = _gate_scale(net.gate, stem, F.relu) * stem
    expand, depthwise, inner_gate, project = net.block.block
    h1 = F.silu(bn(expand[1], F.conv2d(gated, expand[0].weight)))
    h2 = F.silu(bn(depthwise[1], F.conv2d(h1, depthwise[0].weight, None, 1, 1, 1, h1.shape[1])))
    h3 = _gate_scale(inner_gate, h2, F.silu) * h2
    main = bn(project[1], F.conv2d(h3, project[0].weight))
    block = gated + main
    head = F.conv2d(block, net.head.weight, net.head.bias, 1, 1)

    r_block = conv_zplus(block, net.head, upward_seed(head, channels))
    r_shortcut, r_main = split(gated, main, r_block)
    r_h3 = conv_zplus(h3, project[0], r_main)  # BatchNorm passes
    r_h2 = r_h3  # the inner gate: signal takes all
    r_h1 = conv_zplus(h1, depthwise[0], r_h2)  # SiLU and BatchNorm pass
    r_gated = r_shortcut + conv_zplus(gated, expand[0], r_h1)
    r_stem = r_gated  # the outer gate: signal takes all
    relevance = {"stem": r_stem, "gate": r_gated, "block": r_block}
    return {name: value.flatten(2) for name, value in relevance.items()}


def _gated_input():
    return torch.randn(
        2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )


def test_lrp_passes_gates_as_constants_and_matches_explicit_zplus():
    net = make_gated_net()
    x = _gated_input()
    channels = [1, 4]
    expected = explicit_gated_relevance(net, x, channels)
    got = gated_relevance(net, x, channels)
    for tap in TAPS:
        assert expected[tap].abs().max() > 1e-3  # relevance actually arrives
        torch.testing.assert_close(got[tap], expected[tap], atol=1e-6, rtol=1e-5)
    # The block is restored: its skip flag is back on, its own forward in place.
    assert net.block.use_res_connect and "forward" not in vars(net.block)


def test_relevance_leaking_into_the_gate_branch_is_caught():
    # The comparison above must be able to fail. Without the gate rule (and with the check
    # that would refuse the gate switched off), relevance follows the product's gradient into
    # the branch that computes the gate, under the rules of its convolutions: other numbers.
    net = make_gated_net()
    x = _gated_input()
    expected = explicit_gated_relevance(net, x, [1, 4])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(composites, "GATES", ())
        patch.setattr(backends, "check_supported", lambda *args, **kwargs: None)
        leaking = gated_relevance(net, x, [1, 4])
    assert not torch.allclose(leaking["stem"], expected["stem"], atol=1e-3)
    assert not torch.allclose(leaking["gate"], expected["gate"], atol=1e-3)


def test_rules_inside_a_gate_do_not_change_its_relevance():
    # zennit's hooks on a gate and on its children compose: the gate's rule replaces the
    # gradient arriving at its input whatever the children's rules did, so giving the children
    # no rule (as the composites do) only saves work.
    net = make_gated_net()
    x = _gated_input()
    expected = explicit_gated_relevance(net, x, [1, 4])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(composites, "_without_gate_interiors", lambda composite: composite)
        got = gated_relevance(net, x, [1, 4])
    for tap in TAPS:
        torch.testing.assert_close(got[tap], expected[tap], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_backend_runs_on_gated_blocks(backend):
    # zennit's named composites get the gate rule too.
    net = make_gated_net()
    layers = list_layers(net, 16)
    chosen = get_backend(backend)
    with chosen.attached(net, layers, TAPS, ["head"]), tapped(net, [*TAPS, "head"]) as tap:
        tap(_gated_input().requires_grad_(True))
        relevance = chosen.relevance(tap.outputs, {"head": one_hot([1, 4])}, TAPS)
    for tap_name in TAPS:
        assert torch.isfinite(relevance[tap_name]).all()
        assert relevance[tap_name].abs().sum() > 0


def test_without_the_gate_rule_the_gate_is_refused():
    # Not listed as a gate, the gate's interior is checked like any other module: its sigmoid
    # has no rule (and its product of two computed tensors none either, see below).
    net = make_gated_net()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(composites, "GATES", ())
        with pytest.raises(VitalError, match=r"'gate.scale_activation' \(Sigmoid\) has no LRP"):
            gated_relevance(net, _gated_input(), [1, 4])


# --- residuals lrp cannot split are refused ----------------------------------------------------


class UnknownResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, 1, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.conv(x))


class UnknownProduct(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        # Shape arithmetic is no feature: only the product of the two maps counts.
        y = self.a(x) * self.b(x)
        return y.reshape(x.shape[0], x.shape[1], x.size(2) * x.size(3)).view_as(x)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, 1, 1)

    def forward(self, x, scale: float = 2.0):
        return self.conv(x) * scale + 1.0  # a constant scale and shift: nothing to split


class LearnedShift(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, 1, 1)
        self.shift = nn.Parameter(torch.zeros(1, 8, 1, 1))

    def forward(self, x):
        return self.conv(x) + self.shift  # a parameter is a constant for relevance


class Difference(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, 1, 1)

    def forward(self, x):
        return x - self.conv(x)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (UnknownResidual(), r"'middle' \(UnknownResidual\) adds or subtracts two"),
        (Difference(), r"'middle' \(Difference\) adds or subtracts two"),
        (UnknownProduct(), r"'middle' \(UnknownProduct\) multiplies or divides two"),
        (Scaled(), None),
        (LearnedShift(), None),
    ],
)
def test_blocks_combining_computed_tensors_are_refused(block, message):
    net = nn.Sequential()
    net.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU()))
    net.add_module("middle", block)
    net.add_module("top", nn.Conv2d(8, 4, 3, 1, 1))
    net = net.eval().requires_grad_(False)
    x = torch.randn(1, 3, 8, 8)
    layers = list_layers(net, 8)
    if message is None:
        with get_backend("lrp").attached(net, layers, ["stem"], ["top"]):
            return
    with pytest.raises(VitalError, match=message):
        with get_backend("lrp").attached(net, layers, ["stem"], ["top"]):
            net(x)


class RootResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
        self.middle = nn.Conv2d(8, 8, 3, 1, 1)
        self.top = nn.Conv2d(8, 4, 3, 1, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.top(x + self.middle(x))


def test_a_residual_in_the_models_own_forward_is_refused():
    # The sum is in no block between the tap and the target, but in the model that holds them.
    net = RootResidual().eval().requires_grad_(False)
    layers = list_layers(net, 8)
    with pytest.raises(VitalError, match=r"the model's own forward \(RootResidual\) adds"):
        with get_backend("lrp").attached(net, layers, ["stem"], ["top"]):
            pass


# --- the real families with gates ----------------------------------------------------------


def _torchvision(name):
    import torchvision

    return lambda: getattr(torchvision.models, name)(weights=None)


def _timm(name):
    import timm

    return lambda: timm.create_model(name, pretrained=False)


FAMILIES = {
    # name: (model, taps below the target, an inner target: a block inside a later stage)
    "torchvision efficientnet_b0": (
        _torchvision("efficientnet_b0"),
        ["features.2"],
        "features.3.1",
    ),
    "torchvision mobilenet_v3_large": (
        _torchvision("mobilenet_v3_large"),
        ["features.3"],
        "features.6",
    ),
    "timm efficientnet_b0": (_timm("efficientnet_b0"), ["blocks.1"], "blocks.2.1"),
    "torchvision regnet_y_400mf": (
        _torchvision("regnet_y_400mf"),
        ["trunk_output.block1"],
        "trunk_output.block2.block2-1",
    ),
    "timm regnety_004": (_timm("regnety_004"), ["s1"], "s2.b1"),
    # no gates, but residual blocks newly split: timm's ResNet (``x += shortcut``), MNASNet
    "timm resnet18": (_timm("resnet18"), ["layer1"], "layer2"),
    "torchvision mnasnet0_5": (_torchvision("mnasnet0_5"), ["layers.8"], "layers.9"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lrp_on_real_families_is_non_negative_and_conserved(family, monkeypatch):
    make, taps, target = FAMILIES[family]
    torch.manual_seed(0)
    net = make()
    # BatchNorms without shifts: z⁺ ignores biases, so a shift can turn on a unit whose z⁺ is 0
    # and relevance arriving there is lost; without them only ε takes a (tiny) part.
    _randomise_norms(net, shift=False)
    net = net.eval().requires_grad_(False).double()
    size = 64
    x = torch.randn(
        1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    layers = list_layers(net, size)
    with tapped(net, [target], stop_early=True) as tap:
        plain = tap(x)[target]
    # Activations of these randomly initialised networks are small (~1e-3), where ε = 1e-5
    # would take percents: a negligible ε leaves only the rules to account for.
    monkeypatch.setattr(composites, "EPSILON", 1e-12)
    chosen = get_backend("lrp")
    with (
        chosen.attached(net, layers, taps, [target]),
        tapped(net, [*taps, target], stop_early=True) as tap,
    ):
        rewritten = tap(x.clone().requires_grad_(True))[target].detach()
        # A non-negative seed (the positive part of the target's activation), from which z⁺
        # gives non-negative relevance everywhere.
        positive = F.relu(tap.outputs[target])
        tap.outputs[target] = positive
        channel = int(positive[0].flatten(1).sum(1).argmax())
        directions = torch.zeros(1, positive.shape[1], dtype=torch.float64)
        directions[0, channel] = 1
        relevance = chosen.relevance(tap.outputs, {target: directions}, taps)
    # The rewritten blocks compute what the model's own do.
    torch.testing.assert_close(rewritten, plain, atol=1e-10, rtol=1e-8)
    seed = float(positive[0, channel].detach().sum())
    assert seed > 0
    for name in taps:
        value = relevance[name]
        assert torch.isfinite(value).all()
        assert value.min() >= 0
        # Conserved through every gate and residual split below the target.
        assert float(value.sum()) == pytest.approx(seed, rel=1e-4)
