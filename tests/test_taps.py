import pytest
import torch
from torch import nn

from vital.errors import VitalError
from vital.taps import (
    PRESETS,
    check_layer,
    discover_taps,
    list_layers,
    parse_taps,
    tapped,
    to_positions,
)


def test_discovery_on_a_tiny_cnn_picks_stem_and_stage_ends(tiny_cnn):
    layers = list_layers(tiny_cnn.module, 32)
    taps = [t.layer for t in discover_taps(layers)]
    # Resolutions: stem 16 px, stage1 16 px, stage2 8 px, stage3 4 px.
    assert taps == ["stem", "stage1", "stage2", "stage3"]


def test_discovery_skips_reused_modules():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, 2, 1)
            self.conv2 = nn.Conv2d(4, 4, 3, 2, 1)
            self.conv3 = nn.Conv2d(4, 4, 3, 2, 1)
            self.act = nn.ReLU()  # used after every conv

        def forward(self, x):
            return self.act(self.conv3(self.act(self.conv2(self.act(self.conv1(x))))))

    layers = list_layers(Reuse(), 32)
    assert next(i for i in layers if i.name == "act").calls == 3
    assert "act" not in [t.layer for t in discover_taps(layers)]


def test_discovery_on_a_tiny_vit_spreads_over_blocks(tiny_vit):
    taps = [t.layer for t in discover_taps(list_layers(tiny_vit.module, 32))]
    assert taps == ["patch_embed.proj", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]


def test_discovery_on_real_architectures_matches_the_authors_choice():
    import torchvision

    module = torchvision.models.resnet50()
    taps = [t.layer for t in discover_taps(list_layers(module, 64))]
    assert taps == [t.layer for t in PRESETS["resnet50"]]


def test_token_outputs_become_channels_by_positions():
    tokens = torch.arange(24.0).view(1, 4, 6)  # (B, T, D)
    positions = to_positions(tokens)
    assert positions.shape == (1, 6, 4)
    assert torch.equal(positions[0, :, 2], tokens[0, 2])
    maps = torch.zeros(2, 3, 4, 5)
    assert to_positions(maps).shape == (2, 3, 20)
    with pytest.raises(VitalError, match="no positions"):
        to_positions(torch.zeros(2, 3))


def test_vit_tap_reads_tokens(tiny_vit):
    with tapped(tiny_vit.module, ["blocks.1"]) as tap:
        features = tap(torch.zeros(2, 3, 32, 32))["blocks.1"]
    assert features.shape == (2, 32, 17)  # embedding dims x (16 patches + class token)


def test_hooks_are_removed_after_the_block_and_after_errors(tiny_cnn):
    module = tiny_cnn.module

    def hook_count():
        return sum(len(m._forward_hooks) for m in module.modules())

    with tapped(module, ["stage1", "stage3"]) as tap:
        assert hook_count() == 2
        out = tap(torch.zeros(1, 3, 32, 32))
    assert hook_count() == 0
    assert out["stage1"].shape == (1, 8, 256)
    with pytest.raises(RuntimeError):
        with tapped(module, ["stage1"]) as tap:
            tap(torch.zeros(1, 5, 32, 32))  # wrong channel count
    assert hook_count() == 0


def test_stop_early_skips_the_rest_of_the_network(tiny_cnn):
    calls = []
    handle = tiny_cnn.module.head.register_forward_hook(lambda *a: calls.append(1))
    try:
        with tapped(tiny_cnn.module, ["stage1"], stop_early=True) as tap:
            tap(torch.zeros(1, 3, 32, 32))
    finally:
        handle.remove()
    assert calls == []


def test_unknown_layer_suggests_close_names(tiny_cnn):
    with pytest.raises(VitalError, match=r"'stage9' not found; did you mean .*stage.*vital layers"):
        check_layer("stage9", tiny_cnn.module)


def test_parse_taps():
    taps = parse_taps(["layer1=0.5", "layer2"])
    assert [(t.layer, t.weight) for t in taps] == [("layer1", 0.5), ("layer2", 1.0)]
    with pytest.raises(VitalError, match="NAME=WEIGHT"):
        parse_taps(["layer1=heavy"])
