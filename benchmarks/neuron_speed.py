"""Seconds per step of an inner-neuron visualisation with relevance vs a bare forward+backward.

Both are measured in the same process on the same model at 224 px, batch 1:

* bare: the whole model forward, then the backward pass to the input (the cost of one step of
  plain gradient-based feature visualisation);
* neuron step: one step of ``vital.visualize`` for a channel (jitter, forward to the target
  layer, one relevance pass, the loss's backward pass, Adam), from the run's own timer.

The authors' code spends about four passes per step (a fresh LRP model copy, two relevance
passes, an extra gradient for the transparency map). Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/neuron_speed.py [--steps 6]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch

from vital import Channel, from_samples, load_model, visualize

CASES = (
    ("mobilenet_v2", None, Channel("features.16", 5)),
    ("resnet50", "random", Channel("layer4.2", 1935)),
)


def bare_seconds(model, repeats: int) -> float:
    x = torch.randn(1, 3, 224, 224, requires_grad=True)
    model.module(x).sum().backward()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        x.grad = None
        model.module(x).sum().backward()
    return (time.perf_counter() - started) / repeats


def neuron_seconds(model, target, steps: int, relevance: str) -> float:
    references = from_samples(["coffee", "chelsea"], count=2)
    settings = {"steps": steps, "warmup": 1}  # the inner-neuron priors are the defaults
    # A first short run computes (and caches) the reference prototypes and warms up.
    visualize(
        model, [target], references, setting=1, settings={"steps": 1}, relevance=relevance,
        progress=False,
    )  # fmt: skip
    (result,) = visualize(
        model,
        [target],
        references,
        setting=1,
        settings=settings,
        relevance=relevance,
        progress=False,
    )
    return result.record.seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--relevance", default="lrp")
    arguments = parser.parse_args()
    threads = torch.get_num_threads()
    lines = [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; torch "
        f"{torch.__version__}; {threads} thread(s); {platform.machine()}; median of "
        f"{arguments.rounds} interleaved rounds of {arguments.steps} steps each",
        "",
        f"| model | target | bare fwd+bwd (s) | neuron step, {arguments.relevance} (s) | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, weights, target in CASES:
        model = load_model(name, weights=weights)
        bare, step = [], []
        # The machine is shared: interleave the two measurements and keep the medians.
        for _ in range(arguments.rounds):
            bare.append(bare_seconds(model, arguments.steps))
            step.append(neuron_seconds(model, target, arguments.steps, arguments.relevance))
        bare_s, step_s = statistics.median(bare), statistics.median(step)
        lines.append(
            f"| {name}{' (random)' if weights else ''} | {target.describe()} | {bare_s:.3f} | "
            f"{step_s:.3f} | {step_s / bare_s:.2f}x |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
