"""Inner units of every kind: signed outputs, mid-level maps and transformer tokens (issue 20).

Signed targets start relevance where they fire and a picture that ends below its starting
noise is flagged; units smaller than the image are shown the best patches of their references;
residual-stream channels and attention-head outputs of vision transformers are targets.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vital.driver
from conftest import activations_from, tiny_vit_model, write_images
from vital import Channel, visualize
from vital.cli.vocabulary import cli_wording
from vital.errors import VitalError
from vital.labels import generic_labels
from vital.methods.vital_neuron import auto_patch_side, neuron_taps, receptive_field
from vital.metrics import concentration, target_activations
from vital.parametrizations import create
from vital.presets import Tap
from vital.references import ImageSource, ReferenceSet, best_patches, from_folder
from vital.taps import computes, default_taps, list_layers, same_tensor, tapped, to_positions
from vital.zoo import Model, Preprocessing

# --- measuring a picture -----------------------------------------------------------------------


def test_concentration_is_the_brightest_quarters_share():
    flat = torch.ones(8, 8)
    assert concentration(flat) == pytest.approx(0.25)
    quarter = torch.zeros(8, 8)
    quarter[:4, :4] = 0.5
    assert concentration(quarter) == pytest.approx(1.0)
    ramp = torch.arange(16.0).view(4, 4)  # brightest 4 of 16: 12 + 13 + 14 + 15 of 120
    assert concentration(ramp) == pytest.approx(54 / 120)
    assert concentration(torch.zeros(4, 4)) == 0.0


def _channel_and_warnings(model, folder, channel: int, phrase: str):
    """Channel ``channel`` of stage2 after 2 steps, and the warnings that hold ``phrase``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (result,) = visualize(
            model, [Channel("stage2", channel)], str(folder), settings={"steps": 2},
            progress=False,
        )  # fmt: skip
    return result, [str(w.message) for w in caught if phrase in str(w.message)]


def test_the_below_start_warning_tells_close_numbers_apart(monkeypatch, tiny_cnn, image_folder):
    monkeypatch.setattr("vital.driver.metrics.evaluate", activations_from(0.47712, 0.47731))
    _, said = _channel_and_warnings(tiny_cnn, image_folder, 3, "starting noise")
    assert "ended at 0.4771, below the 0.4773 of its starting noise" in said[0]


@pytest.mark.parametrize(("final", "initial", "flagged"), [(0.2, 0.5, True), (0.6, 0.5, False)])
def test_a_picture_below_its_starting_noise_is_flagged_and_warned(
    monkeypatch, tiny_cnn, image_folder, final, initial, flagged
):
    monkeypatch.setattr("vital.driver.metrics.evaluate", activations_from(final, initial))
    result, said = _channel_and_warnings(tiny_cnn, image_folder, 3, "starting noise")
    assert result.record.evaluation["below_start"] is flagged
    assert len(said) == flagged
    if flagged:
        assert "stage2 channel 3" in said[0] and "0.2" in said[0] and "0.5" in said[0]
        # The advice names what to change, in the API's words and, printed, in the options'.
        assert "steps=N" in said[0] and "seed=S" in said[0]
        printed = cli_wording(said[0])
        assert "--steps N" in printed and "--seed S" in printed and "=N" not in printed
    assert 0.25 <= result.record.evaluation["transparency_top_quarter"] <= 1


def test_the_command_line_prints_the_failure_as_one_warning_line(
    monkeypatch, capsys, tiny_cnn, image_folder, tmp_path
):
    import vital.cli
    import vital.cli.session

    monkeypatch.setattr(vital.cli.session, "load", lambda *args: tiny_cnn)
    monkeypatch.setattr("vital.driver.metrics.evaluate", activations_from(-0.3, 0.1))
    with pytest.raises(SystemExit) as exit_:
        vital.cli.main(
            ["neuron", "--layer", "stage2", "--channel", "1", "--refs", str(image_folder),
             "--steps", "2", "--out", str(tmp_path / "out")]
        )  # fmt: skip
    assert exit_.value.code == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "starting noise" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: stage2 channel 1")


# --- references that match the unit's receptive field ------------------------------------------


def _marked_photo(tmp_path: Path) -> ImageSource:
    """A grey photo with one red square: the only place a 'redness' unit fires."""
    array = np.full((120, 160, 3), 128, dtype=np.uint8)
    array[30:60, 90:120] = (255, 0, 0)
    path = tmp_path / "marked.png"
    Image.fromarray(array).save(path)
    return ImageSource.from_path(path)


def _redness(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels[:, 0] - pixels[:, 1:].mean(dim=1)).mean(dim=(1, 2))


def test_best_patches_take_one_patch_from_every_view_of_a_few_photos(tmp_path):
    photo = ReferenceSet((_marked_photo(tmp_path),), count=5, seed=3, description="one photo")
    patches, scores = best_patches(photo, _redness, 64, patch_side=16)
    assert len(patches.sources) == 5 and not patches.expanded
    assert scores == sorted(scores, reverse=True)
    views = torch.stack(list(photo.views(64)))
    view_scores = _redness(views)
    patch_views = torch.stack(list(patches.views(64)))
    # every patch is redder than the view it was cut from, and its score is what it shows
    assert (_redness(patch_views).sort(descending=True).values > view_scores.max()).all()
    torch.testing.assert_close(_redness(patch_views), torch.tensor(scores), atol=0.08, rtol=0)
    assert len({s.identity for s in patches.sources}) == 5
    assert "16px patch of each of 5 views" in patches.description


def test_the_receptive_field_grows_with_depth_and_decides_the_references(tiny_cnn):
    layers = {i.name: i for i in list_layers(tiny_cnn.module, 32)}
    fields = [receptive_field(tiny_cnn, layers[n], 32) for n in ("stem", "stage1", "stage3")]
    assert fields[0] < fields[1] < fields[2] <= 32
    # theoretical bounds: the stem sees 3 px, stage1 7 px, stage3 31 px
    assert fields[0] <= 8 and fields[1] <= 16
    assert auto_patch_side(fields[1], 32) == 16  # a field under 16 px: the smallest side
    assert auto_patch_side(50, 224) == 50 and auto_patch_side(10, 224) == 32
    assert auto_patch_side(32, 32) is None
    vit = tiny_vit_model()
    tokens = {i.name: i for i in list_layers(vit.module, 32)}["blocks.1"]
    assert receptive_field(vit, tokens, 32) == 32  # attention mixes every token


def test_auto_references_are_patches_for_small_units_and_the_record_says_so(tiny_cnn, tmp_path):
    folder = tmp_path / "two"
    write_images(folder, 2, size=48, seed=2)
    references = from_folder(folder, count=6)
    small, large = visualize(
        tiny_cnn, [Channel("stage1", 2), Channel("stage3", 2)], references,
        settings={"steps": 2}, progress=False, patch_side="auto",
    )  # fmt: skip
    assert small.record.references["mode"].startswith("best ")
    assert "patch of each view (auto" in small.record.references["mode"]
    assert small.record.references["distinct_images"] == 2  # as given: two photos …
    assert small.record.references["matched"]["distinct_images"] == 6  # … one patch per view
    assert len(small.record.references["scores"]) == 6
    assert large.record.references["mode"].startswith("whole images (auto")
    assert small.record.evaluation["reference_activation"] > 0
    whole = visualize(
        tiny_cnn, [Channel("stage1", 2)], references, settings={"steps": 2}, progress=False
    )[0]  # the default
    assert whole.record.references["mode"] == "whole images"
    # the best patches excite the unit more than the views they were cut from
    assert (
        small.record.evaluation["reference_activation"]
        > whole.record.evaluation["reference_activation"]
    )


# --- transformer blocks -----------------------------------------------------------------------


def _torchvision_vit() -> Model:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    module = VisionTransformer(
        image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip
    return Model(module, "tiny_tv_vit", Preprocessing(input_size=32), generic_labels(10))


def _responsive_channel(model: Model, layer: str, references: ReferenceSet) -> int:
    """The channel its references excite most above the level of ``fast``'s starting image."""
    views = torch.stack(list(references.views(32)))
    start = create("fourier", [0], 32, torch.device("cpu"), model.preprocessing, clamp=True)
    with torch.no_grad(), tapped(model.module, [layer], stop_early=True) as tap:
        noise = start.images()
        tap(model.preprocessing.normalize(views))
        on_references = to_positions(tap.outputs[layer], tap.layout(layer)).mean(dim=(0, 2))
        tap(noise)
        on_noise = to_positions(tap.outputs[layer], tap.layout(layer)).mean(dim=(0, 2))
    return int((on_references - on_noise).argmax())


VIT_TARGETS = [
    ("timm", "blocks.2"),  # a residual-stream channel
    ("timm", "blocks.2.attn.norm"),  # one dimension of an attention head's output
    ("torchvision", "encoder.layers.encoder_layer_2"),  # a residual-stream channel
]


@pytest.mark.parametrize(("library", "layer"), VIT_TARGETS)
def test_vit_channels_rise_to_their_references_and_their_maps_follow_the_tokens(
    library, layer, tmp_path
):
    model = tiny_vit_model() if library == "timm" else _torchvision_vit()
    write_images(tmp_path / "refs", 4, size=48, seed=1)
    references = from_folder(tmp_path / "refs", count=4)
    channel = _responsive_channel(model, layer, references)
    # fast as users get it: its coarse start blurred at the ViT's own size (the ViTs refuse
    # pooled images), then the 60 full-resolution steps this test ran before it had one
    (result,) = visualize(
        model, [Channel(layer, channel)], references, setting="fast",
        settings={"steps": 86}, progress=False,
    )  # fmt: skip
    assert result.record.settings["coarse_view"] == "blurred"
    assert result.record.settings["coarse_start"] > 0
    evaluation = result.record.evaluation
    assert result.record.relevance == "lrp"
    assert evaluation["reference_activation"] > evaluation["initial_activation"]
    gained = evaluation["activation"] - evaluation["initial_activation"]
    wanted = evaluation["reference_activation"] - evaluation["initial_activation"]
    assert gained >= 0.5 * wanted and not evaluation["below_start"]
    # The transparency sits on the patches whose tokens fire for the unit on the picture.
    with torch.no_grad(), tapped(model.module, [layer], stop_early=True) as tap:
        tap(model.preprocessing.normalize(result.pixels[None]))
        tokens = to_positions(tap.outputs[layer], tap.layout(layer))[0, channel]
    patches = tokens[-16:].view(4, 4)  # the 16 patch tokens after the class token
    alpha = result.alpha.view(4, 8, 4, 8).mean(dim=(1, 3))
    fires = patches > patches.median()
    assert alpha[fires].mean() > alpha[~fires].mean()
    assert evaluation["transparency_top_quarter"] > 0.3


def test_an_attention_head_output_is_matched_at_the_tokens_below_not_the_keys(tiny_vit):
    layers = list_layers(tiny_vit.module, 32)
    taps, source = neuron_taps(tiny_vit, layers, "blocks.2.attn.norm", near=True)
    assert taps[-1].layer == "blocks.2.attn.qkv" and "blocks.2.attn.qkv just below" in source
    activations = target_activations(
        tiny_vit, torch.rand(1, 3, 32, 32), [Channel("blocks.2.attn.norm", 17)]
    )
    assert len(activations) == 1


# --- residual sums ----------------------------------------------------------------------------


class _InvertedResidualNet(torch.nn.Module):
    """A stem and two MobileNetV2 inverted residuals: one with its skip, one without."""

    def __init__(self):
        from torchvision.models.mobilenetv2 import InvertedResidual

        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU())
        self.down = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.ReLU())
        self.summed = InvertedResidual(8, 8, 1, 2)
        self.widened = InvertedResidual(8, 16, 2, 2)

    def forward(self, x):
        return self.widened(self.summed(self.down(self.stem(x))))


def test_a_residual_sum_is_matched_at_both_of_its_inputs():
    torch.manual_seed(0)
    model = Model(_InvertedResidualNet().eval(), "blocks", Preprocessing(input_size=32))
    layers = list_layers(model.module, 32)
    taps, source = neuron_taps(model, layers, "summed", near=True)
    # the block's input (its skip) and the branch its sum adds
    assert [t.layer for t in taps][-2:] == ["down", "summed.conv"]
    assert "summed.conv, the branch its residual sum adds" in source
    # no sum, no branch: the block's output is its branch
    taps, source = neuron_taps(model, layers, "widened", near=True)
    assert taps[-1].layer == "summed" and "branch" not in source
    assert "branch" not in neuron_taps(model, layers, "summed", near=False)[1]


class _StagedNet(torch.nn.Module):
    """A stem, then a stage of two inverted residuals (timm's and torchvision's ``blocks.5``,
    ``layer4``): the stage returns its last block's output as it is."""

    def __init__(self):
        from torchvision.models.mobilenetv2 import InvertedResidual

        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU())
        self.down = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.ReLU())
        self.stage = torch.nn.Sequential(InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 8, 1, 2))
        self.head = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU())

    def forward(self, x):
        return self.head(self.stage(self.down(self.stem(x))))


def test_a_stage_of_blocks_is_matched_as_its_last_block(image_folder):
    # Lite0's blocks.5 was matched at its input only, a whole stage below: its concepts'
    # pictures reached 0.4-0.7 of their references' activation (benchmarks/RESULTS.md).
    torch.manual_seed(0)
    model = Model(_StagedNet().eval(), "staged", Preprocessing(input_size=32))
    layers = list_layers(model.module, 32)
    passes_on = {i.name: i.passes_on for i in layers}
    assert passes_on["stage"] == "stage.1"  # a block with convolutions, returned as it is
    assert passes_on["head"] is None  # its last child is a ReLU: no block
    assert passes_on["stage.1"] is None  # a residual sum is no child's output
    stage, source = neuron_taps(model, layers, "stage", near=True)
    block, _ = neuron_taps(model, layers, "stage.1", near=True)
    assert stage == block  # the near tap and the branch, as for the last block
    assert [t.layer for t in stage][-2:] == ["stage.0", "stage.1.conv"]
    assert "stage.0 just below it (its last block, stage.1)" in source
    # the user may name a tap inside the stage, below its last block, and no deeper
    assert neuron_taps(model, layers, "stage", [Tap("stage.0")])[0] == (Tap("stage.0"),)
    with pytest.raises(VitalError, match="not computed before the target"):
        neuron_taps(model, layers, "stage", [Tap("stage.1.conv")])
    # the layers that follow the stage's last block are unchanged
    assert neuron_taps(model, layers, "head", near=True)[0][-1] == Tap("stage")
    (result,) = visualize(
        model, [Channel("stage", 1)], image_folder, settings={"steps": 2}, progress=False
    )
    assert "stage.0" in [t["layer"] for t in result.record.taps]


class _NestedStages(torch.nn.Module):
    """A stem ``Sequential`` ending in its ReLU, then two stages inside one ``blocks`` (timm's
    layout), then a strided head: ``stem`` and ``stem.1``, ``blocks`` and ``blocks.1`` are one
    tensor each."""

    def __init__(self):
        from torchvision.models.mobilenetv2 import InvertedResidual

        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU())
        self.blocks = torch.nn.Sequential(
            torch.nn.Sequential(InvertedResidual(8, 8, 2, 2), InvertedResidual(8, 8, 1, 2)),
            torch.nn.Sequential(InvertedResidual(8, 16, 2, 2), InvertedResidual(16, 16, 1, 2)),
        )
        self.head = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, 2, 1), torch.nn.ReLU())

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def test_one_tensor_is_matched_once_whatever_its_names():
    # Lite0's conv_head matched its last stage twice (as the default tap blocks.6 and, as the
    # whole `blocks`, the module just below it), and a user's stem `Sequential` was discovered
    # as the stem and again as its ReLU: one tensor weighed twice.
    torch.manual_seed(0)
    model = Model(_NestedStages().eval(), "nested", Preprocessing(input_size=32))
    layers = list_layers(model.module, 32)
    assert same_tensor(layers, "stem") == same_tensor(layers, "stem.1") == "stem.1"
    assert same_tensor(layers, "blocks") == same_tensor(layers, "blocks.1")
    assert same_tensor(layers, "head.0") == "head.0"  # computes its own output
    defaults, _ = default_taps(model.name, layers)
    assert "stem" in [t.layer for t in defaults] and "blocks.1" in [t.layer for t in defaults]
    for taps in (defaults, neuron_taps(model, layers, "head", near=True)[0]):
        tensors = [same_tensor(layers, t.layer) for t in taps]
        assert len(tensors) == len(set(tensors)), [t.layer for t in taps]


class _SiblingNorm(torch.nn.Module):
    """timm's layout: a convolution, its BatchNorm and its activation as siblings, then a pool
    and a BatchNorm after it."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU())
        self.conv = torch.nn.Conv2d(8, 8, 3, 2, 1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.act = torch.nn.ReLU6()
        self.pool = torch.nn.AvgPool2d(2)
        self.after_pool = torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return self.after_pool(self.pool(self.act(self.bn(self.conv(self.stem(x))))))


def test_a_unit_of_a_normalisation_is_matched_below_its_convolution():
    # The near tap of Lite0's bn2 was conv_head, the unit's own values before its BatchNorm, and
    # MobileNetV2's features.18.2 got features.18.1 where the same tensor as features.18 got
    # features.17; the pictures were less readable (benchmarks/RESULTS.md).
    model = Model(_SiblingNorm().eval(), "siblings", Preprocessing(input_size=32))
    layers = list_layers(model.module, 32)
    taps = {name: neuron_taps(model, layers, name, near=True) for name in ("conv", "bn", "act")}
    assert [t.layer for t in taps["conv"][0]] == ["stem"]  # the stem tap is the conv's input
    assert taps["bn"][0] == taps["act"][0] == taps["conv"][0]  # not `conv` or `bn` again
    # a pool changes the map's size: it is no channel-by-channel transform of the activation
    assert neuron_taps(model, layers, "pool", near=True)[0][-1] == Tap("act")
    # nor is a BatchNorm after it a convolution's unit (ConvNeXt's LayerNorm after a permute)
    assert neuron_taps(model, layers, "after_pool", near=True)[0][-1] == Tap("pool")
    # a decoder's transposed convolution computes; a LayerNorm does not
    assert computes(torch.nn.ConvTranspose2d(2, 2, 3)) and not computes(torch.nn.LayerNorm(4))


def test_a_timm_inverted_residuals_branch_is_read_while_the_lrp_rules_rewrite_it(image_folder):
    from timm.models._efficientnet_blocks import InvertedResidual as TimmInvertedResidual

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU())
            self.down = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.ReLU())
            self.block = TimmInvertedResidual(8, 8, exp_ratio=2.0)
            self.top = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, 2, 1), torch.nn.ReLU())

        def forward(self, x):
            return self.top(self.block(self.down(self.stem(x))))

    torch.manual_seed(0)
    model = Model(Net().eval(), "timm_blocks", Preprocessing(input_size=32))
    assert model.module.block.has_skip
    (result,) = visualize(
        model, [Channel("block", 3)], str(image_folder), settings={"steps": 2}, progress=False
    )
    assert result.record.taps[-1]["layer"] == "block.bn3"


# --- signed targets: the floor under the relevance, and the channels a benchmark picks --------


def test_the_floor_is_the_negative_share_of_the_map_and_zero_on_a_relu_output():
    from vital.objectives import (
        FLOOR_CAP,
        held,
        negative_shares,
        normalized_relevance,
        relevance_floor,
    )
    from vital.relevance.seeds import negative_share

    generator = torch.Generator().manual_seed(0)
    signed = torch.randn(3, 4, 5, 5, generator=generator)
    direction = torch.tensor([[1.0, 0, 0, 0], [0, 0.5, -1, 0], [0, 0, 0, 0]])
    share = negative_share(signed, direction)
    for row in range(2):  # the definition, by loops
        values = [
            sum(direction[row, c] * signed[row, c, y, x] for c in range(4))
            for y in range(5)
            for x in range(5)
        ]
        negative = sum(-v for v in values if v < 0)
        assert share[row] == pytest.approx(float(negative / sum(abs(v) for v in values)))
    assert share[2] == 0  # a row without a target
    # A ReLU output is never negative: no floor, and the weights are the authors' exactly.
    relu = signed.clamp_min(0)
    floor = relevance_floor(negative_shares({"layer": relu}, {"layer": direction.abs()}, {}))
    assert torch.equal(floor, torch.zeros(3))
    relevance = torch.rand(3, 4, 25, generator=generator)
    assert torch.equal(normalized_relevance(relevance, floor), normalized_relevance(relevance))
    # On a signed map every position keeps the floor; the most relevant one keeps 1.
    floor = relevance_floor(negative_shares({"layer": signed}, {"layer": direction}, {}))
    assert torch.equal(floor, share.clamp_max(FLOOR_CAP))
    assert relevance_floor(torch.ones(1)) < 1  # a unit negative everywhere: relevance counts
    # Held: signed, and driven up by its references over most of their map.
    assert [held(s) for s in (0.0, 0.2, 0.7, 1.0)] == [False, True, False, False]
    weights = normalized_relevance(relevance, floor)
    assert torch.allclose(weights.amin(dim=-1), floor.view(3, 1).expand(3, 4))
    assert torch.allclose(weights.amax(dim=-1), torch.ones(3, 4))


def test_a_relu_layers_picture_is_the_same_with_and_without_the_floor(
    monkeypatch, tiny_cnn, image_folder
):
    from vital.objectives import normalized_relevance

    def picture():
        (result,) = visualize(
            tiny_cnn, [Channel("stage3", 2)], str(image_folder), settings={"steps": 3},
            progress=False, cache_dir=False,
        )  # fmt: skip
        return result.pixels

    floored = picture()
    monkeypatch.setattr(
        "vital.objectives.weighted_features",
        lambda features, relevance, floor=None: features * normalized_relevance(relevance),
    )
    assert torch.equal(floored, picture())


def test_an_inner_units_transparency_is_the_last_fifth_of_the_steps(
    monkeypatch, tiny_cnn, image_folder
):
    """The map is made from |∂L/∂x| of steps 9 and 10 of 10 only (read here by a hook on the
    images each step), and the record says from which share of the steps."""
    import vital.optimize
    from vital.optimize import transparency

    original, steps = vital.optimize._view_terms, []

    def read(x, *rest):
        x.register_hook(lambda gradient: steps.append(gradient.detach().abs()))
        return original(x, *rest)

    monkeypatch.setattr(vital.optimize, "_view_terms", read)
    (result,) = visualize(
        tiny_cnn, [Channel("stage3", 2)], str(image_folder), settings={"steps": 10},
        progress=False, cache_dir=False,
    )  # fmt: skip
    assert len(steps) == 10
    torch.testing.assert_close(result.alpha, transparency(steps[8] + steps[9])[0])
    assert not torch.allclose(result.alpha, transparency(sum(steps))[0])
    assert result.record.evaluation["transparency_from"] == 0.8


def test_the_benchmarks_channels_are_driven_up_by_their_photos_on_a_signed_layer():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from convergence import CHANNEL_PHOTOS, photo_crops, selective_channels
    from vital.references import SAMPLE_PHOTOS

    torch.manual_seed(0)
    # 1x1 colour mixtures with offsets: some channels negative on every photo, so that the
    # layer's mean is negative and dividing by it would rank them first.
    layer = torch.nn.Conv2d(3, 12, 1)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias, std=2.0)
    signed = Model(torch.nn.Sequential(layer), "signed", Preprocessing(input_size=224))
    rectified = Model(
        torch.nn.Sequential(layer, torch.nn.ReLU()), "relu", Preprocessing(input_size=224)
    )
    names = list(SAMPLE_PHOTOS)
    with torch.no_grad():
        crops = signed.preprocessing.normalize(photo_crops(names))
        means = {"0": layer(crops).mean(dim=(2, 3)), "1": layer(crops).relu().mean(dim=(2, 3))}
    chosen = selective_channels(signed, "0", CHANNEL_PHOTOS)
    for photo, channel in chosen.items():
        assert means["0"][names.index(photo), channel] > 0
    # On a non-negative layer the rule is the old one: mean on the photo / (others' + floor).
    activations = means["1"]
    old = {}
    for photo in CHANNEL_PHOTOS:
        row = names.index(photo)
        others = torch.cat([activations[:row], activations[row + 1 :]]).mean(dim=0)
        ranked = (activations[row] / (others + activations.mean())).argsort(descending=True)
        old[photo] = next(c for c in ranked.tolist() if c not in old.values())
    assert selective_channels(rectified, "1", CHANNEL_PHOTOS) == old


def test_the_layer_kind_benchmark_takes_held_out_photos_by_name():
    """layer_kinds.py --photos: embedded photos, two or more (the gap needs others), each once."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from layer_kinds import photo_list

    assert photo_list("rocket, palace,astronaut") == ("rocket", "palace", "astronaut")
    for wrong in ("rocket", "rocket,rocket", "rocket,bogus", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="two or more different"):
            photo_list(wrong)


def test_the_floor_mass_trial_gives_the_floor_a_share_of_the_weights_mass():
    """layer_kinds.py --floor-mass: f of each channel's weight mass spread evenly, not f each."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from layer_kinds import floor_as_mass
    from vital.objectives import normalized_relevance

    relevance = torch.rand(2, 3, 16, generator=torch.Generator().manual_seed(0))
    relevance[..., 8:] = 0  # half the positions with no relevance
    floor = torch.tensor([0.2, 0.0])
    plain, trial = normalized_relevance(relevance), floor_as_mass(relevance, floor)
    torch.testing.assert_close(trial.sum(dim=-1), plain.sum(dim=-1))  # the same mass …
    floor_part = 0.2 * plain[0].mean(dim=-1, keepdim=True).expand(3, 8)
    torch.testing.assert_close(trial[0, :, 8:], floor_part)  # … a fifth of it spread evenly
    assert torch.equal(trial[1], plain[1])  # no floor: the authors' weights
    # the library's floor adds f at every position: more mass where the unit is silent
    assert (normalized_relevance(relevance, floor)[0, :, 8:] > trial[0, :, 8:]).all()


def test_the_record_says_whether_a_target_was_matched_as_signed(tiny_cnn, image_folder):
    torch.manual_seed(0)
    signed = Model(_InvertedResidualNet().eval(), "blocks", Preprocessing(input_size=32))
    kept, without_floor = [], []
    for model, layer in ((signed, "summed"), (tiny_cnn, "stage3")):
        (result,) = visualize(
            model, [Channel(layer, 1)], str(image_folder), settings={"steps": 2}, progress=False
        )
        kept.append(result.record.evaluation["reference_negative_share"])
        without_floor.append(result.record.evaluation["transparency_without_floor"])
    assert 0 < kept[0] < 1  # a residual sum is negative somewhere on its references
    assert kept[1] == 0  # a ReLU output never is
    assert without_floor == [0 < kept[0] < 0.5, False]  # the map of the loss it was matched with


def test_a_held_targets_map_is_made_from_the_loss_without_its_floor(monkeypatch, image_folder):
    """The floor's gradient spreads over the whole image; the map of a held signed target comes
    from the authors' loss (prototypes and features without the floor) while the picture still
    follows the held loss: the same pixels, another map."""
    import vital.methods.vital_neuron
    import vital.objectives
    import vital.optimize

    objectives = []

    class Recorded(vital.objectives.RelevanceSortMatching):
        def __init__(self, *args):
            super().__init__(*args)
            objectives.append(self)

    monkeypatch.setattr(vital.methods.vital_neuron, "RelevanceSortMatching", Recorded)
    torch.manual_seed(0)
    signed = Model(_InvertedResidualNet().eval(), "blocks", Preprocessing(input_size=32))

    def run(own_floor=0.0):
        (result,) = visualize(
            signed, [Channel("summed", 1)], str(image_folder), settings={"steps": 10},
            progress=False, cache_dir=False, relevance_floor=own_floor,
        )  # fmt: skip
        return result, objectives[-1]._prototypes[1][0]

    held, summary = run()
    assert 0 < held.record.evaluation["reference_negative_share"] < 0.5  # a held target
    assert held.record.evaluation["transparency_without_floor"]
    taps = [key.split(":", 1)[1] for key in summary if key.startswith("prototype:")]
    # the map's prototypes are those of the same target weighted as the authors weight it …
    with monkeypatch.context() as unheld:
        unheld.setattr(vital.objectives, "held", lambda share: share < 0)  # never held
        _, authors = run()
    for tap in taps:
        assert not torch.equal(summary[f"prototype:{tap}"], authors[f"prototype:{tap}"])
        torch.testing.assert_close(summary[f"map-prototype:{tap}"], authors[f"prototype:{tap}"])
    assert not any(key.startswith("map-prototype:") for key in authors)  # held ones only
    # a target's own floor (as concept pictures set one) stays; only the signed floor goes
    _, own = run(own_floor=0.005)
    with monkeypatch.context() as unheld:
        unheld.setattr(vital.objectives, "held", lambda share: share < 0)
        _, authors_own = run(own_floor=0.005)
    for tap in taps:
        torch.testing.assert_close(own[f"map-prototype:{tap}"], authors_own[f"prototype:{tap}"])
    # … and the map comes from their loss, not the picture's: no stand-ins, the old map
    original = vital.optimize._map_gradient

    def without_stand_ins(image, view, views):
        original(image, view, views)  # removes them from the loss all the same
        return None

    monkeypatch.setattr(vital.optimize, "_map_gradient", without_stand_ins)
    floored, _ = run()
    assert torch.equal(held.pixels, floored.pixels)
    assert not torch.allclose(held.alpha, floored.alpha)


def test_a_unit_that_never_fires_is_flagged_and_warned(tiny_cnn, image_folder):
    """A dead channel (zero on its references, its start and its picture) gives a picture of
    nothing: the record says so and a warning names the unit."""
    with torch.no_grad():  # channel 3 of stage2: zero weights, a BatchNorm output of -1
        tiny_cnn.module.stage2[0].weight[3] = 0
        batch_norm = tiny_cnn.module.stage2[1]
        batch_norm.weight[3], batch_norm.bias[3] = 0.0, -1.0
        batch_norm.bias[4] = 3.0  # channel 4 fires everywhere
    result, said = _channel_and_warnings(tiny_cnn, image_folder, 3, "does not fire")
    evaluation = result.record.evaluation
    assert evaluation["reference_activation"] == 0 and evaluation["activation"] == 0
    assert evaluation["silent"] is True
    assert len(said) == 1 and "stage2" in said[0]
    alive, said = _channel_and_warnings(tiny_cnn, image_folder, 4, "does not fire")
    assert alive.record.evaluation["silent"] is False and not said


@pytest.mark.parametrize(
    ("reference", "initial", "final", "silent"),
    [
        (-9.5e-10, -3.3e-10, -3.1e-10, True),  # a signed unit of an untrained network
        (0.0, 0.0, 0.0, True),  # a dead ReLU unit
        (2e-3, -3.3e-10, 1e-3, False),  # weak, but its references drive it
        (-0.4, -0.5, -0.3, False),  # a signed unit that is negative, not silent
    ],
)
def test_a_unit_at_zero_up_to_float_rounding_is_silent(reference, initial, final, silent):
    """efficientnet_b0 (random weights) gave -3e-10 everywhere and was not flagged."""
    evaluation = {
        "reference_activation": reference,
        "initial_activation": initial,
        "activation": final,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checks = vital.driver._checks(Channel("stage2", 3), evaluation, None)
    assert checks["silent"] is silent
    assert any("does not fire" in str(w.message) for w in caught) is silent
