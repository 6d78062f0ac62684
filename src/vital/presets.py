"""Architecture knowledge, as data: everything vital knows about particular model families.

Like timm's pretrained configs, this is the one place where model names and class paths appear;
the code that uses it (taps, relevance canonizers, method defaults) has no architecture
branches. Add a family here, not an ``if`` elsewhere.

- :data:`PRESETS`, :data:`PRESET_PRIORS`: the authors' feature taps and class-target image
  priors (METHOD.md sections 1–2).
- :data:`NEURON_STEM_WEIGHT`, :data:`NEURON_PRIOR`: the authors' inner-neuron defaults
  (METHOD.md section 3).
- :data:`RESIDUAL_FLAGS`, :data:`FOLDABLE_PAIRS`, :data:`GATES`, :data:`REFUSED`,
  :data:`NEUTRAL_BY_NAME`: which blocks the LRP canonizers rewrite, fold, gate, refuse or pass
  (:mod:`vital.relevance`), named by class path so that optional packages need not be
  installed.
- :data:`RESIDUAL_BRANCHES`: the branch a residual block adds, matched for inner units of the
  block (:mod:`vital.methods.vital_neuron`).
- :data:`INPUT_SIZE_ATTRIBUTES`: where a module with a fixed input size says which.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from vital.errors import VitalError, plain


@dataclass(frozen=True)
class Tap:
    """One feature tap: a module name and its weight in the loss."""

    layer: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.layer, str) or not self.layer.strip():
            raise VitalError(f"a tap names a layer (run `vital layers MODEL`), not {self.layer!r}.")
        weight = plain(self.weight)  # a weight from numpy (an array of weights) is its number
        object.__setattr__(self, "weight", weight)  # frozen: the record stores a Python number
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise VitalError(f"tap {self.layer!r}: its weight is a number, not {weight!r}.")
        if not math.isfinite(weight) or weight < 0:
            raise VitalError(
                f"tap {self.layer!r}: its weight must be a finite number ≥ 0, not {weight}."
            )


# --- feature taps and priors (METHOD.md sections 1-3) -------------------------------------------

# ConvNeXt's last tap is the FX node ``features.7.2.add`` in the authors' code: the residual sum,
# which is the output of module ``features.7.2``.
_VIT_B = ("conv_proj", *(f"encoder.layers.encoder_layer_{i}" for i in (0, 4, 8, 11)))
_VIT_L = ("conv_proj", *(f"encoder.layers.encoder_layer_{i}" for i in (2, 9, 20, 23)))
PRESETS: dict[str, tuple[Tap, ...]] = {
    "resnet50": tuple(Tap(n) for n in ("conv1", "layer1", "layer2", "layer3", "layer4")),
    "densenet121": tuple(
        Tap(n, w)
        for n, w in zip(
            ("features.conv0", *(f"features.denseblock{i}" for i in range(1, 5))),
            (1, 1, 1, 1, 100),
            strict=True,
        )
    ),
    "convnext_base": tuple(
        Tap(n, w)
        for n, w in zip(
            ("features.0", "features.2.1", "features.4.1", "features.6.1", "features.7.2"),
            (10, 1, 1, 1, 1),
            strict=True,
        )
    ),
    "vit_b_16": tuple(Tap(n) for n in _VIT_B),
    "vit_b_32": tuple(Tap(n) for n in _VIT_B),
    "vit_l_16": tuple(Tap(n) for n in _VIT_L),
    "vit_l_32": tuple(Tap(n, w) for n, w in zip(_VIT_L, (1, 1, 1, 1, 0.1), strict=True)),
}

# Image-prior strengths (tv_l2 = l2) that belong with a preset for class targets.
PRESET_PRIORS: dict[str, float] = {"vit_l_16": 0.003, "vit_l_32": 0.0003}

# Inner neurons: the stem tap weighs 0.1, the image priors tv_l2 = l2 = 3e-7.
NEURON_STEM_WEIGHT = 0.1
NEURON_PRIOR = 3e-7


# --- relevance: blocks the LRP canonizers know (vital.relevance) --------------------------------

# Residual blocks whose skip connection is switched by a boolean attribute: the canonizer turns
# the flag off (the block then returns its main path) and adds the shortcut through a
# ``ResidualSum``.
RESIDUAL_FLAGS: dict[str, str] = {
    "torchvision.models.mobilenetv2.InvertedResidual": "use_res_connect",
    "torchvision.models.mobilenetv3.InvertedResidual": "use_res_connect",
    # EfficientNet's blocks also drop their main path at random while training (stochastic
    # depth); in eval mode that is the identity, which the block skips with its flag off.
    "torchvision.models.efficientnet.MBConv": "use_res_connect",
    "torchvision.models.efficientnet.FusedMBConv": "use_res_connect",
    "torchvision.models.mnasnet._InvertedResidual": "apply_residual",
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": "has_skip",
    "timm.models._efficientnet_blocks.InvertedResidual": "has_skip",
    "timm.models._efficientnet_blocks.CondConvResidual": "has_skip",
    "timm.models._efficientnet_blocks.EdgeResidual": "has_skip",
    "timm.models._efficientnet_blocks.UniversalInvertedResidual": "has_skip",
}

# Residual blocks, and the child whose output is the branch added to their input (the sum's other
# input, besides the block's input). Inner units of such a block are matched there too
# (``near_tap``): the block's input alone leaves the added branch, and so the unit, free. Only
# blocks whose sum is not in place are listed (an in-place sum would overwrite the read branch),
# and the branch is a module that also runs while the LRP canonizer switches the skip off.
RESIDUAL_BRANCHES: dict[str, str] = {
    "torchvision.models.mobilenetv2.InvertedResidual": "conv",
    "timm.models._efficientnet_blocks.InvertedResidual": "bn3",
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": "bn2",
    "timm.models.vision_transformer.Block": "drop_path2",
    "torchvision.models.vision_transformer.EncoderBlock": "mlp",
}

# Residual blocks whose forward is replaced outright (their sum is an in-place ``+=``, or has
# no flag to switch it off): the name of the forward (vital.relevance.canonizers) that adds the
# shortcut through a ``ResidualSum``.
RESIDUAL_FORWARDS: dict[str, str] = {
    "torchvision.models.resnet.Bottleneck": "bottleneck",
    "torchvision.models.resnet.BasicBlock": "basic_block",
    "torchvision.models.regnet.ResBottleneckBlock": "regnet",
    "timm.models.regnet.Bottleneck": "timm_regnet",
    "timm.models.resnet.BasicBlock": "timm_basic_block",
    "timm.models.resnet.Bottleneck": "timm_bottleneck",
}

# Classifiers whose forward pools with a function: (features child, classifier child,
# activation between them or None). The canonizer routes the pool through a module so that the
# average-pool rule spreads relevance over positions.
POOLED_HEADS: dict[str, tuple[str, str, str | None]] = {
    "torchvision.models.mobilenetv2.MobileNetV2": ("features", "classifier", None),
    "torchvision.models.densenet.DenseNet": ("features", "classifier", "relu"),
}

# Blocks whose forward applies these (convolution, BatchNorm) children one after the other.
FOLDABLE_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "torchvision.models.resnet.Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    "torchvision.models.resnet.BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "torchvision.models.resnet.ResNet": (("conv1", "bn1"),),
}

# Convolutions whose forward pads the input TensorFlow's "SAME" way (pads that depend on the
# input's size, the odd one after) and then convolves without padding: z⁺ pads the same way
# and runs its convolutions directly (relevance.rules.ZPlus), not through the module's forward.
SAME_PADDING_CONVS: tuple[str, ...] = ("timm.layers.conv2d_same.Conv2dSame",)

# Squeeze-excitation gates: ``x · s(x)`` with ``s`` a per-channel gate in [0, 1] computed from
# ``x`` itself. The LRP rules treat the gate as a constant and pass all relevance through the
# signal ``x``, none into the branch that computes ``s`` ("signal takes all", as Arras et al.
# 2017 do for LSTM gates); the modules inside a gate get no rule of their own.
GATES: tuple[str, ...] = (
    "torchvision.ops.misc.SqueezeExcitation",
    "timm.models._efficientnet_blocks.SqueezeExcite",
    "timm.layers.squeeze_excite.SEModule",
    "timm.layers.squeeze_excite.EffectiveSEModule",
)

# Blocks that no rule of the CNN rule sets covers, with the reason; LRP backends refuse them.
# (``lrp`` crosses attention with AttnLRP's rules instead, relevance.attention.)
REFUSED: dict[str, str] = {
    "torch.nn.modules.activation.MultiheadAttention": (
        "weighs tokens by computed attention, which the CNN rules do not cover"
    ),
}

# Drop-path wrappers (timm's DropPath, torchvision's StochasticDepth: identities in eval mode),
# and layers that scale features by a constant (relevance passes in proportion).
NEUTRAL_BY_NAME: tuple[str, ...] = (
    "timm.layers.drop.DropPath",
    "torchvision.ops.stochastic_depth.StochasticDepth",
    "timm.layers.layer_scale.LayerScale",
)

# Attention blocks with a fused query-key-value projection: the child that computes it. The
# transformer rules (AttnLRP, relevance.attention) stop relevance at its query and key thirds.
# torch's own nn.MultiheadAttention is handled directly.
ATTENTION_QKV: dict[str, str] = {
    "timm.models.vision_transformer.Attention": "qkv",
    "timm.models.swin_transformer.WindowAttention": "qkv",
}


# Where a module that takes one input size says which (attribute paths, first found wins):
# timm's ViTs keep their pretrained config's size after ``img_size=``, torchvision's ViT
# carries no config at all. Read for plain modules (:func:`vital.zoo.preprocessing_of`).
INPUT_SIZE_ATTRIBUTES: tuple[str, ...] = ("patch_embed.img_size", "image_size")


def classes_named(paths: Sequence[str]) -> tuple[type, ...]:
    """Import the classes named by dotted paths, skipping packages that are not installed."""
    found = []
    for path in paths:
        module_name, _, class_name = path.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)
