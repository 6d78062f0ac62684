"""Peak memory of one short run at a given resolution (issue: memory at large resolutions).

Each case runs in a fresh process with an empty prototype cache (so the references' passes are
measured too), the embedded MobileNetV2, `fast` and two steps; the peak resident memory of that
process above what it held once the model was loaded is printed, with the wall time.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/peak_memory.py --cases class@512,neuron@512
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

KINDS = ("class", "neuron")
CLASSES = [967, 285, 670, 698]  # classes with an embedded photo (their references)


def case(text: str) -> tuple[str, int, int]:
    """KIND@RESOLUTION[xBATCH], e.g. neuron@512 or class@1024x2."""
    kind, at, rest = text.partition("@")
    side, _, batch = rest.partition("x")
    if kind not in KINDS or not at or not side.isdigit() or not (batch or "1").isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not KIND@SIDE[xBATCH] (KIND: class, neuron)")
    if not 16 <= int(side) <= 2048 or not 1 <= int(batch or 1) <= len(CLASSES):
        raise argparse.ArgumentTypeError(f"{text!r}: SIDE 16 to 2048, BATCH 1 to {len(CLASSES)}")
    return kind, int(side), int(batch or 1)


def child(kind: str, side: int, batch: int) -> None:
    import vital
    from vital.targets import Channel

    model = vital.load_model("mobilenet_v2")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "class":
        targets = CLASSES[:batch]
    else:
        targets = [Channel("features.16", k) for k in range(batch)]
    started = time.perf_counter()
    vital.visualize(
        model, targets, setting="fast", settings={"steps": 2, "resolution": side},
        batch_size=batch, progress=False,
    )  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - started
    print(f"| {kind} | {side} | {batch} | {peak - loaded:.0f} | {seconds:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="class@512,neuron@512")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    try:
        cases = [case(text) for text in args.cases.split(",")]
    except argparse.ArgumentTypeError as error:
        parser.error(f"--cases: {error}")
    print("| kind | side | batch | peak MB above the loaded model | seconds |")
    print("|---|---|---|---|---|")
    for kind, side, batch in cases:
        with tempfile.TemporaryDirectory() as cache:
            environment = {**os.environ, "VITAL_CACHE": cache}
            arguments = [sys.executable, __file__, "--child", kind, str(side), str(batch)]
            subprocess.run(arguments, env=environment, check=False)


if __name__ == "__main__":
    main()
