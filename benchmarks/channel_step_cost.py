"""Cost of a channel step with setting 1 and with ``fast`` on an idle machine.

The four `features.18` channels of ``convergence.py`` (the most selective channel for each
photo, 20 views of it as references), one batch of four, at 30 and 90 steps: the difference
gives the cost per step, the rest the set-up. Used to re-time channel points of the
convergence table that ran on a loaded machine (benchmarks/RESULTS.md).

    PYTHONPATH=src python benchmarks/channel_step_cost.py
"""

from __future__ import annotations

import time

import torch

import vital
from convergence import CHANNEL_PHOTOS, _visualize, selective_channels
from vital.references import from_samples
from vital.targets import Channel


def main() -> None:
    torch.set_num_threads(2)
    model = vital.load_model("mobilenet_v2")
    chosen = selective_channels(model, "features.18", CHANNEL_PHOTOS)
    targets = [Channel("features.18", chosen[p]) for p in CHANNEL_PHOTOS]
    references = {
        t: from_samples([p], 20, seed=0) for t, p in zip(targets, CHANNEL_PHOTOS, strict=True)
    }
    for setting in ("1", "fast"):
        seconds = {}
        for steps in (30, 90):
            started = time.perf_counter()
            _visualize(model, targets, references, "vital", setting, steps)
            seconds[steps] = (time.perf_counter() - started) / len(targets)
        per_step = (seconds[90] - seconds[30]) / 60
        set_up = seconds[30] - 30 * per_step
        print(
            f"setting {setting}: {per_step:.4f} s per step per picture, set-up {set_up:.2f} s; "
            f"300 steps ≈ {set_up + 300 * per_step:.1f} s, 2000 ≈ {set_up + 2000 * per_step:.1f} s"
        )


if __name__ == "__main__":
    main()
