"""Seconds per step of an inner-neuron visualisation with relevance vs a bare forward+backward.

Both are measured in the same process on the same model at 224 px, batch 1:

* bare: the whole model forward, then the backward pass to the input (the cost of one step of
  plain gradient-based feature visualisation);
* neuron step: one step of ``vital.visualize`` for a channel (jitter, forward to the target
  layer, one relevance pass, the loss's backward pass, Adam), from the run's own timer.

The authors' code spends about four passes per step (a fresh LRP model copy, two relevance
passes, an extra gradient for the transparency map). Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/neuron_speed.py [--steps 6]
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/neuron_speed.py --floor [--rounds 40]

``--floor``: what a neuron step cannot do without, against the bare pass: the forward pass to
the target with the taps and the relevance rules attached, the relevance pass, and the
backward pass from the taps (no loss, sorts, optimiser or loop), beside the step itself
(single steps of a run, timed by an optimiser hook). Each is timed ``--rounds`` times,
interleaved, and the 10th percentile kept: on a shared machine interference only adds time.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import platform
import statistics
import time

import torch

from speed import low_end
from vital import Channel, from_samples, load_model, visualize
from vital.relevance import BACKENDS

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


def floor_row(
    name: str, weights: str | None, target: Channel, rounds: int, backend_name: str
) -> str:
    """One table row of ``--floor`` (see the module's doc)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from vital.methods.vital_neuron import neuron_taps
    from vital.relevance import get_backend
    from vital.taps import list_layers, tapped
    from vital.zoo import frozen

    model = load_model(name, weights=weights)
    layers = list_layers(model.module, 224)
    taps = [t.layer for t in neuron_taps(model, layers, target.layer, None, near=False)[0]]
    channels = next(i.channels for i in layers if i.name == target.layer)
    direction = torch.zeros(1, channels)
    direction[0, target.index] = 1.0
    image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"bare": [], "forward": [], "relevance": [], "backward": []}

    def timed(key: str, work) -> None:
        started = time.perf_counter()
        work()
        times[key].append(time.perf_counter() - started)

    x = image.clone().requires_grad_(True)

    def bare() -> None:
        x.grad = None
        model.module(x).sum().backward()

    backend = get_backend(backend_name)
    with frozen(model.module):
        for _ in range(rounds):  # the bare pass interleaved too: the rules come off in between
            timed("bare", bare)
            with (
                backend.attached(model.module, layers, taps, [target.layer]),
                tapped(model.module, [*taps, target.layer], stop_early=True) as tap,
            ):
                tap(x)
                layouts = {layer: tap.layout(layer) for layer in tap.layers}

                def relevance(tap=tap, layouts=layouts) -> dict[str, torch.Tensor]:
                    return backend.relevance(tap.outputs, {target.layer: direction}, taps, layouts)

                def backward(tap=tap, relevance=relevance) -> None:
                    features, weights_ = tap(x), relevance()
                    sum((features[t] * weights_[t]).sum() for t in taps).backward()

                timed("forward", lambda tap=tap: tap(x))
                timed("relevance", lambda tap=tap, relevance=relevance: (tap(x), relevance()))
                timed("backward", backward)
    stamps: list[float] = []
    handle = register_optimizer_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
    try:
        neuron_seconds(model, target, 3, backend_name)  # prototypes and warm-up
        steps = []
        for _ in range(max(1, rounds // 10)):
            stamps.clear()
            neuron_seconds(model, target, 12, backend_name)
            steps += [later - earlier for earlier, later in itertools.pairwise(stamps[1:])]
    finally:
        handle.remove()
    bare_s = low_end(times["bare"])
    parts = [low_end(times[key]) for key in ("forward", "relevance", "backward")]
    parts[2] -= parts[1]  # each column is what its pass adds to the ones before
    parts[1] -= parts[0]
    step = low_end(steps)
    cells = " | ".join(f"{part * 1e3:.1f} ({part / bare_s:.2f})" for part in parts)
    return (
        f"| {name}{' (random)' if weights else ''} | {target.describe()} | {bare_s * 1e3:.1f} | "
        f"{cells} | {sum(parts) / bare_s:.2f}x | {step * 1e3:.1f} ({step / bare_s:.2f}x) |"
    )


def floor_main(rounds: int, relevance: str) -> None:
    print(
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; torch "
        f"{torch.__version__}; {torch.get_num_threads()} thread(s); {platform.machine()}; "
        f"relevance {relevance}; 10th percentiles of {rounds} interleaved passes; ms (share of "
        "the bare pass)\n"
    )
    print(
        "| model | target | bare fwd+bwd | forward to the target, taps and rules attached "
        "| + relevance pass | + backward from the taps | floor | neuron step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, weights, target in CASES:
        print(floor_row(name, weights, target, rounds, relevance), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--relevance", default="lrp")
    parser.add_argument("--floor", action="store_true", help="the step's floor (module doc)")
    arguments = parser.parse_args()
    for option in ("steps", "rounds"):
        if getattr(arguments, option) < 1:
            parser.error(f"--{option} is a count: 1 or more, not {getattr(arguments, option)}")
    if arguments.relevance not in BACKENDS:
        parser.error(f"--relevance {arguments.relevance!r}: choose one of {', '.join(BACKENDS)}")
    if arguments.floor:
        if arguments.rounds < 10:
            parser.error("--floor keeps the 10th percentile of --rounds passes: use 10 or more")
        floor_main(arguments.rounds, arguments.relevance)
        return
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
