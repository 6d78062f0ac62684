"""Users' own modules and the API's helpers given the wrong thing: one clear error, or a run.

Each case came from a hostile round through the Python API (2026-12-07); each failed before
its fix with a traceback from inside torch or a wrong refusal.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import vital
from conftest import write_images
from vital.atlas import build_atlas
from vital.compare import compare
from vital.errors import VitalError

STEPS = {"steps": 1, "resolution": 32}


class Small(nn.Module):
    """conv → ReLU → conv → ReLU → pool → Linear(16, 10)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean(dim=(2, 3)))


class FixedSize(Small):
    """Takes 32 px images only, as a ViT asserts its input size."""

    def forward(self, x):
        assert x.shape[-1] == 32, f"Input height ({x.shape[-1]}) doesn't match model (32)"
        return super().forward(x)


class DictOutput(Small):
    def forward(self, x):
        return {"logits": super().forward(x)}


@pytest.fixture
def class_refs(tmp_path):
    for index in (3, 5):
        write_images(tmp_path / "refs" / str(index), 2, seed=index)
    return tmp_path / "refs"


def test_a_model_wrapped_with_its_preprocessing_keeps_its_classes(class_refs):
    """docs/models.md's way to give preprocessing lost the labels: "no classifier output"."""
    model = vital.Model(Small(), preprocessing=vital.Preprocessing(input_size=32))
    assert model.labels is not None and len(model.labels) == 10
    (result,) = vital.visualize(
        model, [3], class_refs, settings={"steps": 1}, reference_count=2, progress=False
    )
    assert result.record.target["index"] == 3


def test_a_compiled_model_is_explained_through_its_original(class_refs):
    original = Small()
    compiled = torch.compile(original, backend="eager")
    assert vital.Model(compiled).module is original  # hooks would be traced again each call
    assert vital.zoo.as_model(compiled).module is original


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_runs(class_refs, dtype):
    model = Small().to(dtype)
    (result,) = vital.visualize(
        model, [3], class_refs, settings=STEPS, reference_count=2, progress=False
    )
    assert result.record.evaluation["probability"] >= 0


def test_a_fixed_size_model_is_refused_at_another_resolution(class_refs):
    model = vital.Model(FixedSize(), preprocessing=vital.Preprocessing(input_size=32))
    with pytest.raises(VitalError, match=r"does not take 48px images .*it takes 32px"):
        vital.visualize(
            model, [3], class_refs, settings={"steps": 1, "resolution": 48}, progress=False
        )
    # and at the size its preprocessing claims wrongly, the first forward says what to set
    with pytest.raises(VitalError, match=r"failed on a \(1, 3, 224, 224\) RGB image: Input"):
        vital.visualize(FixedSize(), [3], class_refs, settings={"steps": 1}, progress=False)


def test_explain_and_concepts_refuse_a_model_that_returns_a_dict(class_refs):
    image = next(class_refs.rglob("*.png"))
    with pytest.raises(VitalError, match="output is a dict, not one score per class"):
        vital.explain(DictOutput(), image, layer="conv2", pictures=False, progress=False)


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda: vital.Model(None), "the model is a torch nn.Module, not NoneType"),
        (lambda: vital.Model("resnet18"), "vital.load_model"),
        (lambda: vital.Model(Small().to("meta")), "meta device"),
        (lambda: vital.Preprocessing(mean=(0.5,)), "mean is three numbers"),
        (lambda: vital.Preprocessing(std=(0, 0, 0)), "std divides the pixels"),
        (lambda: vital.Preprocessing(input_size=-32), "input_size is the side"),
        (lambda: vital.Preprocessing(input_size="32"), "input_size is the side"),
        (lambda: vital.from_folder(None), "a reference folder is a path, not NoneType"),
        (lambda: vital.from_imagenet_class(None, "n07920052"), "the tree's root"),
        (lambda: vital.from_imagenet_class(".", None), "WordNet id"),
        (lambda: vital.learning_rate("1", 10, 0.1), "step is a whole number"),
        (lambda: vital.learning_rate(1, 0, 0.1), "total is a whole number of at least 1"),
        (lambda: vital.learning_rate(1, 10, None), "peak is the largest learning rate"),
        (lambda: vital.visualize(Small(), [3], setting=[1]), "setting [1] does not exist"),
        (lambda: vital.visualize(Small(), [3], progress="no"), "progress is True or False"),
    ],
)
def test_a_wrong_value_is_one_clear_error(make, said):
    with pytest.raises(VitalError) as error:
        make()
    assert said in str(error.value)


def test_preprocessing_takes_numpy_values_as_numbers():
    import numpy as np

    preprocessing = vital.Preprocessing(mean=np.array([0.5, 0.5, 0.5]), input_size=np.int64(32))
    assert preprocessing.mean == (0.5, 0.5, 0.5) and type(preprocessing.input_size) is int


def test_classify_takes_images_of_another_float_type():
    probabilities = vital.classify(vital.Model(Small()), torch.zeros(1, 3, 32, 32).double())
    assert probabilities.shape == (1, 10) and torch.allclose(probabilities.sum(), torch.ones(()))


def test_an_unwritable_cache_is_named_once_with_what_to_set(class_refs, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "afile"
    not_a_folder.write_text("x")
    monkeypatch.setenv("VITAL_CACHE", str(not_a_folder))
    monkeypatch.setattr(vital.references, "_UNKEPT_CACHES", set())
    with pytest.warns(UserWarning) as said:
        vital.visualize(Small(), [3, 5], class_refs, settings=STEPS, reference_count=2,
                        batch_size=1, progress=False)  # fmt: skip
    lines = [str(w.message) for w in said if "cache" in str(w.message)]
    assert len(lines) == 1 and "$VITAL_CACHE" in lines[0] and "out=DIR" not in lines[0]


class Shared(nn.Module):
    """conv2 and the ReLU run more than once per forward pass; ``unused`` never runs."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding=1)
        self.act, self.unused, self.head = nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.act(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("run", "said"),
    [
        (lambda refs: vital.visualize(Shared(), [vital.Channel("conv2", 0)], refs, settings=STEPS,
                                      relevance="grad-x-act", progress=False),
         "layer 'conv2' runs 2 times in one forward pass"),
        (lambda refs: vital.visualize(Shared(), [vital.Channel("unused", 0)], refs, settings=STEPS,
                                      relevance="grad-x-act", progress=False),
         "layer 'unused' does not run in the model's forward pass"),
        (lambda refs: vital.visualize(Shared(), [vital.Channel("conv1", 0)], refs, settings=STEPS,
                                      relevance="grad-x-act", taps=["act=1"], progress=False),
         "tap 'act' runs 3 times"),
        (lambda refs: vital.visualize(Shared(), [3], refs, settings=STEPS, taps=["conv2"],
                                      progress=False),
         "tap 'conv2' runs 2 times"),
        (lambda refs: vital.explain(Shared(), next(refs.rglob("*.png")), layer="unused",
                                    pictures=False, progress=False),
         "layer 'unused' does not run"),
        (lambda refs: vital.mine(Shared(), "conv2", refs, refs.parent / "m", progress=False),
         "layer 'conv2' runs 2 times"),
    ],
)  # fmt: skip
def test_a_layer_that_runs_twice_or_never_is_refused(class_refs, run, said):
    """A hook on a module used twice read its first call and said nothing of the second."""
    with pytest.raises(VitalError) as error:
        run(class_refs)
    assert said in str(error.value)


class Trunk(nn.Module):
    """Every layer inside one container, as torchvision's ``features``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_a_container_as_the_target_layer_names_a_layer_inside_it(image_folder):
    model = vital.Model(Trunk(), preprocessing=vital.Preprocessing(input_size=32))
    with pytest.raises(VitalError, match=r"'features' holds the layers .* its last, 'features.5'"):
        vital.visualize(
            model, [vital.Channel("features", 0)], image_folder, settings={"steps": 1},
            progress=False,
        )  # fmt: skip


def test_a_vit_built_for_another_size_is_fed_that_size():
    """timm keeps its pretrained config's 224 after img_size=32, torchvision's ViT has no
    config: the size the module declares is the one it is fed."""
    import timm
    import torchvision

    from vital.zoo import preprocessing_of

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, pretrained=False)
    preprocessing = preprocessing_of(vit)
    assert preprocessing.input_size == 32 and "patch_embed.img_size" in preprocessing.source
    assert preprocessing.mean == (0.5, 0.5, 0.5)  # the rest of its config is kept
    torchvision_vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=16
    )
    assert preprocessing_of(torchvision_vit).input_size == 32
    assert preprocessing_of(Small()).input_size == 224  # nothing declared: ImageNet's


class ConvHead(nn.Module):
    """A classifier without an nn.Linear: a 1×1 convolution to 10 maps, averaged (SqueezeNet)."""

    def __init__(self):
        super().__init__()
        self.conv, self.classifier = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 10, 1)

    def forward(self, x):
        return self.classifier(torch.relu(self.conv(x))).mean(dim=(2, 3))


def test_a_classifier_whose_head_is_a_convolution_has_its_classes(class_refs):
    model = vital.Model(ConvHead(), preprocessing=vital.Preprocessing(input_size=32))
    assert model.labels is None  # no nn.Linear to read: the output's width tells, when asked
    (result,) = vital.visualize(
        model, [3], class_refs, settings={"steps": 1}, reference_count=2, taps=["conv"],
        progress=False,
    )  # fmt: skip
    assert result.record.target["index"] == 3 and len(model.labels) == 10
    with pytest.raises(VitalError, match="0..9"):
        vital.visualize(model, [12], class_refs, settings={"steps": 1}, progress=False)


def test_a_layer_the_relevance_rules_skip_is_named_with_what_to_choose(class_refs):
    """EfficientNet's stochastic depth runs in the plain forward but not under the rules (the
    residual split rewrites its block): explain said KeyError, a neuron "tap others"."""
    model = vital.load_model("efficientnet_b0", weights="random")
    image = next(class_refs.rglob("*.png"))
    with pytest.raises(VitalError, match="does not run once the relevance rules are attached"):
        vital.explain(model, image, layer="features.2.1.stochastic_depth", pictures=False,
                      progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda m: compare(m, [1], method=5), "method= is a method name"),
        (lambda m: compare(m, [1], steps=1, settings="fast"),
         "settings= is a mapping of changes"),
        (lambda m: vital.explain(m, "x.png", layer="stage2", store=5),
         "store= is a folder or a list of folders"),
        (lambda m: build_atlas(m, [1], lambda t: None, folder="atlas", seed=1.7),
         "the seed must be a whole number"),
        (lambda m: build_atlas(m, [1], lambda t: None, folder="atlas", seed=True),
         "the seed must be a whole number"),
    ],
)  # fmt: skip
def test_renamed_and_new_keywords_of_the_wrong_type_are_one_error(
    call, said, tmp_path, monkeypatch
):
    from conftest import tiny_cnn_model

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # steps= is the old keyword
        with pytest.raises(VitalError) as error:
            call(tiny_cnn_model())
    assert said in str(error.value)


def test_mine_refuses_a_device_that_is_not_there_before_making_its_folder(class_refs, tmp_path):
    with pytest.raises(VitalError, match="unknown device 'gpu'"):
        vital.mine(Small(), "conv2", class_refs, tmp_path / "mined", device="gpu")
    assert not (tmp_path / "mined").exists()
