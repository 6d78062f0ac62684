"""Relevance: how much each tap position matters to an inner target (METHOD.md section 3).

Every backend answers one question with one backward pass for a whole batch: given the model's
raw layer outputs from a forward pass (a graph that is kept for the loss), and for each image a
*seed* (a direction over the channels of its target layer), what is the relevance of every
position of every tap below the target? The result is a constant: it is computed with
``torch.autograd.grad`` towards the tap outputs only, never towards the image, and returned
detached.

Backends
--------
``lrp``
    The authors' rule set on zennit: z⁺ for convolutions and linear layers (positive weights, no
    bias, ε = 1e-5), BatchNorm and activations passed through, and the residual sum split in
    proportion to ``|main|`` and ``|shortcut|``. Residual blocks (torchvision and timm ResNet and
    RegNet blocks, the inverted residuals of torchvision MobileNetV2/V3 and EfficientNet and of timm
    EfficientNet/MobileNet) are rewritten for the run by ``canonizers.ResidualSplitCanonizer``,
    after zennit's ResNet canonizers, but with a two-input sum module instead of a stack and a sum
    over its last axis (which is slow). BatchNorms with positive scales are folded into their
    convolutions for the run (``canonizers.FoldBatchNorm``), which leaves z⁺ exactly as with the
    BatchNorm passed and saves a module per convolution; a layer whose output a tap or target reads
    is never rewritten, so taps read what they read without the rules (ResNet's ``conv1`` tap is
    conv1's output before its BatchNorm). Max pooling shares relevance as the z-rule of a 2×2
    average pool, as the authors' code does (``rules.MaxPoolAsAverage``). Beyond the authors' rule
    set (their models have no gates), a squeeze-excitation gate ``x · s(x)`` passes all relevance to
    ``x`` and none into the branch computing ``s`` (``presets.GATES``). Blocks whose forward adds or
    multiplies two computed tensors that nothing splits are refused
    (``composites.check_supported``). Two details where this differs from the authors' code on
    purpose: the min-max normalisations of relevance and channel importance have no +1e-6 in the
    denominator (a constant map becomes 0 instead), and the residual split keeps ε = 1e-5 in its
    denominator (no 0/0 where both branches are 0); both change values by less than 1e-6 relative on
    maps that are not constant.
``lrp-restricted``
    As ``lrp``, started only at the position of the target layer whose activation vector is
    most aligned with the target direction, with the direction itself as starting relevance
    (as the authors' code does).
``guided-backprop``
    zennit's guided backpropagation of the target's mean activation.
``grad-x-act``
    Gradient of the target's mean activation times the tap activation: works for any
    differentiable model (the fallback where no LRP canonizer covers an architecture).
zennit composites
    ``epsilon-plus``, ``epsilon-plus-flat``, ``epsilon-alpha2-beta1``,
    ``epsilon-alpha2-beta1-flat``, ``excitation-backprop`` by name, with zennit's BatchNorm
    merging, the residual canonizer and its split rule.

The zennit hooks are attached once per run (:meth:`RelevanceBackend.attached`) and are *inactive*
except inside :meth:`RelevanceBackend.relevance`, so the same forward graph serves the relevance
pass (modified gradients) and the loss's backward pass (true gradients).

Modules, split as zennit splits its own: :mod:`.rules` (how relevance crosses one module),
:mod:`.canonizers` (temporary model rewrites), :mod:`.composites` (which rule goes where),
:mod:`.seeds` (starting relevance and the target's activation), :mod:`.backends` (the interface
the objectives use). Which architectures the canonizers know is data in :mod:`vital.presets`.
"""

from vital.relevance.backends import BACKENDS, RelevanceBackend, get_backend
from vital.relevance.composites import check_supported, modules_between, vital_composite
from vital.relevance.seeds import projection, target_activation

__all__ = [
    "BACKENDS",
    "RelevanceBackend",
    "check_supported",
    "get_backend",
    "modules_between",
    "projection",
    "target_activation",
    "vital_composite",
]
