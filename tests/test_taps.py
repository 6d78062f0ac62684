import warnings

import pytest
import torch
from torch import nn

from vital.errors import VitalError
from vital.taps import (
    PRESETS,
    check_layer,
    default_taps,
    discover_taps,
    infer_layout,
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


# --- the library's own feature metadata and channels-last outputs -----------------------------


def tiny_swin():
    import timm

    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        img_size=64,
        window_size=2,
        embed_dim=12,
        depths=(1, 1, 1, 1),
        num_heads=(1, 1, 1, 1),
        num_classes=10,
    ).eval()


def test_a_tiny_timm_swin_gets_taps_from_its_feature_info():
    module = tiny_swin()
    layers = {info.name: info for info in list_layers(module, 64)}
    # timm's Swin stages are channels-last: (H, W, C) = (16, 16, 12) at 1/4, …, (2, 2, 96).
    assert layers["layers.0"].shape == (16, 16, 12) and layers["layers.0"].layout == "NHWC"
    assert layers["layers.3"].channels == 96 and layers["layers.3"].positions == 4
    assert [layers[f"layers.{i}"].stage_reduction for i in range(4)] == [4, 8, 16, 32]
    taps, how = default_taps("swin_tiny", list(layers.values()))
    assert [t.layer for t in taps] == [
        "patch_embed",
        "layers.0",
        "layers.1",
        "layers.2",
        "layers.3",
    ]
    assert "feature_info" in how


def test_swin_features_are_matched_on_the_channel_axis():
    module = tiny_swin()
    captured = {}
    handle = module.layers[1].register_forward_hook(lambda m, i, o: captured.update(out=o))
    try:
        with tapped(module, ["layers.1"]) as tap:
            features = tap(torch.randn(2, 3, 64, 64))["layers.1"]
    finally:
        handle.remove()
    raw = captured["out"]  # (B, H, W, C) = (2, 8, 8, 24)
    assert raw.shape == (2, 8, 8, 24) and features.shape == (2, 24, 64)
    # Channel c at position (row r, column k) is raw[:, r, k, c].
    assert torch.equal(features[:, 5, 3 * 8 + 2], raw[:, 3, 2, 5])


class ChannelsLastBlock(nn.Module):
    """A convolution whose input and output are channels-last, then a LayerNorm."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, 3, stride, 1)
        self.norm = nn.LayerNorm(outputs)

    def forward(self, x):
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class ChannelsLastNet(nn.Module):
    """A hand-made model without metadata whose stages output (B, H, W, C)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, 2, 1)
        self.stage1 = ChannelsLastBlock(6, 10, 1)
        self.stage2 = ChannelsLastBlock(10, 20, 2)
        self.stage3 = ChannelsLastBlock(20, 40, 2)
        self.head = nn.Linear(40, 5)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x).permute(0, 2, 3, 1))))
        return self.head(x.mean(dim=(1, 2)))


def test_a_hand_made_channels_last_model_is_detected_and_discovered():
    torch.manual_seed(0)
    module = ChannelsLastNet().eval()
    layers = {info.name: info for info in list_layers(module, 32)}
    assert layers["stem"].layout == "NCHW" and layers["stage2"].layout == "NHWC"
    assert layers["stage2"].channels == 20 and layers["stage2"].spatial == (8, 8)
    taps, how = default_taps("custom", list(layers.values()))
    assert [t.layer for t in taps] == ["stem", "stage1", "stage2", "stage3"]
    assert "discovered" in how
    x = torch.randn(1, 3, 32, 32)
    with tapped(module, ["stage2"]) as tap:
        features = tap(x)["stage2"]
    raw = module.stage2(module.stage1(module.stem(x).permute(0, 2, 3, 1)))
    assert torch.equal(features, raw.flatten(1, 2).transpose(1, 2))


def test_a_cube_shaped_channels_last_output_keeps_the_layout_seen_elsewhere():
    # At 80 px, stage2 is (20, 20, 20): its shape alone cannot say where the channels are.
    torch.manual_seed(0)
    module = ChannelsLastNet().eval()
    x = torch.randn(1, 3, 80, 80)
    raw = module.stage2(module.stage1(module.stem(x).permute(0, 2, 3, 1)))
    assert raw.shape == (1, 20, 20, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no guess: the layout is looked up at another size
        with tapped(module, ["stage2"]) as tap:
            features = tap(x)["stage2"]
    assert torch.equal(features, raw.flatten(1, 2).transpose(1, 2))
    assert sum(len(m._forward_hooks) for m in module.modules()) == 0


def test_cube_shaped_maps_of_a_channels_first_model_need_no_warning(tiny_cnn):
    # At 16 px the tiny CNN's stem is (8, 8, 8).
    x = torch.randn(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tapped(tiny_cnn.module, ["stem"]) as tap:
            features = tap(x)["stem"]
    with torch.no_grad():
        assert torch.equal(features, tiny_cnn.module.stem(x).flatten(2))


def test_a_layout_asked_before_any_output_was_read_says_what_to_do(tiny_cnn):
    with tapped(tiny_cnn.module, ["stem"]) as tap:
        with pytest.raises(VitalError, match="call the tap on an input first"):
            tap.layout("stem")
        tap(torch.randn(1, 3, 16, 16))
        assert tap.layout("stem") == "NCHW"


def test_layouts_from_shapes_and_metadata():
    assert infer_layout((64, 7, 7)) == "NCHW" and infer_layout((7, 7, 64)) == "NHWC"
    assert infer_layout((197, 768)) == "NLC" and infer_layout((10,)) == "NC"
    assert infer_layout((7, 7, 7), declared="NHWC") == "NHWC"
    assert infer_layout((96, 96, 7), channels=7) == "NHWC"  # a non-square channels-last map
    with pytest.warns(UserWarning, match="channels-first or channels-last"):
        assert infer_layout((7, 7, 7)) == "NCHW"
    maps = torch.arange(2 * 3 * 4 * 4.0).view(2, 4, 4, 3)
    assert torch.equal(to_positions(maps, "NHWC")[1, 2], maps[1, :, :, 2].flatten())


def test_timm_cnns_and_vits_use_their_feature_info(tiny_vit):
    import timm

    module = timm.create_model("test_efficientnet", pretrained=False).eval()
    taps, how = default_taps("test_efficientnet", list_layers(module, 64))
    expected = [entry["module"] for entry in module.feature_info]  # five stage ends
    assert [t.layer for t in taps] == expected[-5:] and "feature_info" in how
    taps, how = default_taps("tiny_vit", list_layers(tiny_vit.module, 32))
    assert [t.layer for t in taps] == [
        "patch_embed.proj",
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "blocks.3",
    ]
    assert "feature_info" in how
