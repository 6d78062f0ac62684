"""Shared fixtures: tiny seeded models and generated images, so the suite runs in minutes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vital.labels import generic_labels
from vital.zoo import Model, Preprocessing


class TinyCNN(nn.Module):
    """Stem + three stages at 16, 8 and 4 px for 32 px input, BatchNorm, 10 classes."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(self.pool(x).flatten(1))


def tiny_cnn_model(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    module = TinyCNN()
    # Non-trivial BatchNorm statistics, as a trained network has.
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return Model(
        module,
        name="tiny_cnn",
        preprocessing=Preprocessing(input_size=32),
        labels=generic_labels(10),
        weights_source="random (test)",
    )


@pytest.fixture
def tiny_cnn() -> Model:
    return tiny_cnn_model()


class TinyResNet(nn.Module):
    """A ResNet in miniature: conv-BN-ReLU-max-pool stem, two torchvision BasicBlocks, head."""

    def __init__(self, classes: int = 10):
        from torchvision.models.resnet import BasicBlock

        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(8, 8)
        downsample = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.layer2 = BasicBlock(8, 16, stride=2, downsample=downsample)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(self.avgpool(x).flatten(1))


def tiny_resnet_model(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    module = TinyResNet()
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return Model(
        module,
        name="tiny_resnet",
        preprocessing=Preprocessing(input_size=32),
        labels=generic_labels(10),
        weights_source="random (test)",
    )


@pytest.fixture
def tiny_resnet() -> Model:
    return tiny_resnet_model()


@pytest.fixture
def tiny_vit() -> Model:
    return tiny_vit_model()


def tiny_vit_model() -> Model:
    import timm

    torch.manual_seed(0)
    module = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=4,
        embed_dim=32,
        num_heads=2,
        num_classes=10,
    )
    return Model(module, "tiny_vit", Preprocessing(input_size=32), generic_labels(10))


def tiny_swin_model() -> Model:
    """timm's Swin at 64 px, one block a stage: its stages' outputs are channels-last."""
    import timm

    torch.manual_seed(0)
    module = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=64, window_size=4,
        embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), num_classes=10,
    )  # fmt: skip
    return Model(module, "tiny_swin", Preprocessing(input_size=64), generic_labels(10))


def write_images(folder: Path, count: int, size: int = 48, seed: int = 0) -> list[Path]:
    """Random smooth-ish RGB images as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size + 8 * i % 17, size), Image.Resampling.BICUBIC)
        path = folder / f"img{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture
def refs(tmp_path: Path) -> Path:
    """Class sub-folders 1 and 2 of two images each (inner targets take every image below)."""
    for index in (1, 2):
        write_images(tmp_path / "refs" / str(index), 2, seed=index)
    return tmp_path / "refs"


@pytest.fixture
def unreadable_images(tmp_path: Path) -> Path:
    """A folder of two files named as images that are none: text as ``a.png``, an empty
    ``b.jpg``."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_text("not an image")
    (folder / "b.jpg").write_bytes(b"")
    return folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "refs"
    write_images(folder, 4)
    return folder


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep prototype caches out of the user's home."""
    monkeypatch.setenv("VITAL_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


# The checkout's own folder; tests write into temporary folders, never here (a default
# --out of vital-out written by a test made the next `make demo` meet another run's files).
CHECKOUT = Path(__file__).resolve().parent.parent
_TOOL_FOLDERS = {".pytest_cache", ".ruff_cache", "__pycache__", ".coverage"}


def _checkout_entries() -> set[Path]:
    entries = {p for p in CHECKOUT.iterdir() if p.name not in _TOOL_FOLDERS}
    output = CHECKOUT / "vital-out"
    return entries | (set(output.iterdir()) if output.is_dir() else set())


@pytest.fixture(autouse=True)
def _nothing_written_into_the_checkout():
    """Fail a test that leaves a new file in the checkout (or in its vital-out)."""
    before = _checkout_entries()
    yield
    added = sorted(str(p.relative_to(CHECKOUT)) for p in _checkout_entries() - before)
    assert not added, f"the test wrote into the checkout: {added}"


def quadratic_objective(target: float):
    """An objective pulling every model-input value towards ``target`` (no model needed)."""

    def objective(model_input, factor):
        return {"distance": ((model_input - target) ** 2).flatten(1).mean(1)}

    return objective


def first_caller(marker: str) -> bool:
    """True for exactly one caller across processes (it creates ``marker``)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def stop_after_the_first_picture(monkeypatch) -> None:
    """Ctrl-C right after the first picture is written: a run stopped halfway."""
    from vital.store import ResultStore

    written = ResultStore.write

    def stop(store, result):
        written(store, result)
        raise KeyboardInterrupt

    monkeypatch.setattr(ResultStore, "write", stop)


def activations_from(final: float, initial: float):
    """A stand-in for ``metrics.evaluate``: ``initial`` on the starting noise, ``final`` after.

    The driver evaluates the start first, then each finished picture; monkeypatched in as
    ``vital.driver.metrics.evaluate``, it makes a picture end above or below its start at will.
    """

    def evaluate(model, images, targets):
        is_start = not hasattr(evaluate, "called")
        evaluate.called = True
        return [{"activation": initial if is_start else final} for _ in targets]

    return evaluate
