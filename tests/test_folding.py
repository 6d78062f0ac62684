"""BatchNorms folded into their convolutions for the speed of a class step."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import vital
from conftest import tiny_cnn_model, tiny_resnet_model
from vital.methods import vital_class
from vital.relevance import canonizers
from vital.relevance.canonizers import folded_batch_norms
from vital.zoo import frozen


def norms(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, nn.BatchNorm2d)]


def test_the_forward_pass_is_the_same_and_the_model_comes_back_whole():
    module = tiny_cnn_model().module.eval()
    # A negative scale too: without relevance the sign does not matter to the fold.
    module.stage1[1].weight.data[0] = -0.7
    before = {name: id(m) for name, m in module.named_modules()}
    tensors = {name: (id(t), t.clone()) for name, t in module.state_dict(keep_vars=True).items()}
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = module(x)
        with folded_batch_norms(module):
            assert norms(module) == []
            folded = module(x)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)
    assert {name: id(m) for name, m in module.named_modules()} == before
    for name, t in module.state_dict(keep_vars=True).items():
        assert id(t) == tensors[name][0], name
        assert torch.equal(t, tensors[name][1]), name


def test_read_layers_and_hooked_modules_keep_their_own_outputs():
    module = tiny_cnn_model().module.eval()
    seen: dict[str, torch.Tensor] = {}

    def reader(name):
        def hook(_module, _inputs, output):
            seen[name] = output.detach().clone()

        return hook

    # stem.0 is a convolution whose own (pre-BatchNorm) output is read; stage2.1 a BatchNorm
    # with a hook of its own.
    module.stem[0].register_forward_hook(reader("stem.0"))
    module.stage2[1].register_forward_hook(reader("stage2.1"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        module(x)
        expected = dict(seen)
        with folded_batch_norms(module, keep=["stem.0"]):
            assert norms(module) == ["stem.1", "stage2.1"]
            module(x)
    for name, value in expected.items():
        torch.testing.assert_close(seen[name], value, rtol=1e-5, atol=1e-5)


def test_a_tapped_resnet_stem_convolution_is_not_folded():
    module = tiny_resnet_model().module.eval()
    # torchvision's BasicBlock calls conv1 then bn1 (presets.FOLDABLE_PAIRS); METHOD's ResNet
    # taps read a convolution's output before its BatchNorm the same way (conv1).
    with folded_batch_norms(module, keep=["layer1.conv1"]):
        assert "layer1.bn1" in norms(module)
        assert "layer1.bn2" not in norms(module)
    with folded_batch_norms(module):
        assert "layer1.bn1" not in norms(module)


def test_the_model_is_restored_after_an_error():
    module = tiny_cnn_model().module.eval()
    weight = module.stem[0].weight
    with pytest.raises(RuntimeError), folded_batch_norms(module):
        raise RuntimeError("interrupted")
    assert module.stem[0].weight is weight
    assert len(norms(module)) == 4


def test_class_steps_run_folded_and_give_the_unfolded_picture(image_folder, monkeypatch):
    settings = vital.Settings(steps=5, seed=3, jitter=2, resolution=32)

    def picture():
        model = tiny_cnn_model()
        with frozen(model.module):
            (result,) = vital.visualize(
                model, [2], image_folder, settings=settings, progress=False, reference_count=3
            )
        return result.pixels

    folds = []
    register = canonizers.FoldBatchNorm.register

    def counted(self, *args):
        folds.append(args[1])
        return register(self, *args)

    monkeypatch.setattr(canonizers.FoldBatchNorm, "register", counted)
    folded = picture()
    assert len(folds) == 4  # every BatchNorm of the tiny CNN; its taps are the stages' outputs
    monkeypatch.setattr(vital_class, "folded_batch_norms", lambda *_args: contextlib.nullcontext())
    plain = picture()
    # Adam turns rounding in tiny gradients into steps of its full size, here and there.
    difference = (folded - plain).abs()
    assert difference.mean() < 1e-3 and difference.max() < 0.02
