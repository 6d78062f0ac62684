"""Every method × a tiny CNN, a tiny ResNet and a tiny ViT, in captum's style: one declarative
matrix of cases, replayed for the record schema and for batch = one at a time."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

import vital
from conftest import tiny_cnn_model, tiny_resnet_model, tiny_vit_model, write_images
from vital.methods import get_method
from vital.methods.activation import activation_objective
from vital.methods.base import Method, check_settings_for, target_plan
from vital.optimize import Settings
from vital.record import SCHEMA_VERSION, Record
from vital.targets import Channel, ClassTarget, Direction

MODELS = {"cnn": tiny_cnn_model, "resnet": tiny_resnet_model, "vit": tiny_vit_model}
# An inner layer of each model and its channels (the ViT's: embedding dimensions of tokens).
INNER = {"cnn": ("stage2", 16), "resnet": ("layer2", 16), "vit": ("blocks.2", 32)}

# (method, options, target kind); DeepInversion's published BatchNorm term pools the batch's
# statistics, so it is tested with per-image statistics, where a batch must equal lone runs.
CASES = [
    ("vital", {}, "class"),
    ("vital", {}, "channel"),
    ("vital", {"relevance": "grad-x-act"}, "direction"),
    ("fourier", {}, "class"),
    ("fourier", {}, "channel"),
    ("maco", {"canvas": None, "crops": 2}, "class"),
    ("maco", {"canvas": None, "crops": 2}, "direction"),
    ("deepinversion", {"statistics": "image"}, "class"),
]


def _targets(kind: str, model_name: str):
    if kind == "class":
        return [1, 4]
    layer, channels = INNER[model_name]
    if kind == "channel":
        return [Channel(layer, 3), Channel(layer, 5)]
    values = torch.linspace(-1, 1, channels).tolist()
    return [Direction(layer, tuple(values), "ramp"), Direction(layer, tuple(values[::-1]), "pmar")]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix") / "refs"
    for index in (1, 4):  # class sub-folders; inner targets take every image below
        write_images(folder / str(index), 2, size=40, seed=index)
    return folder


def _run(method, options, model, targets, references, seeds, batch_size, out=None):
    return vital.visualize(
        model,
        targets,
        references if method == "vital" else None,
        method=method,
        settings={"steps": 3, "jitter": 2, "warmup": 1},
        seeds=seeds,
        batch_size=batch_size,
        out=out,
        progress=False,
        **({"reference_count": 3} if method == "vital" else {}),
        **options,
    )


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize(("method", "options", "kind"), CASES)
def test_record_schema_and_batch_equals_one_at_a_time(
    method, options, kind, model_name, references, tmp_path
):
    targets = _targets(kind, model_name)
    if method == "deepinversion" and model_name == "vit":
        pytest.skip("DeepInversion needs BatchNorm layers (the refusal is tested elsewhere)")
    model = MODELS[model_name]()
    model.module.double()  # float64: batched and lone kernels agree far below Adam's eps
    together = _run(method, options, model, targets, references, [7, 8], 2, tmp_path)
    for item, target in enumerate(targets):
        (alone,) = _run(method, options, model, [target], references, [7 + item], 1)
        # fast's coarse stage: a batch's and a lone image's float32 Fourier coefficients
        # round differently by about one float32 step (9e-8 after 3 steps); exact without it
        assert torch.allclose(alone.pixels, together[item].pixels, atol=1e-6, rtol=0)
        assert alone.record.seed == together[item].record.seed == 7 + item
        assert alone.record.settings == together[item].record.settings
    for result in together:
        record = result.record
        data = json.loads(result.paths["json"].read_text())
        assert Record.from_dict(data).to_dict() == record.to_dict()
        assert data["schema"] == SCHEMA_VERSION and data["method"] == method
        assert len(data["loss_history"]) == 3 and data["batch_size"] == 2
        assert data["settings"]["steps"] == 3 and data["settings"]["warmup"] == 1
        evaluation = data["evaluation"]
        if kind == "class":
            assert {"probability", "rank", "top5", "initial_probability"} <= set(evaluation)
        else:
            assert {"activation", "initial_activation"} <= set(evaluation)
        if method == "vital":
            assert data["references"]["count"] == 3 and data["taps"]
        else:
            assert data["options"] == {**get_options(method), **options}
        transparency = method == "maco" or (method == "vital" and kind != "class")
        assert (result.alpha is not None) == transparency


def get_options(method):
    return get_method(method, [ClassTarget(1)]).options()


# --- a sixth method: the example of docs/architecture.md, registered as a user would --------


@dataclass
class PixelActivation(Method):
    """Activation maximisation on raw pixels (Erhan et al. 2009)."""

    name = "pixel-am"
    targets = (ClassTarget, Channel, Direction)

    def default_settings(self, model, setting=None):
        check_settings_for(self, setting)
        return Settings(steps=256, lr=0.05, betas=(0.9, 0.999), warmup=10, jitter=4)

    @contextlib.contextmanager
    def objective(self, model, plans, settings, seeds):
        with activation_objective(model, target_plan(plans)) as objective:
            yield objective


def test_a_sixth_method_is_one_class_and_one_registry_line(monkeypatch, tmp_path):
    import vital.cli
    from vital.methods import METHODS

    monkeypatch.setitem(METHODS, "pixel-am", (PixelActivation,))
    model = tiny_cnn_model()
    (result,) = vital.visualize(
        model, [Channel("stage2", 1)], method="pixel-am", settings={"steps": 20}, progress=False
    )
    record = result.record
    assert record.method == "pixel-am" and record.settings["lr"] == 0.05
    assert record.evaluation["activation"] > record.evaluation["initial_activation"]

    monkeypatch.setattr(vital.cli.session, "load", lambda *args: model)
    arguments = ["class", "-c", "3", "--method", "pixel-am", "--steps", "2"]
    outcome = CliRunner().invoke(vital.cli.app, [*arguments, "--out", str(tmp_path)])
    assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "pixel-am-grid.png").is_file()
    assert json.loads(next(tmp_path.glob("pixel-am-*.json")).read_text())["options"] == {}
