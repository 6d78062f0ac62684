"""The driver: settings resolved once and equal from every entry point, records, model state."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import vital
from conftest import tiny_cnn_model, tiny_vit_model, write_images
from vital.atlas import build_atlas
from vital.cli import app
from vital.compare import compare
from vital.driver import resolve_settings
from vital.errors import VitalError
from vital.labels import imagenet_labels
from vital.methods import get_method
from vital.record import Record
from vital.references import from_folder
from vital.targets import Channel, ClassTarget
from vital.zoo import Model, Preprocessing


@pytest.fixture
def class_tree(tmp_path):
    for index in (1, 2):
        write_images(tmp_path / "tree" / str(index), 2, seed=index)
    return tmp_path / "tree"


def test_the_same_target_gets_the_same_settings_from_api_cli_atlas_and_compare(
    monkeypatch, tmp_path, class_tree
):
    model = tiny_cnn_model()
    given = {"steps": 2, "seed": 0}
    api = vital.visualize(model, [1], class_tree, settings=given, progress=False)[0]

    monkeypatch.setattr(vital.cli.session, "load", lambda *args: model)
    arguments = ["class", "-c", "1", "--refs", str(class_tree), "--steps", "2"]
    result = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    (cli_record,) = [json.loads(p.read_text()) for p in (tmp_path / "cli").glob("*.json")]

    build_atlas(
        model,
        [ClassTarget(1, "class 1")],
        lambda target: from_folder(class_tree / "1", count=50),
        tmp_path / "atlas",
        given,
        progress=False,
    )
    store = vital.ResultStore(tmp_path / "atlas" / "results", tmp_path / "atlas" / "atlas.sqlite")
    (atlas_record,) = store.records()

    comparison = compare(
        model, [1], ["vital"], references=class_tree, settings={"steps": 2}, seed=0, progress=False
    )
    compare_record = comparison.results["vital"][0].record

    def as_json(settings: dict) -> dict:
        return json.loads(json.dumps(settings))

    expected = as_json(api.record.settings)
    assert expected["steps"] == 2 and expected["warmup"] == 1  # the warm-up that ran
    assert cli_record["settings"] == expected
    assert as_json(atlas_record.settings) == expected
    assert as_json(compare_record.settings) == expected


def _tiny_vit_l_32() -> Model:
    """A torchvision ViT with ViT-L/32's layer names, tiny, so that its preset applies."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    module = VisionTransformer(
        image_size=32, patch_size=8, num_layers=24, num_heads=2, hidden_dim=8, mlp_dim=8
    )
    return Model(module, "vit_l_32", Preprocessing(input_size=32), imagenet_labels())


def test_vit_l_32_runs_with_its_preset_priors_from_the_cli(monkeypatch, tmp_path):
    monkeypatch.setattr(vital.cli.session, "load", lambda *args: _tiny_vit_l_32())
    arguments = ["class", "-c", "espresso", "--steps", "1", "--ref-count", "2"]
    result = CliRunner().invoke(app, [*arguments, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert record["settings"]["tv_l2"] == record["settings"]["l2"] == 0.0003
    assert record["taps"][-1] == {"layer": "encoder.layers.encoder_layer_23", "weight": 0.1}
    assert set(record["final_loss"]) >= {"tv_l2", "l2"}


def test_settings_resolution():
    model = tiny_cnn_model()
    vital_class = get_method("vital", [ClassTarget(1)])
    neuron = get_method("vital", [Channel("stage3", 0)])
    assert resolve_settings(vital_class, model).tv_l2 == 0
    assert resolve_settings(neuron, model).tv_l2 == resolve_settings(neuron, model).l2 == 3e-7
    assert resolve_settings(neuron, model, 0).half_resolution_steps == 2000
    # fast unless a setting is named, for every kind of target
    for method in (vital_class, neuron):
        assert resolve_settings(method, model) == resolve_settings(method, model, "fast")
        assert resolve_settings(method, model).parametrization == "fourier"
    # a mapping changes the named setting's values; None means "not given"
    changed = resolve_settings(neuron, model, 1, {"steps": 20, "lr": None})
    assert (changed.steps, changed.lr, changed.warmup, changed.l2) == (20, 1.0, 5, 3e-7)
    # a complete Settings is used as it is (then without the neuron priors)
    complete = resolve_settings(neuron, model, None, vital.Settings(steps=8))
    assert complete.l2 == 0 and complete.warmup == 2
    with pytest.raises(VitalError, match="unknown setting"):
        resolve_settings(neuron, model, None, {"stepz": 3})
    with pytest.raises(VitalError, match="either"):
        resolve_settings(neuron, model, 1, vital.Settings())
    with pytest.raises(VitalError, match="setting 7 does not exist"):
        resolve_settings(neuron, model, 7)


@pytest.mark.parametrize(
    ("method", "targets", "with_references"),
    [
        ("vital", [1], True),
        ("vital", [Channel("stage3", 1)], True),
        ("fourier", [1], False),
    ],
)
def test_visualize_leaves_the_callers_module_as_it_found_it(
    method, targets, with_references, class_tree
):
    module = tiny_cnn_model().module
    module.train()
    module.stage1[1].eval()  # a mixed state must come back as it was too
    module.head.weight.requires_grad_(False)
    modes = {name: m.training for name, m in module.named_modules()}
    gradients = {name: p.requires_grad for name, p in module.named_parameters()}
    statistics = module.stem[1].running_mean.clone()
    vital.visualize(
        module,
        targets,
        class_tree if with_references else None,
        method=method,
        settings={"steps": 2, "resolution": 32},
        progress=False,
        **({"reference_count": 2} if with_references else {}),
    )
    assert {name: m.training for name, m in module.named_modules()} == modes
    assert {name: p.requires_grad for name, p in module.named_parameters()} == gradients
    # and it ran in eval mode: the BatchNorm statistics did not move
    assert torch.equal(module.stem[1].running_mean, statistics)


def test_records_are_valid_json_even_when_a_loss_overflows():
    record = Record(
        method="vital",
        model={"name": "m"},
        target={"kind": "class", "index": 1},
        settings={},
        seed=0,
        evaluation={"probability": math.nan},
        final_loss={"stem": math.inf},
        final_total=-math.inf,
        loss_history=[1.0, math.nan],
        seconds=0.1,
        batch_size=1,
        device="cpu",
    )
    text = record.to_json()
    data = json.loads(text)  # strict JSON: NaN/Infinity would not be written
    assert "NaN" not in text and "Infinity" not in text
    assert data["evaluation"]["probability"] is None and data["loss_history"] == [1.0, None]
    assert Record.from_json(text).final_total is None
    with pytest.raises(VitalError, match="newer"):
        Record.from_dict({**data, "schema": 99})
    with pytest.raises(VitalError, match="lacks"):
        Record.from_dict({"method": "vital"})


def test_a_records_scores_hold_for_the_png_it_writes(tmp_path, class_tree):
    import numpy as np
    from PIL import Image

    from vital import metrics

    model = tiny_cnn_model()
    targets = [1, 2, Channel("stage3", 0)]
    # Setting 1's pixel steps move the image far from its start in 3 steps, so the 8-bit
    # rounding of the PNG changes the scores (the last assertion checks that it does).
    results = [
        *vital.visualize(model, targets[:2], class_tree, out=tmp_path, setting=1,
                         settings={"steps": 3}),
        *vital.visualize(model, targets[2:], class_tree, out=tmp_path, setting=1,
                         settings={"steps": 3}),
    ]  # fmt: skip
    rounding_mattered = False
    for target, result in zip(targets, results, strict=True):
        array = np.asarray(Image.open(result.paths["png"]).convert("RGB"), dtype=np.float32)
        pixels = torch.from_numpy(array / 255).permute(2, 0, 1)[None]
        evaluation = result.record.evaluation
        if isinstance(target, int):
            (scores,) = metrics.target_scores(model, pixels, [target])
            assert evaluation["rank"] == scores["rank"]
            key = "probability"
        else:
            scores = {"activation": metrics.target_activations(model, pixels, [target])[0]}
            key = "activation"
        assert evaluation[key] == pytest.approx(scores[key], rel=1e-5, abs=1e-7)
        # The float image's score is kept, labelled; it differs, so the check above can fail.
        rounding_mattered |= abs(evaluation[f"float_{key}"] - scores[key]) > 1e-5
    assert rounding_mattered


@pytest.mark.parametrize("overrides", [{"coarse_start": 0.5}, {"half_resolution_steps": 2}])
def test_half_resolution_stages_on_a_fixed_size_model_are_refused_before_any_work(
    tmp_path, overrides
):
    write_images(tmp_path / "refs", 2, size=40)
    with pytest.raises(VitalError, match="does not take the 16px half-resolution images"):
        vital.visualize(
            tiny_vit_model(), [1], tmp_path / "refs", setting=1, progress=False,
            settings={"steps": 4, **overrides}, out=tmp_path / "out",
        )  # fmt: skip
    assert not list((tmp_path / "out").rglob("*.png"))  # refused before any picture
    # A model that takes other sizes runs them.
    (result,) = vital.visualize(
        tiny_cnn_model(), [1], tmp_path / "refs", setting=1, progress=False,
        settings={"steps": 4, **overrides},
    )  # fmt: skip
    assert result.pixels.shape[-1] == 32


def test_a_coarse_start_on_a_fixed_size_model_is_blurred_at_its_own_size(tmp_path):
    """``coarse_view="auto"`` (``fast``'s): a ViT, which refuses the pooled images, gets the
    coarse start blurred back to its input size and writes its picture; a model that takes
    other sizes gets the cheaper pooled view. The records say which ran."""
    write_images(tmp_path / "refs", 2, size=40)
    given = {"steps": 4, "coarse_start": 0.5, "coarse_view": "auto"}
    for model, view in ((tiny_vit_model(), "blurred"), (tiny_cnn_model(), "pooled")):
        out = tmp_path / view
        (result,) = vital.visualize(
            model, [1], tmp_path / "refs", setting="fast", progress=False, settings=given, out=out
        )
        assert result.record.settings["coarse_view"] == view
        assert result.pixels.shape[-1] == 32 and len(list(out.rglob("*.png"))) == 1
        method = get_method("vital", [ClassTarget(1)])
        assert resolve_settings(method, model, "fast", given).coarse_view == view
