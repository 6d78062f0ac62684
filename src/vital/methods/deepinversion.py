"""DeepInversion (Yin et al. 2020, "Dreaming to Distill", CVPR; NVlabs/DeepInversion).

Pixels are optimised so that the model classifies them as the target (cross-entropy) while the
statistics of every BatchNorm layer's input match the layer's running mean and variance:
R_bn = Σ_l m_l (‖μ_l(x) − μ_l‖₂ + ‖σ²_l(x) − σ²_l‖₂), with m = 10 for the first layer and 1
for the others. Image priors (TV_L2 1e-4, L2 1e-5), random circular shifts of up to 30 px and
horizontal flips come from the shared loop, as do Adam (lr 0.25, betas 0.5/0.9), the warm-up +
cosine schedule and clamping, which are the published code's defaults.

Statistics: DeepInversion computes them over its whole batch (``statistics="batch"``, the
default, faithful to the paper); ``"image"`` matches each image's own statistics, so results do
not depend on which targets share a batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vital.errors import VitalError
from vital.methods.base import Method, check_settings_for, target_plan
from vital.optimize import Settings
from vital.targets import ClassTarget
from vital.zoo import Model


class BatchNormInputs:
    """The inputs every BatchNorm layer saw in the last forward pass, in call order."""

    def __init__(self, module: nn.Module):
        self.layers = [
            m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        self.inputs: list[tuple[nn.modules.batchnorm._BatchNorm, torch.Tensor]] = []

    def hook(self, layer, inputs, _output) -> None:
        """Record the layer's input."""
        self.inputs.append((layer, inputs[0]))

    def loss(self, per_image: bool, first_multiplier: float = 10.0) -> torch.Tensor:
        """R_bn per image, (B,); in batch mode each image carries an equal share of the total.

        Parameters
        ----------
        per_image
            Compare each image's own statistics (else the batch's) with the running ones.
        first_multiplier
            Weight of the first BatchNorm layer (DeepInversion: 10).
        """
        if not self.inputs:
            raise VitalError("no BatchNorm layer ran in the forward pass; DeepInversion needs one.")
        batch = self.inputs[0][1].shape[0]
        total = self.inputs[0][1].new_zeros(batch if per_image else ())
        for number, (layer, x) in enumerate(self.inputs):
            if per_image and x.dim() < 3:
                continue  # one value per channel and image: no spatial statistics to match
            dims = tuple(range(2, x.dim())) if per_image else (0, *range(2, x.dim()))
            mean = x.mean(dim=dims)
            variance = x.var(dim=dims, unbiased=False)
            term = (mean - layer.running_mean).norm(dim=-1) + (variance - layer.running_var).norm(
                dim=-1
            )
            total = total + (first_multiplier if number == 0 else 1.0) * term
        return total if per_image else total.expand(batch) / batch


@contextlib.contextmanager
def batchnorm_inputs(module: nn.Module) -> Iterator[BatchNormInputs]:
    """Record every BatchNorm layer's input while the block runs; hooks are always removed."""
    recorder = BatchNormInputs(module)
    handles = [layer.register_forward_hook(recorder.hook) for layer in recorder.layers]
    try:
        yield recorder
    finally:
        for handle in handles:
            handle.remove()


class DeepInversionObjective:
    """Cross-entropy on each image's class plus the weighted BatchNorm term."""

    def __init__(
        self,
        model: Model,
        targets: Sequence[ClassTarget],
        recorder: BatchNormInputs,
        bn_weight: float,
        first_multiplier: float,
        per_image: bool,
    ):
        self.model = model
        self.indices = torch.tensor([t.index for t in targets], device=model.device)
        self.recorder = recorder
        self.bn_weight = bn_weight
        self.first_multiplier = first_multiplier
        self.per_image = per_image

    def __call__(self, model_input: torch.Tensor, factor: int) -> dict[str, torch.Tensor]:
        """``cross_entropy`` and ``batchnorm`` terms, each (B,)."""
        self.recorder.inputs = []
        logits = self.model.module(model_input)
        return {
            "cross_entropy": F.cross_entropy(logits, self.indices, reduction="none"),
            "batchnorm": self.bn_weight * self.recorder.loss(self.per_image, self.first_multiplier),
        }


@dataclass
class DeepInversion(Method):
    """DeepInversion: the class logit plus matching every BatchNorm's running statistics.

    Attributes
    ----------
    bn_weight
        Weight of R_bn (``r_feature``, 0.01).
    first_multiplier
        Extra weight of the first BatchNorm layer (10).
    statistics
        ``"batch"`` (as published) or ``"image"``.
    """

    bn_weight: float = 0.01
    first_multiplier: float = 10.0
    statistics: str = "batch"

    name = "deepinversion"
    targets = (ClassTarget,)

    def __post_init__(self) -> None:
        if self.statistics not in ("batch", "image"):
            raise VitalError("DeepInversion statistics must be 'batch' or 'image'.")

    def default_settings(self, model: Model, setting: int | str | None = None) -> Settings:
        """The published defaults (2000 steps at full resolution, "setting 1")."""
        check_settings_for(self, setting)
        return Settings(
            steps=2000, lr=0.25, betas=(0.5, 0.9), jitter=30, flip=True, tv_l2=1e-4, l2=1e-5
        )

    @contextlib.contextmanager
    def objective(
        self, model: Model, plans: Sequence, settings: Settings, seeds: Sequence[int]
    ) -> Iterator[DeepInversionObjective]:
        """The objective with BatchNorm hooks attached."""
        with batchnorm_inputs(model.module) as recorder:
            if not recorder.layers:
                raise VitalError(
                    f"DeepInversion matches BatchNorm statistics, but {model.name} has no "
                    "BatchNorm layer; choose another method for it."
                )
            yield DeepInversionObjective(
                model,
                target_plan(plans),
                recorder,
                self.bn_weight,
                self.first_multiplier,
                self.statistics == "image",
            )
