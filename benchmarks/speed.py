"""Seconds per VITAL class step against a bare forward + backward-to-input, and peak memory.

Each configuration runs in its own subprocess so that peak RSS belongs to it alone.

    python benchmarks/speed.py                      # all configurations, prints a Markdown table
    python benchmarks/speed.py --device cuda --steps 20
    OMP_NUM_THREADS=1 python benchmarks/speed.py --ratio             # step / bare pass, 1 thread
    OMP_NUM_THREADS=1 python benchmarks/speed.py --ratio --before OTHER/src   # against a checkout

``--ratio``: a VITAL step through the driver (setting 1, 50 references; the loop's own timer,
``record.seconds / steps``) against a bare forward + backward-to-input of the same frozen model,
batch 1, one thread, rounds interleaved, medians; beside them, the ratio of the 10th percentiles of
single passes and single steps (each step but a run's first, from one optimiser step to the next),
which interference on a shared machine moves far less: a class step of MobileNetV2 and of ResNet-50
(random weights: the cost does not depend on them) and a neuron step (MobileNetV2 ``features.16``
channel 5, ``lrp``). A step runs the model with its BatchNorms folded into their convolutions (a
class step: :func:`vital.relevance.canonizers.folded_batch_norms`; a neuron step: the relevance
composite's fold, positive scales only), which the bare pass of the model as loaded does not; so a
further column divides by the 10th percentile of a bare pass with the BatchNorms folded too: what a
step adds to the same network. The "sorts" column is what the loss's exact sorts of the step's tap
features cost alone (:func:`vital.losses.rank_order`), the part of a class step a bare pass has no
counterpart for. ``--before SRC`` runs every round twice, once with ``SRC`` (another checkout's
``src``) on ``PYTHONPATH`` and once with this one, each in its own process, alternating, and prints
both. ``--clock cpu`` times with the process's CPU time instead of the wall clock, for a machine
that other work shares: a step is then the difference between a run of ``--steps`` and a run of 2
steps (the driver's setup cancels), divided by the steps between them. ``--threads N`` gives torch N
threads (both trees, the bare pass too). On the CPU, while torch's threads leave a core free, a
class step also sorts its early taps on one worker thread as the forward pass goes on
(:func:`vital.losses.sort_targets_ahead`), so its wall clock can use a core that the bare pass
leaves idle; ``--clock cpu`` counts that worker's time too.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def measure(model_name: str, batch: int, steps: int, device: str) -> dict:
    from vital.objectives import SortMatching
    from vital.optimize import Settings, optimize, resolved
    from vital.taps import default_taps, list_layers, tapped
    from vital.zoo import load_model

    weights = None if model_name == "mobilenet_v2" else "random"
    model = load_model(model_name, weights=weights, device=device)
    device = model.device
    size = model.preprocessing.input_size
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # Bare pass: what any gradient-based visualisation pays per step.
    x = torch.randn(batch, 3, size, size, device=device, requires_grad=True)
    for _ in range(2):
        model.module(x).sum().backward()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        x.grad = None
        model.module(x).sum().backward()
    sync()
    bare = (time.perf_counter() - started) / steps
    bare_peak = torch.cuda.max_memory_allocated() if cuda else None

    # VITAL step: same batch, prototypes of random "references" (content does not change cost).
    taps, _ = default_taps(model_name, list_layers(model.module, size))
    layers = [t.layer for t in taps]
    with tapped(model.module, layers) as tap, torch.no_grad():
        features = tap(torch.randn(1, 3, size, size, device=device))
    prototypes = {layer: value[0].sort(-1).values for layer, value in features.items()}
    with tapped(model.module, layers, stop_early=True) as tap:
        objective = SortMatching(tap, taps, {1: [prototypes] * batch})
        # Two untimed steps warm up allocators and kernels, as for the bare pass.
        optimize(objective, batch, model.preprocessing, resolved(Settings(steps=2)), device, False)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run = optimize(
            objective, batch, model.preprocessing, resolved(Settings(steps=steps)), device, False
        )
        sync()
    vital_step = run.seconds / steps
    return {
        "model": model_name,
        "batch": batch,
        "bare_s": bare,
        "vital_s": vital_step,
        "ratio": vital_step / bare,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bare_peak_gpu_mb": bare_peak / 2**20 if bare_peak else None,
        "vital_peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def reference_memory(device: str, count: int) -> dict:
    """Bytes ``count`` ResNet-50 references would hold at conv1, against their prototype."""
    from PIL import Image

    from vital.references import ImageSource, ReferenceSet, compute_prototypes
    from vital.zoo import load_model

    model = load_model("resnet50", weights="random", device=device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    source = ImageSource("bench:noise", lambda: Image.effect_noise((256, 256), 64).convert("RGB"))
    references = ReferenceSet((source,), count=count, description="noise")
    prototypes = compute_prototypes(
        model, ["conv1", "layer1", "layer2", "layer3", "layer4"], references, 224, cache_dir=""
    )
    all_features = count * prototypes["conv1"].numel() * 4
    return {
        "count": count,
        "conv1_features_of_all_refs_mb": all_features / 1e6,
        "conv1_prototype_mb": prototypes["conv1"].numel() * 4 / 1e6,
        "all_prototypes_mb": sum(p.numel() * 4 for p in prototypes.values()) / 1e6,
        "peak_rss_growth_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        - rss_before,
    }


# (label, model, weights, target): the step-cost cases of --ratio.
RATIO_CASES = (
    ("class", "mobilenet_v2", None, 967),
    ("class", "resnet50", "random", 967),
    ("neuron", "mobilenet_v2", None, ("features.16", 5)),
)


# --ratio's clock: the wall clock, or the process's CPU time (--clock cpu, for a shared machine).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def bare_seconds(
    model, passes: int, each: list[float] | None = None, folded: bool = False
) -> float:
    """Seconds of one forward + backward-to-input of the whole frozen model, batch 1.

    ``each``, if given, receives every pass's own wall-clock seconds. ``folded``: with the
    BatchNorms folded into their convolutions, as a class step runs the model
    (:func:`vital.relevance.canonizers.folded_batch_norms`).
    """
    from vital.zoo import frozen

    size = model.preprocessing.input_size
    x = torch.randn(1, 3, size, size, device=model.device, requires_grad=True)
    with frozen(model.module), folding(model.module, folded):
        started = clock()
        for _ in range(passes):
            begun = time.perf_counter()
            x.grad = None
            model.module(x).sum().backward()
            if each is not None:
                each.append(time.perf_counter() - begun)
    return (clock() - started) / passes


def folding(module, folded: bool):
    """The BatchNorms folded while the block runs, if ``folded``; a tree without folding: none."""
    if folded:
        from vital.relevance.canonizers import folded_batch_norms

        return folded_batch_norms(module)
    return contextlib.nullcontext()


def can_fold() -> bool:
    """Whether the tree on the path folds BatchNorms (``--before`` may run an older one)."""
    try:
        from vital.relevance.canonizers import folded_batch_norms  # noqa: F401
    except ImportError:
        return False
    return True


def step_seconds(model, target, references, steps: int, each: list[float] | None = None) -> float:
    """Seconds of one setting-1 step through the driver.

    By the loop's own timer with the wall clock; with the CPU clock, a run of ``steps`` less a
    run of 2 steps, divided by ``steps - 2``, so that what a run does once cancels. ``each``, if
    given, receives the wall-clock seconds of every step but the first of each run, from one
    optimiser step to the next.
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import vital

    def run(count: int) -> float:
        stamps: list[float] = []
        handle = register_optimizer_step_post_hook(lambda *_: stamps.append(time.perf_counter()))
        started = clock()
        try:
            (result,) = vital.visualize(
                model, [target], references, setting=1, settings={"steps": count}, progress=False
            )
        finally:
            handle.remove()
        if each is not None:
            each.extend(later - earlier for earlier, later in itertools.pairwise(stamps))
        return result.record.seconds if clock is CLOCKS["wall"] else clock() - started

    if clock is CLOCKS["wall"]:
        return run(steps) / steps
    return (run(steps) - run(2)) / (steps - 2)


def sort_seconds(model, layers: list[str], passes: int) -> float:
    """Seconds of the exact sorts one class step does: ``rank_order`` of every tap's features."""
    from vital.losses import rank_order
    from vital.taps import tapped

    size = model.preprocessing.input_size
    with tapped(model.module, layers, stop_early=True) as tap, torch.no_grad():
        features = tap(torch.randn(1, 3, size, size, device=model.device))
    started = clock()
    for _ in range(passes):
        for value in features.values():
            rank_order(value)
    return (clock() - started) / passes


def ratio_rounds(rounds: int, steps: int, threads: int = 1) -> list[dict]:
    """Per case and round: bare pass, step and sort seconds (see the module's doc)."""
    import vital
    from vital.taps import default_taps, list_layers

    torch.set_num_threads(threads)
    references = vital.from_samples(["coffee"], count=50)
    rows = []
    for kind, name, weights, target in RATIO_CASES:
        model = vital.load_model(name, weights=weights)
        target = vital.Channel(*target) if kind == "neuron" else target
        layers = [t.layer for t in default_taps(name, list_layers(model.module, 224))[0]]
        # prototypes (computed once, cached) and allocator warm-up
        step_seconds(model, target, references, 3)
        bare_seconds(model, 2)
        for number in range(rounds):  # the machine may be shared: interleave, keep medians
            bare_passes: list[float] = []
            folded_passes: list[float] = []
            step_passes: list[float] = []
            bare = bare_seconds(model, steps, bare_passes)
            if can_fold():
                bare_seconds(model, steps, folded_passes, folded=True)
            step = step_seconds(model, target, references, steps, step_passes)
            sorts = sort_seconds(model, layers, steps)
            case = f"{kind} {name}"
            rows.append(
                {
                    "case": case,
                    "round": number,
                    "bare": bare,
                    "step": step,
                    "sorts": sorts,
                    "bare_passes": bare_passes,
                    "folded_passes": folded_passes,
                    "step_passes": step_passes,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def ratio_table(rows: list[dict], tree: str = "") -> list[str]:
    lines = []
    for case in dict.fromkeys(row["case"] for row in rows):
        mine = [row for row in rows if row["case"] == case]
        bare = statistics.median(row["bare"] for row in mine)
        step = statistics.median(row["step"] for row in mine)
        sorts = statistics.median(row["sorts"] for row in mine)
        low_bare = low_end([t for row in mine for t in row.get("bare_passes", [])])
        low_step = low_end([t for row in mine for t in row.get("step_passes", [])])
        low = f"{low_step / low_bare:.2f}x" if low_bare and low_step else "–"
        low_folded = low_end([t for row in mine for t in row.get("folded_passes", [])])
        folded = f"{low_step / low_folded:.2f}x" if low_folded and low_step else "–"
        lines.append(
            f"| {tree}{case} | {bare * 1e3:.1f} | {step * 1e3:.1f} | {step / bare:.2f}x "
            f"| {low} | {folded} | {sorts * 1e3:.1f} ({sorts / bare:.2f} of bare) | {len(mine)} |"
        )
    return lines


def low_end(seconds: list[float]) -> float:
    """The 10th percentile of single passes (0 for none): interference on a shared machine
    only adds time, so the low end is what a pass costs when nothing else runs."""
    if not seconds:
        return 0.0
    ordered = sorted(seconds)
    return ordered[int(0.1 * (len(ordered) - 1))]


def ratio_main(
    rounds: int, steps: int, before: str | None, clock_name: str = "wall", threads: int = 1
) -> None:
    print(
        f"torch {torch.__version__}, {threads} thread(s), batch 1, 224 px, {steps} steps or "
        f"passes per round, medians of {rounds} interleaved rounds, {clock_name} clock; "
        f"{platform.machine()}\n"
    )
    print(
        "| case | bare fwd+bwd ms | step ms | step / bare | 10th percentiles: step / bare "
        "| the same, bare pass with BatchNorms folded | exact sorts ms | rounds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    if before is None:
        print("\n".join(ratio_table(ratio_rounds(rounds, steps, threads))))
        return
    trees = {"before": str(Path(before).resolve()), "after": str(Path(__file__).parents[1] / "src")}
    rows: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, source in trees.items():
            command = [sys.executable, __file__, "--ratio-json", "--steps", str(steps)]
            command += ["--clock", clock_name, "--threads", str(threads)]
            environment = {**os.environ, "PYTHONPATH": source, "OMP_NUM_THREADS": str(threads)}
            output = subprocess.run(
                command, capture_output=True, text=True, check=True, env=environment
            ).stdout
            rows[name] += json.loads(output)
    for name in trees:
        print("\n".join(ratio_table(rows[name], f"{name}: ")))


def build_parser() -> argparse.ArgumentParser:
    """The command line's options and their defaults (an option counts as given where it
    differs from its default)."""
    # named as run() names its own errors, also where speed.py is not sys.argv[0] (tests)
    parser = argparse.ArgumentParser(prog="speed.py", description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    # one mode at a time: each of these ignores what the others measure
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--one", nargs=2, metavar=("MODEL", "BATCH"), help="one model at one batch size, as JSON"
    )
    mode.add_argument("--references", type=int, help="measure N references")
    mode.add_argument("--ratio", action="store_true", help="step / bare pass (see the doc)")
    mode.add_argument("--ratio-json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5, help="--ratio: interleaved rounds")
    parser.add_argument("--before", help="--ratio: another checkout's src to compare with")
    parser.add_argument(
        "--clock", choices=CLOCKS, default="wall", help="--ratio: wall clock or CPU time"
    )
    parser.add_argument("--threads", type=int, default=1, help="--ratio: torch's threads")
    return parser


# The options each mode reads; another one given there would do nothing, without a word.
USED = {
    "--ratio": {"steps", "rounds", "before", "clock", "threads"},  # on the CPU, its own cases
    "--one": {"steps", "device"},
    "--references": {"device"},
    "the table": {"steps", "device"},
}


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, said before any model loads; None if nothing is.

    An unknown ``--one`` model is said by :func:`vital.load_model` as it starts (before it
    builds anything); :func:`run` prints it as an error line.
    """
    for option in ("steps", "rounds"):
        if getattr(args, option) < 1:
            return f"--{option} is a count: 1 or more, not {getattr(args, option)}"
    if args.threads < 1:
        return f"--threads is how many threads torch uses: 1 or more, not {args.threads}"
    if args.one is not None:
        batch = args.one[1]
        if not batch.strip().isdigit() or int(batch) < 1:
            return f"--one MODEL BATCH: BATCH is a whole number of 1 or more, not {batch!r}"
    if args.references is not None and args.references < 1:
        return f"--references is a count: 1 or more, not {args.references}"
    mode = (
        "--ratio" if args.ratio or args.ratio_json
        else "--one" if args.one is not None
        else "--references" if args.references is not None
        else "the table"
    )  # fmt: skip
    defaults = build_parser()
    for option in ("steps", "device", "rounds", "before", "clock", "threads"):
        if option not in USED[mode] and getattr(args, option) != defaults.get_default(option):
            where = f"with {mode}" if mode.startswith("--") else "without --ratio"
            why = " (it times on the CPU)" if mode == "--ratio" and option == "device" else ""
            return f"--{option} does nothing {where}{why}; leave it out"
    # A path without the package would fall back to the installed (editable) vital, this tree,
    # and label it "before".
    if args.before is not None and not (Path(args.before) / "vital" / "__init__.py").is_file():
        return (
            f"--before {args.before!r} holds no vital package: give another checkout's src "
            "folder (e.g. from `git worktree add`)"
        )
    if args.clock == "cpu" and args.steps < 3:
        return "--clock cpu times a step as a run of --steps less a run of 2: use --steps 3 or more"
    if "device" in USED[mode]:
        from vital import VitalError
        from vital.zoo import resolve_device

        try:
            resolve_device(args.device)
        except VitalError as error:
            return f"--device: {error}"
    return None


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    if args.ratio:
        ratio_main(args.rounds, args.steps, args.before, args.clock, args.threads)
        return
    if args.ratio_json:  # one round of every case, for --before
        print(json.dumps(ratio_rounds(1, args.steps, args.threads)))
        return
    if args.one is not None:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.steps, args.device)))
        return
    if args.references is not None:
        print(json.dumps(reference_memory(args.device, args.references)))
        return
    rows = []
    for model_name in ("mobilenet_v2", "resnet50"):
        for batch in (1, 8):
            command = [sys.executable, __file__, "--one", model_name, str(batch)]
            command += ["--steps", str(args.steps), "--device", args.device]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(output.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    memory = []
    for count in (16, 50, 100):
        command = [sys.executable, __file__, "--references", str(count), "--device", args.device]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        memory.append(json.loads(output))
    threads = torch.get_num_threads()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {threads} torch threads, "
        f"device {args.device}; {args.steps} timed steps per cell.\n"
    )
    print("| model | batch | bare fwd+bwd s/step | VITAL s/step | ratio | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['batch']} | {row['bare_s']:.3f} | {row['vital_s']:.3f} "
            f"| {row['ratio']:.2f} | {row['peak_rss_mb']:.0f} |"
            + (f" GPU peak {row['vital_peak_gpu_mb']:.0f} MB" if row["vital_peak_gpu_mb"] else "")
        )
    print(
        "\nResNet-50 references at 224 px, prototypes of all five taps streamed in batches of "
        "16 (one process per row; growth = peak RSS after minus before):\n"
    )
    print(
        "| references N | conv1 features of all N would be | conv1 prototype | all prototypes "
        "| peak RSS growth |"
    )
    print("|---|---|---|---|---|")
    for row in memory:
        print(
            f"| {row['count']} | {row['conv1_features_of_all_refs_mb']:.0f} MB "
            f"| {row['conv1_prototype_mb']:.1f} MB | {row['all_prototypes_mb']:.1f} MB "
            f"| {row['peak_rss_growth_mb']:.0f} MB |"
        )


def run(argv: list[str] | None = None) -> int:
    """:func:`main`, with a :class:`vital.VitalError` (an unknown ``--one`` model, ...) said as
    one error line; the exit status (2 for that, as argparse's own errors)."""
    from vital import VitalError

    try:
        main(argv)
    except VitalError as error:
        print(f"speed.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run())
