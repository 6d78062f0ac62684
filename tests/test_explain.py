import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.conftest import tiny_cnn_model, tiny_resnet_model, tiny_swin_model, write_images
from torch import nn
from typer.testing import CliRunner
from zennit.core import Composite

import vital
from vital.atlas import build_atlas
from vital.cli import app
from vital.errors import VitalError
from vital.explanation import Explanation, attributor, explain, load_image
from vital.explanation.attribution import PooledHeadCanonizer
from vital.labels import generic_labels
from vital.mining import mine, mined_references
from vital.relevance import get_backend
from vital.targets import Channel
from vital.zoo import Model, Preprocessing


def pixels(seed=0, size=32):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, size, size, generator=generator)


def zennit_relevance_at(model, layer, image, target, backend="lrp"):
    """The relevance at ``layer`` computed here with zennit directly, not through explain."""
    composite: Composite = get_backend(backend).composite()
    outputs = {}
    module = dict(model.module.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: outputs.__setitem__("layer", o))
    x = model.preprocessing.normalize(image[None]).requires_grad_()
    try:
        with composite.context(model.module):
            logits = model.module(x)
            start = torch.zeros_like(logits)
            start[0, target] = logits[0, target].detach()
            (relevance,) = torch.autograd.grad(logits, outputs["layer"], grad_outputs=start)
    finally:
        handle.remove()
    return relevance[0], logits[0].detach()


@pytest.mark.parametrize("make, layer", [(tiny_cnn_model, "stage3"), (tiny_resnet_model, "layer2")])
def test_channel_relevances_sum_to_the_layers_total(make, layer):
    model = make()
    with attributor(model, layer, "lrp") as attribute:
        found = attribute(pixels())
    expected, logits = zennit_relevance_at(model, layer, pixels(), found.target)
    assert found.target == int(logits.argmax())
    # Each channel's relevance is its relevance map at the layer, summed over positions ...
    assert torch.allclose(found.channels, expected.flatten(1).sum(1), atol=1e-6)
    # ... and together they are the layer's total, which z⁺ conserves from the logit (the head's
    # inputs are non-negative after ReLU and pooling; ε takes a tiny part).
    assert found.channels.sum() == pytest.approx(float(expected.sum()), rel=1e-5)
    assert float(logits[found.target]) > 0
    assert found.channels.sum() == pytest.approx(float(logits[found.target]), rel=1e-3)
    assert found.shares.abs().sum() == pytest.approx(1.0)
    assert found.top(3) == torch.argsort(found.channels, descending=True)[:3].tolist()


@pytest.mark.parametrize("backend", ["lrp", "grad-x-act", "epsilon-plus"])
def test_conditional_heatmaps_add_up_to_the_heatmap(backend):
    model = tiny_cnn_model()
    with attributor(model, "stage3", backend) as attribute:
        found = attribute(pixels(1))
        every_channel = attribute.conditional(range(16))
        everything = attribute.conditional([torch.ones(16)])
    assert torch.allclose(everything[0], found.heatmap, atol=1e-7)
    # The rules are linear in the relevance they receive: channel by channel adds up.
    assert torch.allclose(
        every_channel.sum(0), found.heatmap, atol=1e-6 * found.heatmap.abs().max()
    )
    assert not torch.allclose(every_channel[0], every_channel[1])


def test_conditional_heatmap_is_zero_where_the_channel_is_masked_out():
    model = tiny_cnn_model()
    with attributor(model, "stage3", "lrp") as attribute:
        found = attribute(pixels(2))
        channel = found.top(1)[0]
        # Only the top-left position of the 4×4 map at stage3 lets this channel's relevance through.
        corner = torch.zeros(16, 4, 4)
        corner[channel, 0, 0] = 1
        (heatmap,) = attribute.conditional([corner])
        (nothing,) = attribute.conditional([torch.zeros(16)])
    assert torch.count_nonzero(nothing) == 0
    # stage3's position (0, 0) sees input rows and columns 0..9 (3×3 convolutions of strides 2,
    # 1, 2, 2): everything beyond is exactly zero, the corner is not.
    assert torch.count_nonzero(heatmap[10:, :]) == 0 and torch.count_nonzero(heatmap[:, 10:]) == 0
    assert heatmap[:10, :10].abs().sum() > 0
    assert torch.count_nonzero(found.heatmap[10:, 10:]) > 0  # unmasked relevance does reach there


def test_a_dead_channel_gets_no_relevance_and_an_empty_heatmap():
    model = tiny_cnn_model()
    conv = model.module.stage3[0]
    with torch.no_grad():
        conv.weight[5] = 0
        conv.bias[5] = -10  # channel 5 of stage3 never fires
    with attributor(model, "stage3", "lrp") as attribute:
        found = attribute(pixels(3))
        (heatmap,) = attribute.conditional([5])
    assert found.channels[5] == 0 and torch.count_nonzero(heatmap) == 0


def test_a_given_class_is_explained_instead_of_the_prediction():
    model = tiny_cnn_model()
    with attributor(model, "stage3", "lrp") as attribute:
        found = attribute(pixels(), target=4)
    assert found.target == 4
    expected, _ = zennit_relevance_at(model, "stage3", pixels(), 4)
    assert torch.allclose(found.channels, expected.flatten(1).sum(1), atol=1e-6)


def test_the_model_is_left_as_it_was():
    model = tiny_resnet_model()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    forward = type(model.module).forward
    with attributor(model, "layer2", "lrp") as attribute:
        attribute(pixels())
    after = model.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.module).forward is forward and "forward" not in vars(model.module)


def test_refused_backends_and_layers():
    model = tiny_cnn_model()
    with pytest.raises(VitalError, match="starts from a position"):
        with attributor(model, "stage3", "lrp-restricted"):
            pass
    with pytest.raises(VitalError, match="not found"):
        with attributor(model, "stage9", "lrp"):
            pass


def small_mobilenet() -> Model:
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    return Model(module, "mobilenet_v2", Preprocessing(input_size=64), generic_labels(10))


def test_a_functionally_pooled_head_is_routed_through_a_pooling_module():
    # torchvision's MobileNetV2 pools with nn.functional.adaptive_avg_pool2d: without the
    # canonizer the rules would spread relevance evenly over features.18's positions.
    model = small_mobilenet()
    with attributor(model, "features.18", "lrp") as attribute:
        assert hasattr(model.module, "canonizer_pool")
        found = attribute(pixels(size=64))
    assert found.notes == []
    relevance = found.relevance[found.top(1)[0]]  # (2, 2)
    activation = found.activation[found.top(1)[0]]
    # The average-pool rule shares a channel's relevance in proportion to its activations.
    assert torch.allclose(relevance / relevance.sum(), activation / activation.sum(), atol=1e-4)
    assert not hasattr(model.module, "canonizer_pool") and "forward" not in vars(model.module)


class FunctionallyPooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def test_a_model_pooling_with_an_unknown_function_gets_a_note():
    model = Model(FunctionallyPooled(), "custom", Preprocessing(input_size=16), generic_labels(3))
    with attributor(model, "features", "lrp") as attribute:
        found = attribute(pixels(size=16))
    assert any("pools with a function" in note for note in found.notes)
    with attributor(model, "features", "grad-x-act") as attribute:  # gradients are not affected
        assert attribute(pixels(size=16)).notes == []


@pytest.mark.parametrize("backend", ["lrp", "grad-x-act"])
def test_a_vision_transformers_embedding_dimensions_are_its_channels(tiny_vit, backend):
    with attributor(tiny_vit, "blocks.2", backend) as attribute:
        found = attribute(pixels())
        every_channel = attribute.conditional(range(32))
        first_tokens = torch.zeros(32, 17)
        first_tokens[:, :5] = 1  # the class token and the first four patches
        (part,) = attribute.conditional([first_tokens])
        (rest,) = attribute.conditional([1 - first_tokens])
    assert found.relevance.shape == (32, 17) and found.channels.shape == (32,)
    assert found.notes == []
    scale = found.heatmap.abs().max()
    assert torch.allclose(every_channel.sum(0), found.heatmap, atol=1e-5 * scale)
    assert torch.allclose(part + rest, found.heatmap, atol=1e-5 * scale)
    assert part.abs().sum() > 0 and rest.abs().sum() > 0


def test_a_channels_last_layer_is_explained_on_its_channel_axis():
    # grad-x-act: lrp's transformer rules have no rule yet for timm's FastAdaptiveAvgPool head.
    backend = "grad-x-act"
    model = tiny_swin_model()
    module = model.module
    seen = {}
    handle = module.layers[2].register_forward_hook(lambda _m, _i, out: seen.update(out=out))
    with attributor(model, "layers.2", backend) as attribute:
        found = attribute(pixels(size=64))
        every_channel = attribute.conditional(range(64))
    handle.remove()
    assert seen["out"].shape == (1, 4, 4, 64)  # timm's Swin stages are (B, H, W, C)
    assert found.relevance.shape == (64, 4, 4) and found.channels.shape == (64,)
    assert torch.allclose(found.activation, seen["out"][0].permute(2, 0, 1))
    scale = found.heatmap.abs().max()
    assert torch.allclose(every_channel.sum(0), found.heatmap, atol=1e-5 * scale)


def test_pooled_head_canonizer_ignores_other_models():
    assert PooledHeadCanonizer().apply(tiny_cnn_model().module) == []


# --- explain(): mining, pictures, record, page ---------------------------------------------


PICTURES = {"steps": 2, "jitter": 2}


@pytest.fixture
def data(tmp_path):
    write_images(tmp_path / "data", 6)
    return tmp_path / "data"


def run(data, out, image="img000.png", **options):
    arguments = dict(
        layer="stage3",
        top=2,
        data=data,
        out=out,
        settings=PICTURES,
        reference_count=3,
        top_images=6,
        patch_side=16,
        workers=0,
        progress=False,
    )
    arguments.update(options)
    return explain(tiny_cnn_model(), image if data is None else data / image, **arguments)


def test_explain_writes_a_record_and_a_page_every_number_traceable(tmp_path, data):
    record = run(data, tmp_path / "atlas")
    folder = tmp_path / "atlas"
    stored = json.loads((folder / record.files["json"]).read_text())
    assert stored["schema"] == 1 and Explanation.from_dict(stored) == record
    assert len(record.channels) == 16
    assert record.total == pytest.approx(sum(record.channels))
    assert record.explained["given"] is False
    assert record.explained["index"] == record.prediction["index"] == record.top5[0]["index"]
    assert [e.channel for e in record.top] == sorted(range(16), key=lambda c: -record.channels[c])[
        :2
    ]
    for evidence in record.top:
        assert evidence.relevance == record.channels[evidence.channel]
        assert evidence.share == pytest.approx(evidence.relevance / record.absolute_total)
        assert (folder / evidence.heatmap).is_file() and (folder / evidence.layer_map).is_file()
        assert len(evidence.examples) == 3
        # The examples are the mining index's list for the channel, in order.
        _, ranked = vital.mining.mined(folder, tiny_cnn_model(), "stage3", evidence.channel)
        assert [e["image"] for e in evidence.examples] == [r.path for r in ranked[:3]]
        assert [e["score"] for e in evidence.examples] == [r.score for r in ranked[:3]]
        assert all((folder / e["thumbnail"]).is_file() for e in evidence.examples)
        picture = evidence.picture
        assert picture["source"] == "computed"
        picture_record = json.loads((folder / picture["record"]).read_text())
        assert picture_record["target"] == {
            "kind": "channel",
            "layer": "stage3",
            "index": evidence.channel,
        }
        assert picture_record["settings"]["steps"] == 2
        assert "mined" in picture_record["references"]["summary"]
    page = (folder / record.files["page"]).read_text()
    for evidence in record.top:
        assert f"data-value='{json.dumps(evidence.relevance)}'" in page
        assert f"units/{evidence.picture['png'][len('results/') : -4]}.html" in page
    assert "../" + record.heatmap["file"] in page
    index = (folder / "index.html").read_text()
    assert record.files["page"] in index and "data-relevant='1'" in index


def test_explain_reuses_pictures_only_when_the_settings_match(tmp_path, data, monkeypatch):
    first = run(data, tmp_path / "atlas")
    again = run(data, tmp_path / "atlas")
    assert [e.picture["source"] for e in again.top] == ["atlas", "atlas"]
    assert [e.picture["key"] for e in again.top] == [e.picture["key"] for e in first.top]
    changed = run(data, tmp_path / "atlas", settings={"steps": 3, "jitter": 2})
    assert [e.picture["source"] for e in changed.top] == ["computed", "computed"]
    for evidence in changed.top:
        stored = json.loads((tmp_path / "atlas" / evidence.picture["record"]).read_text())
        assert stored["settings"]["steps"] == 3
    other_references = run(
        data, tmp_path / "atlas", settings={"steps": 3, "jitter": 2}, reference_count=2
    )
    assert [e.picture["source"] for e in other_references.top] == ["computed", "computed"]
    forced = run(
        data, tmp_path / "atlas", settings={"steps": 3, "jitter": 2}, reference_count=2, force=True
    )
    assert [e.picture["source"] for e in forced.top] == ["computed", "computed"]


def test_pictures_are_reused_from_another_atlas_whatever_their_seed(tmp_path, data):
    model = tiny_cnn_model()
    first = run(data, tmp_path / "first")
    channels = [e.channel for e in first.top]
    # The same units, built in another atlas with other seeds (7 and 8).
    mine(model, "stage3", data, tmp_path / "other", channels=channels, top_images=6,
         reference_count=3, patch_side=16, workers=0, progress=False)  # fmt: skip
    build_atlas(
        model,
        [Channel("stage3", c) for c in channels],
        lambda t: mined_references(tmp_path / "other", model, "stage3", t, "image", 3),
        tmp_path / "other",
        {**PICTURES, "seed": 7},
        progress=False,
    )
    reused = run(data, tmp_path / "third", store=[tmp_path / "other"])
    assert [e.picture["source"] for e in reused.top] == [f"store {tmp_path / 'other'}"] * 2
    assert [e.picture["seed"] for e in reused.top] == [7, 8]
    for evidence in reused.top:  # copied into this atlas, so its site stays self-contained
        assert (tmp_path / "third" / evidence.picture["png"]).is_file()
        original = np.asarray(Image.open(tmp_path / "other" / evidence.picture["png"]))
        copied = np.asarray(Image.open(tmp_path / "third" / evidence.picture["png"]))
        assert np.array_equal(original, copied)


def test_store_records_are_reused_only_when_they_say_what_they_depended_on(tmp_path, data):
    model = tiny_cnn_model()
    first = run(data, tmp_path / "atlas", pictures=False)
    channels = [e.channel for e in first.top]
    # `vital neuron --out` records the references' identity and the method's options.
    vital.visualize(
        model,
        [Channel("stage3", c) for c in channels],
        {
            Channel("stage3", c): mined_references(
                tmp_path / "atlas", model, "stage3", c, "image", 3
            )
            for c in channels
        },
        settings=PICTURES,
        out=tmp_path / "plain",
        progress=False,
    )
    record = run(data, tmp_path / "atlas", store=[tmp_path / "plain"])
    assert [e.picture["source"] for e in record.top] == [f"store {tmp_path / 'plain'}"] * 2
    # A record that does not say which references it used is never taken for a match.
    with sqlite3.connect(tmp_path / "plain" / "index.sqlite") as connection:
        for unit, text in connection.execute("SELECT unit, record FROM results").fetchall():
            stripped = json.loads(text)
            del stripped["references"]["identity"]
            connection.execute(
                "UPDATE results SET record = ? WHERE unit = ?", (json.dumps(stripped), unit)
            )
    record = run(data, tmp_path / "atlas2", store=[tmp_path / "plain"])
    assert [e.picture["source"] for e in record.top] == ["computed", "computed"]


def test_explain_without_data_has_no_examples_or_pictures(tmp_path, data):
    record = run(None, tmp_path / "atlas", image=str(data / "img001.png"))
    assert all(e.examples == [] and e.picture is None for e in record.top)
    assert record.mining is None and any("--data" in note for note in record.notes)
    assert (tmp_path / "atlas" / record.files["page"]).is_file()


def test_explain_refuses_a_folder_with_the_users_files(tmp_path, data):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "index.html").write_text("my page")
    with pytest.raises(VitalError, match="vital did not write"):
        run(data, tmp_path / "mine")
    assert (tmp_path / "mine" / "index.html").read_text() == "my page"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["index.html"]


def test_explain_refuses_bad_inputs(tmp_path, data):
    with pytest.raises(VitalError, match="does not exist"):
        run(data, tmp_path / "atlas", image="missing.png")
    with pytest.raises(VitalError, match="top=N"):
        run(data, tmp_path / "atlas", top=0)
    (data / "broken.png").write_bytes(b"not an image")
    with pytest.raises(VitalError, match="cannot read"):
        run(data, tmp_path / "atlas", image="broken.png")


def test_more_channels_than_the_layer_has_are_refused_and_many_have_progress(
    tmp_path, data, capsys
):
    # --top 100000 ran a relevance pass for every one of a layer's 1280 channels, silently.
    with pytest.raises(VitalError, match="top=17, but stage3 has 16 channels: show at most 16"):
        run(None, tmp_path / "refused", image=str(data / "img001.png"), top=17)
    assert not (tmp_path / "refused").exists()
    record = run(None, tmp_path / "all", image=str(data / "img001.png"), top=16, progress=True)
    assert sorted(e.channel for e in record.top) == list(range(16))
    assert "heatmaps: 16/16" in capsys.readouterr().err


def test_load_image_takes_the_centre_crop():
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 40))  # a blue strip on the left, cut off by the crop
    crop, info = load_image(image, 32)
    assert crop.shape == (3, 32, 32) and torch.all(crop[0] > 0.99) and info["crop"] == 32


def test_explain_from_the_command_line(tmp_path, data, monkeypatch):
    import vital.cli

    monkeypatch.setattr(vital.cli.session, "load", lambda *a: tiny_cnn_model())
    arguments = ["explain", str(data / "img002.png"), "--layer", "stage3", "--top", "2"]
    arguments += ["--data", str(data), "--out", str(tmp_path / "atlas"), "--steps", "2"]
    arguments += ["--ref-count", "3", "--top-images", "6", "--patch", "16", "--class", "3"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "class 3 (class 3" in result.output and "given" in result.output
    assert result.output.count("picture computed") == 2
    (path,) = (tmp_path / "atlas" / "explanations").glob("*.json")
    record = Explanation.from_json(path.read_text())
    assert record.explained["index"] == 3 and record.explained["given"]
    for evidence in record.top:
        assert f"share {100 * evidence.share:5.2f}%" in result.output
    again = CliRunner().invoke(app, arguments)
    assert again.output.count("picture atlas") == 2
    assert "seed" not in again.output  # the seed asked for is the pictures' own
    other_seed = CliRunner().invoke(app, [*arguments, "--seed", "3"])
    assert other_seed.output.count("picture atlas (seed 0; --force makes one with --seed 3)") == 2
    with sqlite3.connect(tmp_path / "atlas" / "atlas.sqlite") as connection:
        assert connection.execute("SELECT COUNT(*) FROM atlas_units").fetchone() == (2,)


def test_explain_explains_each_class_it_is_given(tmp_path, data, monkeypatch):
    import vital.cli

    monkeypatch.setattr(vital.cli.session, "load", lambda *a: tiny_cnn_model())
    arguments = ["explain", str(data / "img002.png"), "--layer", "stage3", "--top", "2"]
    arguments += ["--out", str(tmp_path), "-c", "3", "--class", "4,5"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    explained = [
        Explanation.from_json(path.read_text()).explained["index"]
        for path in (tmp_path / "explanations").glob("*.json")
    ]
    assert sorted(explained) == [3, 4, 5] and result.output.count("record:") == 3


def test_the_share_of_relevance_reaching_the_input_is_recorded_shown_and_explained(tmp_path, data):
    conserved = run(None, tmp_path / "first", image=str(data / "img001.png"))
    assert conserved.heatmap["reaching_input"] == pytest.approx(1, abs=0.01)
    assert not any("reaches the input" in n for n in conserved.notes)
    # Filters with no positive weight that fire through their BatchNorm shift alone (as 400 of
    # the 960 depthwise filters of MobileNetV2's features.17 do): z⁺ finds no positive
    # contribution below them, so their relevance stops there.
    model = tiny_cnn_model()
    conv, norm = model.module.stage2[0], model.module.stage2[1]
    with torch.no_grad():
        conv.weight[:8] = -conv.weight[:8].abs()
        norm.bias[:8] = 2.0
    record = explain(
        model, data / "img001.png", layer="stage3", top=2, out=tmp_path / "atlas",
        workers=0, progress=False,
    )  # fmt: skip
    heatmap_total = record.heatmap["total"]
    reaching = record.heatmap["reaching_input"]
    assert reaching == pytest.approx(heatmap_total / record.total)
    assert reaching < 0.95
    note = next(n for n in record.notes if "reaches the input" in n)
    assert "stage3" in note and "BatchNorm" in note
    page = (tmp_path / "atlas" / record.files["page"]).read_text()
    assert f"class='reaching' data-value='{json.dumps(reaching)}'" in page
    for evidence in record.top:
        share = evidence.heatmap_total / evidence.relevance
        assert f"{100 * share:.2f}% of its" in page


def test_numbers_from_numpy_are_taken_as_the_counts_they_hold(tmp_path, data):
    # top=np.int64(2) and reference_count=np.int64(3) were refused as not whole numbers.
    record = run(
        data, tmp_path / "atlas", top=np.int64(2), reference_count=np.int64(3),
        batch_size=np.int64(2), pictures=False,
    )  # fmt: skip
    assert len(record.top) == 2 and all(len(e.examples) == 3 for e in record.top)
    with pytest.raises(VitalError, match="top=N"):
        run(None, tmp_path / "atlas", image=str(data / "img001.png"), top=np.float64(2.5))


def test_by_and_relevance_are_taken_in_any_case_from_the_command_line(tmp_path, data, monkeypatch):
    import vital.cli

    monkeypatch.setattr(vital.cli.session, "load", lambda *a: tiny_cnn_model())
    arguments = ["explain", str(data / "img002.png"), "--layer", "stage3", "--top", "2"]
    arguments += ["--by", " Channels", "--relevance", "GRAD-X-ACT", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "explanations").glob("*.json")
    assert Explanation.from_json(path.read_text()).relevance == "grad-x-act"
    units = [word if word != " Channels" else "units" for word in arguments]
    refused = CliRunner().invoke(app, units)
    assert "--by is 'channels' or 'concepts', not 'units'" in str(refused.exception)


def _relevance(per_channel: list[float]):
    from vital.explanation.attribution import ChannelRelevance

    channels = torch.tensor(per_channel)
    return ChannelRelevance(
        probabilities=torch.tensor([0.5, 0.5]), logits=torch.zeros(2), target=0, layer="L",
        backend="lrp", relevance=channels[:, None, None].expand(-1, 2, 2) / 4,
        activation=torch.ones(len(per_channel), 2, 2), heatmap=torch.zeros(2, 2),
    )  # fmt: skip


def test_the_channels_shown_for_a_class_the_layer_speaks_against_are_the_ones_against_it():
    """Airliner on a cat photo: every channel <= 0, and the "top" were channels of relevance 0."""
    against = _relevance([0.0, -0.5, 0.0, -2.0, -1.0])
    assert against.top(3) == [3, 4, 1]
    said = " ".join(against.sign_notes())
    assert "-3.5, not positive" in said and "most against the class" in said
    mixed = _relevance([0.3, -2.0, 0.0, 0.1])
    assert mixed.top(2) == [0, 3]  # the positive ones first, as always
    assert "not positive" in " ".join(mixed.sign_notes())
    assert "most against" not in " ".join(mixed.sign_notes())
    assert _relevance([0.3, -0.1, 0.2]).sign_notes() == []
    assert "is 0 in every channel" in " ".join(_relevance([0.0, 0.0]).sign_notes())


def test_tied_scores_give_one_prediction_in_the_output_and_the_record(tmp_path):
    """A head of zeros ties every class: the record's prediction was another tied class."""
    model = tiny_cnn_model()
    model.module.head = nn.Linear(16, 1000)  # as many classes as ImageNet: sorts differ there
    with torch.no_grad():
        model.module.head.weight.zero_()
        model.module.head.bias.zero_()
    model.labels = generic_labels(1000)
    write_images(tmp_path / "images", 1)
    record = explain(
        model, tmp_path / "images" / "img000.png", layer="stage3", top=2, out=tmp_path / "a",
        progress=False,
    )  # fmt: skip
    assert record.prediction["index"] == record.explained["index"] == 0
    assert record.explained["rank"] == 1
    assert any("is 0 in every channel" in note for note in record.notes)


def test_explain_records_absolute_paths_given_relative_ones(tmp_path, data, monkeypatch):
    """A record read from another folder still says which image and which images were mined."""
    monkeypatch.chdir(tmp_path)
    record = run(Path("data"), tmp_path / "atlas", pictures=False)
    stored = json.loads((tmp_path / "atlas" / record.files["json"]).read_text())
    assert stored["image"]["source"] == str((data / "img000.png").resolve())
    assert stored["mining"]["data"] == str(data.resolve())


def test_explain_says_a_folder_is_no_image_and_where_folders_go(tmp_path, data):
    with pytest.raises(VitalError, match=r"is a folder: .*a folder of images goes to data=DIR"):
        explain(tiny_cnn_model(), data, layer="stage3", out=tmp_path / "atlas")
    assert not (tmp_path / "atlas").exists()
