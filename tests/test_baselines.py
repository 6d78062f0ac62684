"""Baselines on tiny models: objectives rise, MaCo's magnitude stays, DeepInversion's BN term."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import vital
from conftest import tiny_cnn_model, write_images
from vital.driver import resolve_settings
from vital.errors import VitalError
from vital.methods import METHODS, get_method
from vital.methods.deepinversion import batchnorm_inputs
from vital.methods.maco import natural_spectrum
from vital.optimize import Settings, optimize, resolved
from vital.parametrizations import COLOR_CORRELATION, Pixels
from vital.references import from_folder
from vital.targets import Channel, ClassTarget


@pytest.fixture
def sensitive_cnn():
    """The tiny CNN with a larger head, so that class logits respond clearly to the input."""
    model = tiny_cnn_model()
    with torch.no_grad():
        model.module.head.weight.mul_(30)
    return model


def _logits(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.module(model.preprocessing.normalize(pixels))


# MaCo at the model's resolution with large crops: the objective test needs no 512 px canvas.
OPTIONS = {"maco": {"canvas": None, "box_start": 0.9, "box_end": 0.6}}


def get_baseline(name, options=None):
    return get_method(name, [ClassTarget(0)], **(options or {}))


def settings_for(name, model, options=None, **overrides):
    return resolve_settings(get_baseline(name, options), model, None, overrides)


def visualize_baseline(name, model, targets, options=None, **arguments):
    return vital.visualize(model, targets, method=name, **arguments, **(options or {}))


def _initial_pixels(name, model, count, settings):
    seeds = range(settings.seed, settings.seed + count)
    parametrization = get_baseline(name, OPTIONS.get(name)).parametrization(model, seeds, settings)
    with torch.no_grad():
        return model.preprocessing.denormalize(parametrization.images()).clamp(0, 1)


@pytest.mark.parametrize("name", ["fourier", "maco"])
def test_activation_baselines_raise_the_class_logit(name, sensitive_cnn):
    settings = settings_for(name, sensitive_cnn, steps=100, resolution=32)
    targets = [1, 4]
    random_images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    spread = _logits(sensitive_cnn, random_images).std(dim=0)
    before = _logits(sensitive_cnn, _initial_pixels(name, sensitive_cnn, 2, settings))
    results = visualize_baseline(
        name, sensitive_cnn, targets, options=OPTIONS.get(name), settings=settings, progress=False
    )
    after = _logits(sensitive_cnn, torch.stack([r.pixels for r in results]))
    for item, target in enumerate(targets):
        # a rise of a third of the logit's spread over random images at least
        assert after[item, target] - before[item, target] > 0.3 * spread[target]
        history = results[item].record.loss_history
        assert np.mean(history[-5:]) < np.mean(history[:5])


def test_deepinversion_lowers_its_loss(sensitive_cnn):
    # a small jitter for a 32 px image (30 px would scramble it)
    settings = settings_for("deepinversion", sensitive_cnn, steps=100, jitter=2, flip=False)
    targets = torch.tensor([1, 4])
    before = _logits(sensitive_cnn, _initial_pixels("deepinversion", sensitive_cnn, 2, settings))
    results = visualize_baseline(
        "deepinversion", sensitive_cnn, targets.tolist(), settings=settings, progress=False
    )
    after = _logits(sensitive_cnn, torch.stack([r.pixels for r in results]))
    cross_entropy = torch.nn.functional.cross_entropy
    start = cross_entropy(before, targets, reduction="none")
    end = cross_entropy(after, targets, reduction="none")
    assert (end < start).all()
    for result in results:
        history = result.record.loss_history
        assert np.mean(history[-5:]) < 0.9 * np.mean(history[:5])
        assert set(result.record.final_loss) == {"cross_entropy", "batchnorm", "tv_l2", "l2"}


@pytest.mark.parametrize("name", ["fourier", "maco"])
def test_activation_baselines_raise_a_channel(name, tiny_cnn):
    settings = settings_for(name, tiny_cnn, steps=40, resolution=32)
    targets = [Channel("stage2", 3), Channel("stage1", 0)]
    initial = _initial_pixels(name, tiny_cnn, 2, settings)
    results = visualize_baseline(
        name, tiny_cnn, targets, options=OPTIONS.get(name), settings=settings, progress=False
    )
    final = torch.stack([r.pixels for r in results])
    layers = {}
    hooks = [
        getattr(tiny_cnn.module, layer).register_forward_hook(
            lambda _m, _i, out, layer=layer: layers.__setitem__(layer, out)
        )
        for layer in ("stage1", "stage2")
    ]
    try:
        for item, target in enumerate(targets):
            _logits(tiny_cnn, initial)
            start = layers[target.layer][item, target.index].mean()
            _logits(tiny_cnn, final)
            end = layers[target.layer][item, target.index].mean()
            assert end > start * 1.05
            assert results[item].record.evaluation["activation"] == pytest.approx(
                float(end), rel=1e-4
            )
    finally:
        for hook in hooks:
            hook.remove()


def _numpy_spectrum(images: list[torch.Tensor]) -> np.ndarray:
    """Independent: decorrelate with numpy's inverse, demean, |rfft2|, average."""
    inverse = np.linalg.inv(COLOR_CORRELATION.double().numpy())
    spectra = []
    for image in images:
        rgb = image.double().numpy().transpose(1, 2, 0) - 0.5
        decorrelated = rgb @ inverse
        decorrelated -= decorrelated.mean(axis=(0, 1))
        spectra.append(np.abs(np.fft.rfft2(decorrelated, axes=(0, 1))).transpose(2, 0, 1))
    return np.mean(spectra, axis=0)


def test_natural_spectrum_matches_a_direct_computation(tmp_path):
    write_images(tmp_path / "photos", 3, size=32)
    views = list(from_folder(tmp_path / "photos", count=5).views(32))
    expected = _numpy_spectrum(views)
    assert np.allclose(natural_spectrum(views, 32).numpy(), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(VitalError, match="no images"):
        natural_spectrum([], 32)


def test_maco_keeps_the_magnitude_spectrum_fixed(tmp_path, tiny_cnn):
    write_images(tmp_path / "photos", 3, size=32)
    source = from_folder(tmp_path / "photos", count=6)
    maco = get_baseline("maco", {"spectrum_source": source, "crops": 2, "canvas": None})
    settings = settings_for("maco", tiny_cnn, steps=25, resolution=32)
    natural = natural_spectrum(source.views(32), 32)
    parametrization = maco.parametrization(tiny_cnn, [0, 1], settings)
    with torch.no_grad():
        start_image = parametrization.images().clone()
        start = torch.fft.rfft2(parametrization.decorrelated().double()).abs()
    targets = [ClassTarget(1), ClassTarget(2)]
    with maco.objective(tiny_cnn, targets, settings, [0, 1]) as objective:
        optimize(
            objective,
            2,
            tiny_cnn.preprocessing,
            settings,
            tiny_cnn.device,
            False,
            parametrization=parametrization,
        )
    with torch.no_grad():
        end = torch.fft.rfft2(parametrization.decorrelated().double()).abs()
        assert not torch.allclose(parametrization.images(), start_image, atol=1e-3)
    # Same magnitude before and after, and it is the natural spectrum up to one scale factor
    # (the DC term is removed so that images have zero mean).
    precision = 1e-6 * float(start.max())  # float32 inverse FFT
    assert torch.allclose(start, end, rtol=1e-4, atol=precision)
    ratio = end[0] / natural.double()
    ratio[:, 0, 0] = ratio[:, 0, 1]
    assert end[0][:, 0, 0].abs().max() < precision
    assert torch.allclose(ratio, ratio.flatten()[1].expand_as(ratio), rtol=1e-3)


def test_maco_records_a_transparency_map(tiny_cnn, tmp_path):
    settings = settings_for("maco", tiny_cnn, steps=5)
    results = vital.visualize(
        tiny_cnn, [3], method="maco", settings=settings, out=tmp_path, progress=False
    )
    alpha = results[0].alpha
    # the default 512 px canvas, as in Xplique; the record scores it resized to 32 px
    assert results[0].pixels.shape == (3, 512, 512)
    assert alpha is not None and alpha.shape == (512, 512)
    assert results[0].record.options["canvas"] == 512
    assert 0 <= float(alpha.min()) and float(alpha.max()) == pytest.approx(1.0)
    assert results[0].paths["rgba"].is_file() and results[0].paths["alpha"].is_file()


def _batchnorm_statistics(module: nn.Module, x: torch.Tensor) -> list[tuple]:
    """Independent: every BatchNorm input's per-channel mean and biased variance."""
    stats = []
    hooks = [
        m.register_forward_hook(
            lambda _m, inputs, _o: stats.append(
                (inputs[0].mean(dim=(0, 2, 3)), inputs[0].var(dim=(0, 2, 3), unbiased=False))
            )
        )
        for m in module.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for hook in hooks:
            hook.remove()
    return stats


def test_deepinversion_bn_term_is_zero_when_statistics_match():
    model = tiny_cnn_model()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    layers = [m for m in model.module.modules() if isinstance(m, nn.BatchNorm2d)]
    # Running statistics set, layer by layer, to what x produces (each layer's input depends
    # on the layers before it, so set them in order).
    for number, layer in enumerate(layers):
        mean, variance = _batchnorm_statistics(model.module, x)[number]
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(variance)
    for statistics in ("image", "batch"):
        per_image = statistics == "image"
        with batchnorm_inputs(model.module) as recorder, torch.no_grad():
            model.module(x)
            assert float(recorder.loss(per_image).abs().max()) < 1e-5
            recorder.inputs = []
            other = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
            model.module(other)
            value = float(recorder.loss(per_image, first_multiplier=10.0)[0])
        # the same term computed by hand
        expected = 0.0
        for number, ((mean, variance), layer) in enumerate(
            zip(_batchnorm_statistics(model.module, other), layers, strict=True)
        ):
            term = (mean - layer.running_mean).norm() + (variance - layer.running_var).norm()
            expected += (10.0 if number == 0 else 1.0) * float(term)
        assert value == pytest.approx(expected, rel=1e-5)
        assert value > 0.1
    # the hooks are gone after the block
    assert all(not layer._forward_hooks for layer in layers)


def test_deepinversion_batch_statistics_share_the_term():
    model = tiny_cnn_model()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with batchnorm_inputs(model.module) as recorder, torch.no_grad():
        model.module(x)
        shares = recorder.loss(per_image=False)
        own = recorder.loss(per_image=True)
    assert torch.allclose(shares, shares[0].expand(3))
    assert not torch.allclose(own, own[0].expand(3))


def test_visualize_dispatches_to_baselines_and_writes_records(tiny_cnn, tmp_path):
    settings = settings_for("fourier", tiny_cnn, steps=3)
    results = vital.visualize(
        tiny_cnn,
        ["class 2", 5],
        method="fourier",
        settings=settings,
        out=tmp_path,
        progress=False,
    )
    assert [r.target.index for r in results] == [2, 5]
    record = json.loads(results[0].paths["json"].read_text())
    assert record["method"] == "fourier"
    assert record["target"] == {"kind": "class", "index": 2, "name": results[0].target.name}
    assert len(record["loss_history"]) == 3
    assert set(record["evaluation"]) >= {"probability", "rank", "top5", "initial_probability"}
    assert results[0].paths["png"].is_file()
    assert vital.ResultStore(tmp_path).records()[0].method == "fourier"


def test_baselines_reject_what_they_cannot_do(tiny_cnn, tiny_vit):
    with pytest.raises(VitalError, match="unknown method"):
        vital.visualize(tiny_cnn, [1], method="dreamy", progress=False)
    with pytest.raises(VitalError, match="visualises ClassTarget targets, not Channel"):
        visualize_baseline("deepinversion", tiny_cnn, [Channel("stage1", 0)], progress=False)
    with pytest.raises(VitalError, match="no option crop"):
        get_baseline("maco", {"crop": 3})
    with pytest.raises(VitalError, match="uses no reference images"):
        vital.visualize(tiny_cnn, [1], "photos/", method="fourier", progress=False)
    with pytest.raises(VitalError, match="selects one of VITAL's settings"):
        vital.visualize(tiny_cnn, [1], method="fourier", setting=0, progress=False)
    with pytest.raises(VitalError, match="no BatchNorm"):
        settings = settings_for("deepinversion", tiny_vit, steps=1)
        visualize_baseline("deepinversion", tiny_vit, [1], settings=settings, progress=False)
    with pytest.raises(VitalError, match="not found"):
        visualize_baseline("fourier", tiny_cnn, [Channel("stage9", 0)], progress=False)


def test_pixels_parametrization_is_the_default(tiny_cnn):
    settings = resolved(Settings(steps=4, warmup=2, jitter=2, seed=3))

    def objective(x, _factor):
        return {"mean": tiny_cnn.module(x)[:, 1]}

    default = optimize(objective, 2, tiny_cnn.preprocessing, settings, tiny_cnn.device, False)
    explicit = optimize(
        objective,
        2,
        tiny_cnn.preprocessing,
        settings,
        tiny_cnn.device,
        False,
        parametrization=Pixels(range(3, 5), 32, tiny_cnn.device, tiny_cnn.preprocessing),
    )
    assert torch.equal(default.images, explicit.images)
    assert torch.equal(default.gradient_magnitude, explicit.gradient_magnitude)
    with pytest.raises(VitalError, match="parametrisation makes images"):
        optimize(
            objective,
            3,
            tiny_cnn.preprocessing,
            settings,
            tiny_cnn.device,
            False,
            parametrization=Pixels(range(3, 5), 32, tiny_cnn.device, tiny_cnn.preprocessing),
        )


def test_registry_lists_vital_and_the_three_baselines():
    assert set(METHODS) == {"vital", "fourier", "maco", "deepinversion"}


def test_settings_follow_the_options(tiny_cnn):
    assert settings_for("maco", tiny_cnn).resolution == 512
    assert settings_for("maco", tiny_cnn, {"canvas": None}).resolution is None
    assert settings_for("deepinversion", tiny_cnn, steps=7).steps == 7
    assert settings_for("fourier", tiny_cnn, steps=None).steps == 512
