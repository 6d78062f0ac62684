"""Inner-neuron objective, references, API and CLI on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_swin_model
from vital import Channel, Direction, Settings, visualize
from vital.cli import app
from vital.errors import VitalError
from vital.grids import as_saved
from vital.losses import sort_matching_loss
from vital.methods.vital_neuron import neuron_taps
from vital.objectives import (
    NeuronTarget,
    RelevanceSortMatching,
    channel_importance,
    neuron_prototypes,
    normalized_relevance,
)
from vital.references import (
    ImageSource,
    ReferenceSet,
    patch_boxes,
    score_patches,
    top_references,
)
from vital.relevance import get_backend
from vital.taps import Tap, list_layers, tapped

# --- weighting -------------------------------------------------------------------------------


def test_normalized_relevance_and_importance_match_loops():
    torch.manual_seed(0)
    relevance = torch.randn(2, 3, 5)
    relevance[1, 2] = 0.7  # a constant channel
    normalized = normalized_relevance(relevance)
    importance = channel_importance(relevance)
    for b in range(2):
        # negative relevance (evidence against the target) counts as none
        peaks = [max(max(relevance[b, c].tolist()), 0.0) for c in range(3)]
        for c in range(3):
            values = [max(v, 0.0) for v in relevance[b, c].tolist()]
            low, high = min(values), max(values)
            for p in range(5):
                expected = 0.0 if high == low else (values[p] - low) / (high - low)
                assert abs(float(normalized[b, c, p]) - expected) < 1e-6
            expected = (peaks[c] - min(peaks)) / (max(peaks) - min(peaks))
            assert abs(float(importance[b, c]) - expected) < 1e-6


def _target(model, layer, index, taps=None):
    layers = list_layers(model.module, 32)
    chosen, _ = neuron_taps(model, layers, layer, taps)
    channels = {i.name: i for i in layers}[layer].channels
    direction = torch.zeros(channels)
    direction[index] = 1
    return NeuronTarget(layer, direction, chosen), layers


def _summaries(model, backend, targets, image_folder):
    from vital.references import from_folder

    references = from_folder(image_folder, count=3)
    return {1: [neuron_prototypes(model, backend, t, references, 32) for t in targets]}


@pytest.mark.parametrize("backend_name", ["grad-x-act", "lrp"])
def test_weighting_uses_no_gradient_through_relevance(tiny_cnn, image_folder, backend_name):
    target, layers = _target(tiny_cnn, "stage3", 4)
    taps = [t.layer for t in target.taps]
    backend = get_backend(backend_name)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with backend.attached(tiny_cnn.module, layers, taps, ["stage3"]):
        summaries = _summaries(tiny_cnn, backend, [target], image_folder)
        with tapped(tiny_cnn.module, [*taps, "stage3"]) as tap:
            image = x.clone().requires_grad_(True)
            objective = RelevanceSortMatching(tap, backend, [target], summaries)
            sum(objective(image, 1).values()).sum().backward()
            gradient = image.grad
            # The same loss with the relevance computed first and held as a constant.
            image = x.clone().requires_grad_(True)
            features = tap(image)
            relevance = backend.relevance(
                tap.outputs, {"stage3": target.direction.view(1, -1)}, taps
            )
            fixed = {name: normalized_relevance(relevance[name]).clone() for name in taps}
    summary = summaries[1][0]

    def loss_with(weights):
        return sum(
            t.weight
            * sort_matching_loss(
                features[t.layer] * weights[t.layer],
                summary[f"prototype:{t.layer}"],
                summary[f"importance:{t.layer}"].view(-1, 1),
            )
            for t in target.taps
        ).sum()

    (expected,) = torch.autograd.grad(loss_with(fixed), image, retain_graph=True)
    torch.testing.assert_close(gradient, expected, atol=1e-6, rtol=1e-5)
    if backend_name == "grad-x-act":
        # Letting the gradient flow through the relevance (via the activation it multiplies)
        # changes the result, so the comparison above can fail.
        leaky = {
            name: normalized_relevance(
                (relevance[name] / features[name].detach().clamp_min(1e-12)) * features[name]
            )
            for name in taps
        }
        (other,) = torch.autograd.grad(loss_with(leaky), image)
        assert not torch.allclose(other, expected, atol=1e-6)


def test_batched_neuron_objective_equals_one_at_a_time(tiny_cnn, image_folder):
    backend = get_backend("lrp")
    first, layers = _target(tiny_cnn, "stage3", 2)
    second, _ = _target(tiny_cnn, "stage2", 5)
    taps = list(dict.fromkeys(t.layer for n in (first, second) for t in n.taps))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def losses(targets, images):
        summaries = _summaries(tiny_cnn, backend, targets, image_folder)
        layers_needed = list(dict.fromkeys(t.layer for t in targets))
        with tapped(tiny_cnn.module, [*taps, *layers_needed]) as tap:
            objective = RelevanceSortMatching(tap, backend, targets, summaries)
            return sum(objective(images, 1).values())

    with backend.attached(tiny_cnn.module, layers, taps, ["stage2", "stage3"]):
        together = losses([first, second], x)
        alone = torch.cat([losses([first], x[:1]), losses([second], x[1:])])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=1e-5)
    assert first.taps != second.taps  # different layers, different taps


def test_a_floor_under_the_relevance_weighs_every_position_at_least_the_floor(
    tiny_cnn, image_folder
):
    """A target's floor f matches A ⊙ (f + (1 − f)·r̂), for its references and the image."""
    import dataclasses

    backend = get_backend("lrp")
    plain, layers = _target(tiny_cnn, "stage3", 4)
    floored = dataclasses.replace(plain, floor=0.5)
    taps = [t.layer for t in plain.taps]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with backend.attached(tiny_cnn.module, layers, taps, ["stage3"]):
        summaries = _summaries(tiny_cnn, backend, [plain, floored], image_folder)
        with tapped(tiny_cnn.module, [*taps, "stage3"]) as tap:
            loss = sum(
                RelevanceSortMatching(tap, backend, [floored], {1: summaries[1][1:]})(x, 1).values()
            )
            features = {k: v.detach() for k, v in tap(x.clone().requires_grad_(True)).items()}
            relevance = backend.relevance(
                tap.outputs, {"stage3": plain.direction.view(1, -1)}, taps
            )

    def by_hand(summary, floor):
        return sum(
            t.weight
            * sort_matching_loss(
                features[t.layer]
                * (floor + (1 - floor) * normalized_relevance(relevance[t.layer])),
                summary[f"prototype:{t.layer}"],
                summary[f"importance:{t.layer}"].view(-1, 1),
            )
            for t in plain.taps
        )

    torch.testing.assert_close(loss, by_hand(summaries[1][1], 0.5), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(loss, by_hand(summaries[1][1], 0.0))  # the floor is used
    assert not torch.allclose(  # and the references are weighted with it too
        summaries[1][0][f"prototype:{taps[-1]}"], summaries[1][1][f"prototype:{taps[-1]}"]
    )
    with pytest.raises(VitalError, match="relevance_floor"):
        visualize(tiny_cnn, [Channel("stage3", 0)], image_folder, relevance_floor=1.0)


@pytest.mark.parametrize("backend_name", ["lrp", "guided-backprop"])
def test_compile_with_relevance_rules_is_refused_before_any_step(
    tiny_cnn, image_folder, backend_name
):
    # The rules are hooks that torch.compile traces and breaks: without the refusal the run
    # failed at its first step with a TypeError from inside torch.
    with pytest.raises(VitalError, match="compile=True cannot run inner units"):
        visualize(
            tiny_cnn,
            [Channel("stage2", 1)],
            image_folder,
            relevance=backend_name,
            settings={"steps": 2, "compile": True},
            progress=False,
        )


def test_neuron_taps_are_below_the_target_with_stem_weight(tiny_cnn):
    layers = list_layers(tiny_cnn.module, 32)
    order = {i.name: i for i in layers}
    taps, _ = neuron_taps(tiny_cnn, layers, "stage3")
    assert taps[0].weight == 0.1 and all(t.weight == 1 for t in taps[1:])
    assert all(order[t.layer].end < order["stage3"].start for t in taps)
    assert "stage3" not in [t.layer for t in taps]
    with pytest.raises(VitalError, match="below"):
        neuron_taps(tiny_cnn, layers, "stage2", [Tap("stage3")])
    with pytest.raises(VitalError, match="no feature tap"):
        neuron_taps(tiny_cnn, layers, "stem")


def test_the_near_tap_is_the_module_just_below_the_target(tiny_resnet):
    layers = list_layers(tiny_resnet.module, 32)
    plain, _ = neuron_taps(tiny_resnet, layers, "layer2.conv2")
    near, source = neuron_taps(tiny_resnet, layers, "layer2.conv2", near=True)
    # layer2's second convolution reads bn1 → relu(inplace, shared: not tappable) of its block
    assert [t.layer for t in near] == [*(t.layer for t in plain), "layer2.bn1"]
    assert near[-1].weight == 1 and "just below it" in source
    # a target whose predecessor is already a tap gets nothing twice
    block, _ = neuron_taps(tiny_resnet, layers, "layer2", near=True)
    assert [t.layer for t in block] == [
        t.layer for t in neuron_taps(tiny_resnet, layers, "layer2")[0]
    ]
    # the user's taps are used as given
    given, _ = neuron_taps(tiny_resnet, layers, "layer2", [Tap("conv1")], near=True)
    assert [t.layer for t in given] == ["conv1"]


def test_fast_matches_the_near_tap_for_inner_units_only(tiny_resnet, image_folder):
    assert Settings.setting("fast").near_tap and not Settings.setting(1).near_tap
    common = {"setting": "fast", "settings": {"steps": 2}, "reference_count": 2, "progress": False}
    (neuron,) = visualize(tiny_resnet, [Channel("layer1", 1)], image_folder, **common)
    assert neuron.record.taps[-1] == {"layer": "maxpool", "weight": 1.0}  # the block's input
    assert neuron.record.settings["near_tap"] is True
    (authors,) = visualize(
        tiny_resnet, [Channel("layer1", 1)], image_folder, **{**common, "setting": 1}
    )
    assert [t["layer"] for t in authors.record.taps] == ["conv1", "relu"]


# --- references: patches -----------------------------------------------------------------------


def test_patch_boxes_cover_the_crop_with_half_side_stride():
    corners = patch_boxes(224, 64)
    assert len(corners) == 6 * 6
    assert corners[1] == (32, 0) and corners[-1] == (160, 160)
    assert len(patch_boxes(224, 32)) == 13 * 13


def test_score_patches_scores_the_right_region_a_batch_at_a_time():
    crop = torch.zeros(3, 64, 64)
    crop[0, 32:48, 16:32] = 1.0  # a red square at left 16, top 32
    batches = []

    def redness(pixels):
        batches.append(pixels.shape)
        return pixels[:, 0].mean(dim=(1, 2))

    values, corners = score_patches(crop, 16, 32, redness, batch_size=10)
    assert values.shape == (len(corners),) == (7 * 7,)
    assert float(values[corners.index((16, 32))]) == pytest.approx(1.0)
    assert float(values[corners.index((0, 0))]) == 0
    assert max(shape[0] for shape in batches) == 10 and batches[0][1:] == (3, 32, 32)


@pytest.mark.parametrize("side", [1, 7, 15, 225])
def test_a_patch_side_too_small_or_too_large_is_refused(side):
    with pytest.raises(VitalError, match="patch side must be between 16 and 224"):
        patch_boxes(224, side)


def _red_square_image(path: Path, left: int, top: int) -> Path:
    array = np.full((128, 128, 3), 40, dtype=np.uint8)
    array[top : top + 48, left : left + 48] = (255, 0, 0)
    Image.fromarray(array).save(path)
    return path


def test_top_references_keep_the_best_patch_of_each_image(tmp_path):
    paths = [
        _red_square_image(tmp_path / "a.png", 64, 24),
        _red_square_image(tmp_path / "b.png", 16, 60),
    ]
    references = ReferenceSet(tuple(ImageSource.from_path(p) for p in paths), 2, 0, "test")

    def redness(pixels):
        return (pixels[:, 0] - pixels[:, 1]).mean(dim=(1, 2))

    chosen, scores = top_references(references, redness, 64, patch_side=16)
    assert len(chosen.sources) == 2 and scores[0] >= scores[1] > 0.9
    for view in chosen.views(64):
        # Each view is the best patch (inside a red square), resized to the input size.
        assert float(redness(view[None])) > 0.8
    whole, whole_scores = top_references(references, redness, 64, count=1)
    assert len(whole.sources) == 1 and whole_scores[0] < scores[1]


# --- API and CLI -------------------------------------------------------------------------------


def test_a_given_reference_set_is_recorded_with_its_own_count_and_seed(tiny_cnn, image_folder):
    # An atlas hands its mined references over as a set; the record said the method's
    # default "reference_count 50" while 3 images were matched.
    given = ReferenceSet(
        tuple(ImageSource.from_path(p) for p in sorted(image_folder.iterdir())[:3]), 3, 7, "mined"
    )
    target = Channel("stage3", 1)
    short = Settings(steps=2, warmup=0)
    (result,) = visualize(tiny_cnn, [target], {target: given}, settings=short, progress=False)
    assert result.record.options["reference_count"] == 3
    assert result.record.options["reference_seed"] == 7
    (from_folder,) = visualize(
        tiny_cnn, [target], image_folder, settings=short, reference_count=2, progress=False
    )
    assert from_folder.record.options["reference_count"] == 2
    assert from_folder.record.options["reference_seed"] == 0
    (of_class,) = visualize(tiny_cnn, [0], given, settings=short, progress=False)
    assert of_class.record.options["reference_count"] == 3
    assert of_class.record.options["reference_seed"] == 7


def test_end_to_end_neuron_run_writes_image_rgba_alpha_and_record(tiny_cnn, image_folder, tmp_path):
    results = visualize(
        tiny_cnn,
        [Channel("stage3", 2), Direction("stage2", tuple([0.5] * 16), "half")],
        image_folder,
        settings=Settings(steps=6, warmup=2, tv_l2=3e-7, l2=3e-7),
        out=tmp_path / "out",
        reference_count=3,
        progress=False,
    )
    assert len(results) == 2
    for result in results:
        for kind in ("png", "rgba", "alpha", "json"):
            assert result.paths[kind].is_file()
        record = json.loads(result.paths["json"].read_text())
        assert record["relevance"] == "lrp"
        evaluation = record["evaluation"]
        assert {"activation", "reference_activation", "initial_activation"} <= set(evaluation)
        alpha = np.load(result.paths["alpha"])
        assert alpha.shape == (32, 32) and 0 <= alpha.min() and alpha.max() == pytest.approx(1)
        assert Image.open(result.paths["rgba"]).mode == "RGBA"
    assert results[0].record.target == {"kind": "channel", "layer": "stage3", "index": 2}
    assert [t["weight"] for t in results[0].record.taps][0] == 0.1


def test_final_activation_is_recomputed_independently(tiny_cnn, image_folder):
    (result,) = visualize(
        tiny_cnn,
        [Channel("stage3", 1)],
        image_folder,
        settings=Settings(steps=4, warmup=1),
        reference_count=2,
        progress=False,
    )
    image = tiny_cnn.preprocessing.normalize(result.pixels[None])
    with torch.no_grad(), tapped(tiny_cnn.module, ["stage3"]) as tap:
        tap(image)
        expected = tap.outputs["stage3"][0, 1].mean()
    assert result.record.evaluation["activation"] == pytest.approx(float(expected), abs=1e-4)


def test_activation_trace_starts_at_the_initial_activation(tiny_cnn, image_folder):
    steps = 120
    results = visualize(
        tiny_cnn,
        [Channel("stage3", 1), Direction("stage2", tuple([0.25] * 16), "quarter")],
        image_folder,
        settings=Settings(steps=steps, warmup=1, jitter=0),  # the first input is the noise
        reference_count=2,
        progress=False,
    )
    for result in results:
        trace = result.record.activation_trace
        steps_seen = [step for step, _ in trace]
        assert steps_seen[0] == 1 and steps_seen[-1] == steps and steps_seen == sorted(steps_seen)
        assert 40 <= len(trace) <= 61
        initial = result.record.evaluation["initial_activation"]
        assert trace[0][1] == pytest.approx(initial, abs=1e-4)
    # Each image's own target: the two traces differ.
    assert results[0].record.activation_trace != results[1].record.activation_trace


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--layer", "stage3", "--refs", "REFS"], "--channel K"),
        (["--layer", "stage9", "--channel", "1", "--refs", "REFS"], "stage9"),
        (["--layer", "stage3", "--channel", "99", "--refs", "REFS"], "16 channels"),
        (
            ["--layer", "stage3", "--channel", "1", "--refs", "REFS", "--relevance", "x"],
            "grad-x-act",
        ),
        (["--layer", "stem", "--channel", "1", "--refs", "REFS"], "no feature tap"),
        (["--layer", "stage3", "--direction", "DIR", "--refs", "REFS"], "has 3 values"),
        (["--layer", "stage3", "--channel", "1", "--refs", "/nonexistent"], "does not exist"),
        (["--layer", "stage3", "--channel", "1", "--refs", "REFS", "--lr", "0"], "learning rate"),
        (
            ["--layer", "stage3", "--channel", "1", "--refs", "REFS", "--relevance-floor", "1"],
            "relevance_floor=F is a number in [0, 1)",
        ),
        (
            [
                "--layer",
                "stage3",
                "--channel",
                "1",
                "--relevance-floor",
                "0.5",
                "--method",
                "fourier",
            ],
            "--method fourier weighs nothing by relevance: leave out --relevance-floor.",
        ),
    ],
)
def test_neuron_cli_errors(monkeypatch, tiny_cnn, image_folder, tmp_path, arguments, message):
    import vital.cli

    monkeypatch.setattr(vital.cli.session, "load", lambda *args: tiny_cnn)
    np.save(tmp_path / "dir.npy", np.ones(3, dtype=np.float32))
    arguments = [
        str(image_folder) if a == "REFS" else str(tmp_path / "dir.npy") if a == "DIR" else a
        for a in arguments
    ]
    result = CliRunner().invoke(app, ["neuron", *arguments, "--steps", "2", "--out", str(tmp_path)])
    assert isinstance(result.exception, VitalError), result.output
    assert message in str(result.exception)


@pytest.mark.parametrize("floor", ["1", "1.5", "-0.1", "nan", "inf"])
def test_neuron_cli_refuses_the_floor_before_the_model_loads(monkeypatch, tmp_path, floor):
    import vital.cli

    def no_load(*args):
        raise AssertionError("the model was loaded before the floor was checked")

    monkeypatch.setattr(vital.cli.session, "load", no_load)
    arguments = ["neuron", "--layer", "stage3", "--channel", "1", "--relevance-floor", floor]
    result = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, VitalError), result.output
    assert "relevance_floor=F is a number in [0, 1)" in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_neuron_cli_without_refs_uses_the_embedded_photos_and_says_so(
    monkeypatch, tiny_cnn, tmp_path
):
    import vital.cli

    monkeypatch.setattr(vital.cli.session, "load", lambda *args: tiny_cnn)
    arguments = ["neuron", "--layer", "stage3", "--channel", "1", "--steps", "2"]
    result = CliRunner().invoke(app, [*arguments, "--ref-count", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "references: the embedded photos" in result.output
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert "embedded photos" in record["references"]["summary"]
    assert record["setting"] == "fast"


def test_neuron_cli_runs(monkeypatch, tiny_cnn, image_folder, tmp_path):
    import vital.cli

    monkeypatch.setattr(vital.cli.session, "load", lambda *args: tiny_cnn)
    direction = tmp_path / "concept.npy"
    np.save(direction, np.linspace(-1, 1, 16).astype(np.float32))
    result = CliRunner().invoke(
        app,
        [
            "neuron", "--layer", "stage3", "--channel", "3", "--direction", str(direction),
            "--refs", str(image_folder), "--steps", "3", "--out", str(tmp_path / "o"),
            "--patch", "16", "--ref-count", "2", "--relevance", "grad-x-act",
            "--lr", "0.25", "--jitter", "4",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "activation=" in result.output
    records = [json.loads(p.read_text()) for p in (tmp_path / "o").glob("*.json")]
    assert {r["target"]["kind"] for r in records} == {"channel", "direction"}
    assert all(r["relevance"] == "grad-x-act" for r in records)
    assert all(r["references"]["mode"] == "best 16px patch per image" for r in records)
    assert all(r["settings"]["lr"] == 0.25 and r["settings"]["jitter"] == 4 for r in records)
    sheet = Image.open(tmp_path / "o" / "neuron-grid.png")
    assert sheet.width > 3 * 224  # four cells in a row: two images, each with its RGBA view


def test_neuron_cli_takes_the_floor_concept_pictures_use(
    monkeypatch, tiny_cnn, image_folder, tmp_path
):
    """``--relevance-floor`` reaches the method: a concept pictured by hand as `concepts` does."""
    import vital.cli

    monkeypatch.setattr(vital.cli.session, "load", lambda *args: tiny_cnn)
    direction = tmp_path / "concept.npy"
    np.save(direction, np.linspace(0, 1, 16).astype(np.float32))
    pixels = {}
    for floor in ("0.5", None):
        out = tmp_path / f"floor-{floor}"
        given = ["--relevance-floor", floor] if floor else []
        result = CliRunner().invoke(
            app,
            [
                "neuron", "--layer", "stage3", "--direction", str(direction), *given,
                "--refs", str(image_folder), "--ref-count", "2", "--steps", "2",
                "--out", str(out),
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        (record,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
        assert record["options"]["relevance_floor"] == (0.5 if floor else 0.0)
        (png,) = out.glob("vital-*seed0.png")
        pixels[floor] = np.asarray(Image.open(png), dtype=np.float32)
    assert np.abs(pixels["0.5"] - pixels[None]).max() > 0  # the floor changed the loss


def test_mixing_class_and_channel_targets_is_refused(tiny_cnn):
    with pytest.raises(VitalError, match="separate runs"):
        visualize(tiny_cnn, [3, Channel("stage3", 1)], progress=False)


@pytest.mark.parametrize("relevance", ["grad-x-act", "lrp"])
def test_channels_last_swin_neurons_use_the_channel_axis(relevance, image_folder):
    model = tiny_swin_model()
    module = model.module
    (result,) = visualize(
        model,
        [Channel("layers.2", 5)],
        image_folder,
        relevance=relevance,
        settings={"steps": 3, "jitter": 2},
        reference_count=2,
        progress=False,
    )
    seen = {}
    handle = module.layers[2].register_forward_hook(lambda _m, _i, out: seen.update(out=out))
    try:
        with torch.no_grad():
            # the record scores the picture as its PNG holds it
            module(model.preprocessing.normalize(as_saved(result.pixels)[None]))
    finally:
        handle.remove()
    assert seen["out"].shape[-1] == 64  # (B, H, W, C): channels last
    expected = float(seen["out"][0, :, :, 5].mean())
    assert result.record.evaluation["activation"] == pytest.approx(expected, abs=1e-5)
    assert result.record.relevance == relevance
