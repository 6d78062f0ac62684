"""Relevance backends against an explicit, slow z⁺ implementation written here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn
from torch.ops import aten
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock

from vital.errors import VitalError
from vital.relevance import BACKENDS, get_backend
from vital.relevance.rules import ZPlus, same_pads
from vital.relevance.seeds import activation_seed, gradient_seed, restricted_seed, upward
from vital.taps import list_layers, tapped

EPS = 1e-5


class TwoBlockNet(nn.Module):
    """Stem, a ResNet basic block, a MobileNetV2 inverted residual (linear bottleneck), a head."""

    def __init__(self, norm: bool = True, head_bias: bool = True):
        super().__init__()
        norm_layer = nn.BatchNorm2d if norm else nn.Identity
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), norm_layer(8), nn.ReLU())
        self.block1 = BasicBlock(8, 8, norm_layer=norm_layer)
        self.block2 = InvertedResidual(8, 8, 1, 2, norm_layer=norm_layer)
        self.head = nn.Conv2d(8, 6, 3, 1, 1, bias=head_bias)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.pool(self.head(self.block2(self.block1(self.stem(x))))).flatten(1))


def make_net(seed: int = 0, **kwargs) -> TwoBlockNet:
    torch.manual_seed(seed)
    net = TwoBlockNet(**kwargs)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval().requires_grad_(False).double()


TAPS = ["stem", "block1"]


def backend_relevance(net, x, layer, directions, backend="lrp", taps=TAPS):
    layers = list_layers(net, x.shape[-1])
    chosen = get_backend(backend)
    with (
        chosen.attached(net, layers, taps, [layer]),
        tapped(net, [*taps, layer], stop_early=True) as tap,
    ):
        tap(x.clone().requires_grad_(True))
        return chosen.relevance(tap.outputs, {layer: directions}, taps)


# --- the explicit reference -------------------------------------------------------------------


def upward_seed(output, channels):
    """Starting relevance written out: channel k's positive part, or 1 at its maximum where it
    is nowhere positive (docs/method.md, "Signed units"); every other channel 0."""
    seed = torch.zeros_like(output)
    for b, k in enumerate(channels):
        values = output[b, k]
        fires = values > 0
        seed[b, k] = values.clamp(min=0) if fires.any() else (values == values.max()).to(values)
    return seed


def conv_zplus(x, conv, relevance_out):
    """z⁺ through one convolution, written out: positive inputs with positive weights plus
    negative inputs with negative weights, bias ignored, ε-stabilised denominator."""
    w_pos, w_neg = conv.weight.clamp(min=0), conv.weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    options = dict(
        stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups
    )
    z = F.conv2d(x_pos, w_pos, **options) + F.conv2d(x_neg, w_neg, **options)
    s = relevance_out / (z + EPS * ((z == 0).double() + z.sign()))
    back = lambda w: torch.nn.grad.conv2d_input(x.shape, w, s, **options)  # noqa: E731
    return x_pos * back(w_pos) + x_neg * back(w_neg)


def split(shortcut, main, relevance):
    total = shortcut.abs() + main.abs() + EPS
    return shortcut.abs() / total * relevance, main.abs() / total * relevance


def bn(module, x):
    if isinstance(module, nn.Identity):
        return x
    return F.batch_norm(
        x, module.running_mean, module.running_var, module.weight, module.bias, False, 0, 1e-5
    )


def explicit_relevance(net: TwoBlockNet, x, channels):
    """Forward by hand, then relevance from ``head`` channel k of each image down to the taps."""
    stem = F.relu(bn(net.stem[1], F.conv2d(x, net.stem[0].weight, None, 2, 1)))
    b1 = net.block1
    u = F.relu(bn(b1.bn1, F.conv2d(stem, b1.conv1.weight, None, 1, 1)))
    main1 = bn(b1.bn2, F.conv2d(u, b1.conv2.weight, None, 1, 1))
    block1 = F.relu(main1 + stem)
    expand, depthwise, project, project_bn = net.block2.conv
    h1 = F.relu6(bn(expand[1], F.conv2d(block1, expand[0].weight)))
    h2 = F.relu6(bn(depthwise[1], F.conv2d(h1, depthwise[0].weight, None, 1, 1, 1, h1.shape[1])))
    main2 = bn(project_bn, F.conv2d(h2, project.weight))
    block2 = block1 + main2
    head = F.conv2d(block2, net.head.weight, net.head.bias, 1, 1)

    r_head = upward_seed(head, channels)
    r_block2 = conv_zplus(block2, net.head, r_head)
    r_short2, r_main2 = split(block1, main2, r_block2)
    r_h2 = conv_zplus(h2, project, r_main2)  # BatchNorm passes
    r_h1 = conv_zplus(h1, depthwise[0], r_h2)  # ReLU6 and BatchNorm pass
    r_block1 = r_short2 + conv_zplus(block1, expand[0], r_h1)
    r_short1, r_main1 = split(stem, main1, r_block1)  # the final ReLU passes
    r_u = conv_zplus(u, b1.conv2, r_main1)
    r_stem = r_short1 + conv_zplus(stem, b1.conv1, r_u)
    return {"stem": r_stem.flatten(2), "block1": r_block1.flatten(2)}, head


def one_hot(channels, count=6):
    directions = torch.zeros(len(channels), count, dtype=torch.float64)
    for row, k in enumerate(channels):
        directions[row, k] = 1
    return directions


def test_lrp_matches_explicit_zplus():
    net = make_net()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    channels = [0, 3, 5]
    expected, _ = explicit_relevance(net, x, channels)
    got = backend_relevance(net, x, "head", one_hot(channels))
    for tap in TAPS:
        assert expected[tap].abs().max() > 1e-3  # relevance actually arrives
        torch.testing.assert_close(got[tap], expected[tap], atol=1e-5, rtol=1e-5)


def test_lrp_differs_from_plain_gradient_times_activation():
    # The explicit comparison above must be able to fail: grad × act gives other numbers.
    net = make_net()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected, _ = explicit_relevance(net, x, [0, 1])
    other = backend_relevance(net, x, "head", one_hot([0, 1]), backend="grad-x-act")
    assert not torch.allclose(other["stem"], expected["stem"], atol=1e-3)


def test_model_is_restored_after_attaching():
    net = make_net()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    before = net(x)
    backend_relevance(net, x, "head", one_hot([0, 1]))
    assert net.block2.use_res_connect is True
    assert "forward" not in vars(net.block2) and "forward" not in vars(net.block1)
    torch.testing.assert_close(net(x), before, atol=0, rtol=0)


@pytest.mark.parametrize("backend", ["lrp", "lrp-restricted", "grad-x-act"])
def test_relevance_is_zero_outside_receptive_field(backend):
    net = make_net()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    layers = list_layers(net, 64)
    chosen = get_backend(backend)
    # A spatial target: channel 2 of `head` at one position only, where it fires (a positive
    # value inside the map's interior), given as a seed mask.
    with chosen.attached(net, layers, TAPS, ["head"]), tapped(net, [*TAPS, "head"]) as tap:
        tap(x.clone().requires_grad_(True))
        head = tap.outputs["head"]
        row, column = (int(v) + 6 for v in divmod(int(head[0, 2, 6:26, 6:26].argmax()), 20))
        assert head[0, 2, row, column] > 0
        restricted = backend == "lrp-restricted"
        if not restricted:
            # Keep only one position of the head by zeroing every other position's output.
            keep = torch.zeros_like(head)
            keep[..., row, column] = 1
            tap.outputs["head"] = head * keep
        relevance = chosen.relevance(tap.outputs, {"head": one_hot([2])}, TAPS)
        if restricted:
            flat = head.detach()[0].flatten(1)
            cosine = flat[2] / flat.norm(dim=0)
            row, column = divmod(int(cosine.argmax()), head.shape[-1])
    # Receptive radius at block1's output: head 3×3 and the depthwise 3×3 (2); at the stem,
    # plus block1's two 3×3 convolutions (4). Maps are 32×32.
    for tap_name, radius in (("block1", 2), ("stem", 4)):
        values = relevance[tap_name][0].view(8, 32, 32).abs().sum(0)
        inside = torch.zeros_like(values, dtype=torch.bool)
        inside[
            max(row - radius, 0) : row + radius + 1, max(column - radius, 0) : column + radius + 1
        ] = True
        assert values[inside].sum() > 0
        assert values[~inside].abs().max() == 0


def test_zplus_conserves_relevance_through_bias_free_layers():
    net = make_net(norm=False, head_bias=False)
    # Large activations make the stabiliser ε negligible, so conservation must be near exact.
    x = 1e4 * torch.randn(
        2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    channels = [1, 4]
    _, head = explicit_relevance(net, x, channels)
    got = backend_relevance(net, x, "head", one_hot(channels))
    seed_sum = torch.stack([head[b, k].clamp(min=0).sum() for b, k in enumerate(channels)])
    seed_size = torch.stack([head[b, k].abs().sum() for b, k in enumerate(channels)])
    for tap in TAPS:
        error = (got[tap].sum(dim=(1, 2)) - seed_sum).abs() / seed_size
        assert error.max() < 1e-5


def test_batched_targets_of_different_layers_equal_one_at_a_time():
    net = make_net()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    layers = list_layers(net, 32)
    backend = get_backend("lrp")
    # Image 0 targets head channel 3, image 1 targets block2 channel 5.
    head_directions = one_hot([3, 0])
    head_directions[1] = 0
    block_directions = torch.zeros(2, 8, dtype=torch.float64)
    block_directions[1, 5] = 1
    with (
        backend.attached(net, layers, TAPS, ["head", "block2"]),
        tapped(net, [*TAPS, "block2", "head"]) as tap,
    ):
        tap(x.clone().requires_grad_(True))
        batched = backend.relevance(
            tap.outputs, {"head": head_directions, "block2": block_directions}, TAPS
        )
    alone_head = backend_relevance(net, x[:1], "head", one_hot([3]))
    alone_block = backend_relevance(net, x[1:], "block2", block_directions[1:], taps=TAPS)
    for tap_name in TAPS:
        torch.testing.assert_close(batched[tap_name][:1], alone_head[tap_name], atol=1e-12, rtol=0)
        torch.testing.assert_close(batched[tap_name][1:], alone_block[tap_name], atol=1e-12, rtol=0)
        assert alone_block[tap_name].abs().sum() > 0


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
        self.middle = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.GroupNorm(2, 8), nn.ReLU())
        self.top = nn.Conv2d(8, 4, 3, 1, 1)

    def forward(self, x):
        return self.top(self.middle(self.stem(x)))


def test_unsupported_layer_is_named_and_grad_x_act_suggested():
    torch.manual_seed(0)
    net = GroupNormNet().eval().requires_grad_(False)
    x = torch.randn(1, 3, 16, 16)
    directions = torch.tensor([[1.0, 0, 0, 0]])
    with pytest.raises(VitalError) as error:
        backend_relevance(net, x, "top", directions, taps=["stem"])
    assert "'middle.1'" in str(error.value) and "GroupNorm" in str(error.value)
    assert "grad-x-act" in str(error.value)
    # The suggested fallback works on the same model.
    relevance = backend_relevance(net, x, "top", directions, backend="grad-x-act", taps=["stem"])
    assert relevance["stem"].abs().sum() > 0


def test_true_gradients_while_rules_are_attached():
    net = make_net()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    layers = list_layers(net, 32)

    def loss_gradient():
        image = x.clone().requires_grad_(True)
        with tapped(net, [*TAPS, "head"]) as tap:
            tap(image)
            if backend is not None:
                backend.relevance(tap.outputs, {"head": one_hot([0, 1])}, TAPS)
            loss = sum(o.pow(2).sum() for o in tap.outputs.values())
        loss.backward()
        return image.grad

    backend = None
    plain = loss_gradient()
    backend = get_backend("lrp")
    with backend.attached(net, layers, TAPS, ["head"]):
        attached = loss_gradient()
    torch.testing.assert_close(attached, plain, atol=1e-12, rtol=0)


def test_every_backend_runs_on_mobilenet_blocks():
    net = make_net()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    for name in BACKENDS:
        relevance = backend_relevance(net, x, "head", one_hot([1]), backend=name)
        assert relevance["stem"].shape == (1, 8, 256)
        assert torch.isfinite(relevance["stem"]).all()


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(VitalError, match="lrp-restricted"):
        get_backend("lrp-fancy")


class TimmBlockNet(nn.Module):
    """A stem and a timm EfficientNet inverted residual with its skip (bias-free convolutions,
    freshly initialised BatchNorm, which relevance passes)."""

    def __init__(self):
        from timm.models._efficientnet_blocks import InvertedResidual as TimmInvertedResidual

        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.ReLU())
        self.block = TimmInvertedResidual(8, 8, exp_ratio=2.0)
        self.head = nn.Conv2d(8, 6, 3, 1, 1, bias=False)

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def test_timm_inverted_residual_matches_explicit_zplus():
    torch.manual_seed(0)
    net = TimmBlockNet().eval().requires_grad_(False).double()
    assert net.block.has_skip
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    layers = list_layers(net, 32)
    backend = get_backend("lrp")
    taps = ["stem", "block"]
    with backend.attached(net, layers, taps, ["head"]), tapped(net, [*taps, "head"]) as tap:
        assert isinstance(net.block.canonizer_sum, nn.Module)
        tap(x.clone().requires_grad_(True))
        relevance = backend.relevance(tap.outputs, {"head": one_hot([2])}, taps)
    assert net.block.has_skip and "canonizer_sum" not in vars(net.block)["_modules"]
    # By hand: BatchNorm (fresh, so nearly the identity) and ReLU pass relevance unchanged.
    b = net.block
    stem = net.stem(x)
    h1 = b.bn1(b.conv_pw(stem))
    h2 = b.bn2(b.conv_dw(h1))
    main = b.bn3(b.conv_pwl(h2))
    head = net.head(stem + main)
    seed = upward_seed(head, [2])
    r_block = conv_zplus(stem + main, net.head, seed)
    r_shortcut, r_main = split(stem, main, r_block)
    r_h1 = conv_zplus(h1, b.conv_dw, conv_zplus(h2, b.conv_pwl, r_main))
    r_stem = r_shortcut + conv_zplus(stem, b.conv_pw, r_h1)
    torch.testing.assert_close(relevance["block"], r_block.flatten(2), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(relevance["stem"], r_stem.flatten(2), atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize(
    ("conv", "size"),
    [
        (nn.Conv2d(6, 4, 1), 9),  # pointwise: the cached transposed weight
        (nn.Conv2d(6, 4, 3, stride=2, padding=1), 10),  # strided, even input
        (nn.Conv2d(6, 4, 3, stride=2, padding=1), 9),  # strided, odd input
        (nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), 10),  # depthwise, strided
        (nn.Conv2d(6, 6, 5, stride=1, padding=2, groups=6), 9),  # depthwise 5×5
        (nn.Conv2d(6, 4, 3, stride=1, padding=2, dilation=2), 9),  # dilated
        (nn.Conv2d(6, 4, 1, stride=2), 9),  # strided pointwise (a ResNet downsample)
    ],
)
def test_zplus_convolution_cases_match_explicit_rule(conv, size):
    torch.manual_seed(0)
    conv = conv.double().requires_grad_(False)
    x = torch.randn(2, 6, size, size, dtype=torch.float64)  # signed: both weight signs used
    relevance_out = torch.rand_like(conv(x))
    rule = ZPlus()
    parts = [(x.clamp(min=0), "+"), (x.clamp(max=0), "-")]
    got = rule._conv2d(conv, parts, relevance_out)
    torch.testing.assert_close(got, conv_zplus(x, conv, relevance_out), atol=1e-8, rtol=1e-6)
    # z from the forward pass's w x: (w x + |w| |x|) / 2 is the same z with one convolution
    with torch.no_grad():
        linear_part = conv(x)
    got = ZPlus()._conv2d(conv, parts, relevance_out, linear_part)
    torch.testing.assert_close(got, conv_zplus(x, conv, relevance_out), atol=1e-8, rtol=1e-6)


def test_zplus_takes_w_x_from_the_forward_pass_only_while_the_output_is_unchanged():
    conv = nn.Conv2d(4, 3, 1).requires_grad_(False)
    rule = ZPlus()
    output = conv(torch.randn(1, 4, 5, 5))
    rule.forward(conv, (torch.randn(1, 4, 5, 5),), output)
    torch.testing.assert_close(rule._linear_part(conv), output)
    assert rule._linear_part(conv) is None  # taken once: not held beyond its relevance pass
    rule.forward(conv, (torch.randn(1, 4, 5, 5),), output)
    output.mul_(2)  # an in-place module after the convolution wrote its output
    assert rule._linear_part(conv) is None
    rule.forward(conv, (torch.randn(1, 4, 5, 5),), output.bfloat16())  # autocast's rounding
    assert rule._linear_part(conv) is None


def test_folded_batchnorm_is_restored_and_keeps_its_graph():
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = net(x)
    layers = list_layers(net, 32)
    with get_backend("lrp").attached(net, layers, TAPS, ["head"]):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # all folded
        image = x.clone().requires_grad_(True)
        folded = net(image)
    # Folding changes the computation only by rounding, and a graph built while folded
    # still differentiates after the BatchNorms are back.
    torch.testing.assert_close(folded, expected)
    (gradient,) = torch.autograd.grad(folded.sum(), image)
    image = x.clone().requires_grad_(True)
    (unfolded_gradient,) = torch.autograd.grad(net(image).sum(), image)
    torch.testing.assert_close(gradient, unfolded_gradient)
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == norms


def test_restricted_seed_is_the_direction_even_where_the_target_is_silent():
    # As in the authors' code: relevance 1 for channel k at the most aligned position, so that
    # relevance flows while channel k is silent (where `lrp`'s activation seed is all zero).
    activation = torch.rand(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    activation[:, 1] = 0.0  # channel 1 silent everywhere
    activation[0, :, 2, 3] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # no alignment anywhere…
    activation[1, 1, 0, 4] = 5.0  # …except in image 1, here
    direction = one_hot([1, 1], count=4).float()
    seed = restricted_seed(activation, direction)
    assert activation_seed(activation, direction)[0].abs().max() == 0
    assert seed[0, 1].sum() == 1 and seed[0, [0, 2, 3]].abs().max() == 0
    assert seed[1, 1, 0, 4] == 1 and seed[1].sum() == 1


@pytest.mark.parametrize("layout", ["NCHW", "NLC"])
def test_upward_seeds_only_where_a_signed_target_fires(layout):
    # Image 0: channel 2 is signed; image 1: channel 2 is negative everywhere, closest to firing
    # at one position; image 2: a zero direction (its target lies in another layer).
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 3, 5, generator=generator)
    maps[1, 2] = -1.0 - torch.rand(3, 5, generator=generator)
    maps[1, 2, 1, 3] = -0.5
    directions = one_hot([2, 2, 0], count=4).float()
    directions[2] = 0
    activation = maps if layout == "NCHW" else maps.flatten(2).transpose(1, 2)  # (B, T, D)
    channel = (lambda t: t[:, 2]) if layout == "NCHW" else (lambda t: t[:, :, 2])
    for make in (activation_seed, gradient_seed):
        plain = make(activation, directions, layout)
        seed = upward(plain, activation, directions, layout)
        assert seed.shape == activation.shape
        values, kept = channel(activation)[0], channel(seed)[0]
        fires = values > 0
        assert 0 < fires.sum() < fires.numel()  # signed: the case at hand
        torch.testing.assert_close(kept[fires], channel(plain)[0][fires])
        assert kept[~fires].abs().max() == 0
        silent = channel(seed)[1].flatten()
        assert silent.sum() == 1 and silent[8] == 1  # the least negative position, row 1 col 3
        assert seed[2].abs().max() == 0
        others = [c for c in range(4) if c != 2]
        rest = seed[:2, others] if layout == "NCHW" else seed[:2, :, others]
        assert rest.abs().max() == 0


def test_relevance_from_a_signed_target_is_non_negative_and_follows_where_it_fires():
    # LRP from a signed map used to start negative relevance where the target is negative; the
    # min-max normalisation then weighted the positions *against* the target. Now relevance
    # starts only where it fires: non-negative, and zero where no positive position reaches.
    net = make_net()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    relevance = backend_relevance(net, x, "head", one_hot([1, 4]))
    with torch.no_grad():
        head = net.head(net.block2(net.block1(net.stem(x))))
    assert (head[0, 1] < 0).any() and (head[0, 1] > 0).any()
    for tap in TAPS:
        assert relevance[tap].min() >= -1e-12 and relevance[tap].max() > 0


def test_batchnorm_is_folded_only_where_the_order_is_known():
    class Reordered(nn.Sequential):
        def forward(self, x):  # applies the BatchNorm *before* the convolution
            return self[0](self[1](x))

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
    reordered = Reordered(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3))
    net = nn.Sequential(plain, reordered).eval()
    x = torch.randn(1, 3, 8, 8)
    expected = net(x)
    with get_backend("lrp").attached(net, list_layers(net, 8), ["0"], ["1"]):
        assert isinstance(plain[1], nn.Identity) and isinstance(reordered[1], nn.BatchNorm2d)
        torch.testing.assert_close(net(x), expected)


# --- the authors' rules at a ResNet stem (issue: conv1 tap folded, max pool winner-take-all) ----


def _resnet_with_trained_like_norms():
    from torchvision.models.resnet import ResNet

    torch.manual_seed(0)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=4)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # random positive scales and shifts
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval().requires_grad_(False).double()


def _conv(x, conv):
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding)


def _block_relevance(block, x, relevance_out):
    """A torchvision BasicBlock by hand: relevance at its input from relevance at its output."""
    u = F.relu(bn(block.bn1, _conv(x, block.conv1)))
    main = bn(block.bn2, _conv(u, block.conv2))
    shortcut = (
        x if block.downsample is None else bn(block.downsample[1], _conv(x, block.downsample[0]))
    )
    r_shortcut, r_main = split(shortcut, main, relevance_out)  # the final ReLU passes
    r_x = conv_zplus(x, block.conv1, conv_zplus(u, block.conv2, r_main))
    if block.downsample is None:
        return r_x + r_shortcut, F.relu(shortcut + main)
    return r_x + conv_zplus(x, block.downsample[0], r_shortcut), F.relu(shortcut + main)


def _average_pool_share(x, relevance_out):
    """The authors' max-pool rule: the z-rule of a 2×2 average pool, written out."""
    z = F.avg_pool2d(x, 2) + EPS
    share = (relevance_out / z).repeat_interleave(2, -1).repeat_interleave(2, -2) / 4
    return x * share


def explicit_resnet_relevance(net, x, channels):
    """Relevance from ``layer3`` channel k to the taps conv1 (its own output), layer1, layer2."""
    conv1 = _conv(x, net.conv1)
    stem = F.relu(bn(net.bn1, conv1))
    pooled = F.max_pool2d(stem, 3, 2, 1)
    outputs = [pooled]
    for block in (net.layer1[0], net.layer2[0], net.layer3[0]):
        outputs.append(_block_relevance(block, outputs[-1], torch.zeros(()))[1])
    pooled, layer1, layer2, layer3 = outputs
    r_layer2, _ = _block_relevance(net.layer3[0], layer2, upward_seed(layer3, channels))
    r_layer1, _ = _block_relevance(net.layer2[0], layer1, r_layer2)
    r_pooled, _ = _block_relevance(net.layer1[0], pooled, r_layer1)
    r_conv1 = _average_pool_share(stem, r_pooled)  # then ReLU and BatchNorm pass
    expected = {"conv1": r_conv1, "layer1": r_layer1, "layer2": r_layer2}
    return {name: value.flatten(2) for name, value in expected.items()}, conv1


def test_lrp_follows_the_authors_at_a_resnet_stem():
    net = _resnet_with_trained_like_norms()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    channels = [3, 200]
    taps = ["conv1", "layer1", "layer2"]
    expected, conv1 = explicit_resnet_relevance(net, x, channels)
    layers = list_layers(net, 64)
    chosen = get_backend("lrp")
    directions = torch.zeros(2, 256, dtype=torch.float64)
    directions[0, 3] = directions[1, 200] = 1
    with (
        chosen.attached(net, layers, taps, ["layer3"]),
        tapped(net, [*taps, "layer3"], stop_early=True) as tap,
    ):
        features = tap(x.clone().requires_grad_(True))
        got = chosen.relevance(tap.outputs, {"layer3": directions}, taps)
    # the conv1 tap reads conv1's own output while the rules are attached, not bn1's
    torch.testing.assert_close(features["conv1"], conv1.flatten(2))
    for name in taps:
        assert expected[name].abs().max() > 1e-3
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5)
    # Pearson correlation 1 at the stem, where it was 0.43 with the max pool's winner-take-all
    flat_got, flat_expected = got["conv1"].flatten(), expected["conv1"].flatten()
    assert torch.corrcoef(torch.stack([flat_got, flat_expected]))[0, 1] > 0.9999


# --- transformers: AttnLRP's rules (lrp on a ViT) ---------------------------------------------


def _tiny_torchvision_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    return net.eval().requires_grad_(False).double()


def _layer_norm_constant_std(norm, x):
    mean = x.mean(-1, keepdim=True)
    std = (x.var(-1, keepdim=True, unbiased=False) + norm.eps).sqrt().detach()
    return (x - mean) / std * norm.weight + norm.bias


def _encoder_block_by_the_rules(block, x):
    """torchvision's EncoderBlock written out with AttnLRP's CP rules (values-only attention,
    constant normalisation statistics, identity rule on GELU)."""
    attention = block.self_attention
    batch, tokens, width = x.shape
    heads = attention.num_heads
    h = _layer_norm_constant_std(block.ln_1, x)
    q, k, v = F.linear(h, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.view(batch, tokens, heads, width // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q.detach()), split(k.detach()), split(v)
    weights = (q @ k.transpose(-2, -1) / (width // heads) ** 0.5).softmax(-1)
    mixed = (weights @ v).transpose(1, 2).reshape(batch, tokens, width)
    x = F.linear(mixed, attention.out_proj.weight, attention.out_proj.bias) + x
    fc1, gelu, _, fc2, _ = block.mlp
    hidden = fc1(_layer_norm_constant_std(block.ln_2, x))
    hidden = hidden * (F.gelu(hidden) / hidden).detach()
    return x + fc2(hidden)


def test_lrp_on_a_vit_follows_attnlrp_and_leaves_true_gradients_alone():
    net = _tiny_torchvision_vit()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tap, target = "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"
    directions = torch.zeros(2, 8, dtype=torch.float64)
    directions[0, 3] = directions[1, 6] = 1
    layers = list_layers(net, 32)
    chosen = get_backend("lrp")
    with chosen.attached(net, layers, [tap], [target]), tapped(net, [tap, target]) as hooks:
        hooks(x.clone().requires_grad_(True))
        got = chosen.relevance(hooks.outputs, {target: directions}, [tap])[tap]
        # the loss's backward pass is untouched by the attached rules
        start = x.clone().requires_grad_(True)
        (attached_gradient,) = torch.autograd.grad(net(start).square().sum(), start)
    start = x.clone().requires_grad_(True)
    (plain_gradient,) = torch.autograd.grad(net(start).square().sum(), start)
    torch.testing.assert_close(attached_gradient, plain_gradient)

    # independent: the block by the rules, relevance = input × gradient of the target's mean
    block_input = hooks.outputs[tap].detach().requires_grad_(True)
    output = _encoder_block_by_the_rules(net.encoder.layers.encoder_layer_1, block_input)
    projection = (output * directions[:, None, :]).sum(-1)
    fires = (projection.detach() > 0).double()  # only where the target fires (seeds.upward)
    assert 0 < fires.mean() < 1
    target_mean = (projection * fires).mean(-1).sum()
    (gradient,) = torch.autograd.grad(target_mean, block_input)
    expected = (block_input * gradient).detach().transpose(1, 2)  # (B, D, T)
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(got, expected, atol=1e-8, rtol=1e-6)


def test_transformer_relevance_on_timm_and_refusals(tiny_vit):
    net = tiny_vit.module.double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    layers = list_layers(net, 32)
    directions = torch.zeros(1, 32, dtype=torch.float64)
    directions[0, 5] = 1
    for name in ("lrp", "grad-x-act"):
        chosen = get_backend(name)
        with (
            chosen.attached(net, layers, ["blocks.0"], ["blocks.2"]),
            tapped(net, ["blocks.0", "blocks.2"]) as hooks,
        ):
            hooks(x.clone().requires_grad_(True))
            relevance = chosen.relevance(hooks.outputs, {"blocks.2": directions}, ["blocks.0"])
        assert relevance["blocks.0"].shape == (1, 32, 17) and relevance["blocks.0"].abs().sum() > 0
    for name, message in (("lrp-restricted", "LayerNorm"), ("epsilon-plus", "LayerNorm")):
        with pytest.raises(VitalError, match=message):
            with get_backend(name).attached(net, layers, ["blocks.0"], ["blocks.2"]):
                pass


class _FillCounter(TorchDispatchMode):
    """Counts the tensors that torch fills with a constant (``zeros``, ``zero_``, ``fill_``)."""

    def __init__(self):
        super().__init__()
        self.filled_elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (aten.zeros, aten.zero_, aten.fill_, aten.new_zeros):
            self.filled_elements += out.numel()
        return out


def test_a_relevance_pass_fills_no_module_input_with_zeros():
    # Each module's own backward is skipped while relevance runs; the node its rule hangs on
    # must not be handed a tensor of zeros the size of the module's input instead (that was
    # one per module and pass: 2 ms of MobileNetV2's 45 ms relevance pass).
    net = make_net()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    layers = list_layers(net, 32)
    backend = get_backend("lrp")
    with (
        backend.attached(net, layers, TAPS, ["head"]),
        tapped(net, [*TAPS, "head"], stop_early=True) as tap,
    ):
        tap(x.clone().requires_grad_(True))
        with _FillCounter() as counter:
            relevance = backend.relevance(tap.outputs, {"head": one_hot([1])}, TAPS)
    assert relevance["stem"].abs().sum() > 0
    smallest_input = 8 * 8 * 8  # block2's pointwise convolutions read 8 channels of 8×8
    assert counter.filled_elements < smallest_input


@pytest.mark.parametrize("depthwise", [False, True])
def test_clamped_and_folded_weights_keep_a_channels_last_layout(depthwise):
    # A depthwise weight (C, 1, 3, 3) has the same contiguity flags in both layouts; only its
    # strides tell them apart, and a convolution with a weight in the other layout than its
    # input takes a path about ten times slower on the CPU.
    groups = 8 if depthwise else 1
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1, groups=groups),
        nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1),
    ).eval().requires_grad_(False)  # fmt: skip
    net.to(memory_format=torch.channels_last)
    conv = net[2]
    channels_last_strides = conv.weight.stride()
    x = torch.rand(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    seen = {}
    original = ZPlus._conv2d

    def spy(self, module, parts, relevance_out, *rest):
        if module is conv:
            seen["folded"] = module.weight.stride()
            seen["clamped"] = self._weight(module, "+").stride()
        return original(self, module, parts, relevance_out, *rest)

    layers = list_layers(net, 16)
    backend = get_backend("lrp")
    with (
        pytest.MonkeyPatch.context() as patch,
        backend.attached(net, layers, ["0"], ["5"]),
        tapped(net, ["0", "5"], stop_early=True) as tap,
    ):
        patch.setattr(ZPlus, "_conv2d", spy)
        tap(x.clone().requires_grad_(True))
        backend.relevance(tap.outputs, {"5": torch.eye(4)[:1]}, ["0"])
    assert seen == {"folded": channels_last_strides, "clamped": channels_last_strides}


def test_zplus_linear_with_signed_inputs_matches_explicit_rule():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4).double().requires_grad_(False)
    x = torch.randn(3, 5, 6, dtype=torch.float64)  # tokens: signed, as after a LayerNorm
    relevance_out = torch.rand(3, 5, 4, dtype=torch.float64)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    w_pos, w_neg = linear.weight.clamp(min=0), linear.weight.clamp(max=0)
    s = relevance_out / (x_pos @ w_pos.T + x_neg @ w_neg.T + EPS)
    expected = x_pos * (s @ w_pos) + x_neg * (s @ w_neg)
    parts = [(x_pos, "+"), (x_neg, "-")]
    for linear_part in (None, linear(x)):  # two products, or z from the layer's own output
        got = ZPlus()._linear(linear, parts, relevance_out, linear_part)
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("size", [9, 10])
@pytest.mark.parametrize(
    "make",
    [
        lambda: Conv2dSame(6, 6, 3, stride=2, groups=6),  # EfficientNet's strided depthwise
        lambda: Conv2dSame(6, 4, 5, stride=2, bias=False),
        lambda: Conv2dSame(6, 4, 3, stride=1, dilation=2),
    ],
)
@pytest.mark.parametrize("signed", [False, True])
def test_zplus_same_padding_convolutions_run_directly_and_match_their_own_forward(
    make, size, signed
):
    torch.manual_seed(0)
    conv = make().double().requires_grad_(False)
    x = torch.randn(2, 6, size, size, dtype=torch.float64)
    x = x if signed else x.abs()
    relevance_out = torch.rand_like(conv(x))
    parts = [(x.clamp(min=0), "+"), (x.clamp(max=0), "-")] if signed else [(x, "+")]
    expected = ZPlus()._generic(conv, parts, relevance_out)  # through the module's forward
    rule = ZPlus()
    rule.forward(conv, (x,), conv(x))
    (got,) = rule.backward(conv, (None,), (relevance_out,))
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-8)


def test_same_pads_give_tensorflow_output_sizes():
    for size in range(5, 14):
        for kernel, stride, dilation in [(3, 2, 1), (5, 2, 1), (3, 1, 2), (1, 2, 1), (4, 3, 1)]:
            conv = nn.Conv2d(1, 1, kernel, stride=stride, dilation=dilation)
            left, right, top, bottom = same_pads((size, size + 1), conv)
            padded = F.pad(torch.zeros(1, 1, size, size + 1), (left, right, top, bottom))
            out = conv(padded)
            assert out.shape[-2:] == (-(-size // stride), -(-(size + 1) // stride))
            assert 0 <= right - left <= 1 and 0 <= bottom - top <= 1
