"""Peak memory of one short run at a given resolution (issue: memory at large resolutions).

Each case runs in a fresh process with an empty prototype cache (so the references' passes are
measured too), `fast` and two steps; the peak resident memory of that process above what it held
once the model was loaded is printed, with the wall time, the forward graph of one picture that
:mod:`vital.memory` probes, and the peak over that graph per picture: the share a step needs,
which ``vital.memory.STEP_SHARE`` must cover.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/peak_memory.py --cases class@512,neuron@512
    ... --model resnet50 --weights random      # another architecture (random weights suffice)
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
# A deep layer of each model for the neuron cases (its channels 0, 1, ...).
NEURON_LAYERS = {
    "mobilenet_v2": "features.16",
    "efficientnet_lite0": "blocks.5.2",
    "resnet50": "layer3.5",
    "convnext_tiny": "features.5.8",  # torchvision's
    "vit_b_16": "encoder.layers.encoder_layer_8",  # torchvision's; it takes 224 px only
}


def case(text: str) -> tuple[str, int, int]:
    """KIND@RESOLUTION[xBATCH], e.g. neuron@512 or class@1024x2."""
    kind, at, rest = text.partition("@")
    side, _, batch = rest.partition("x")
    if kind not in KINDS or not at or not side.isdigit() or not (batch or "1").isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not KIND@SIDE[xBATCH] (KIND: class, neuron)")
    if not 16 <= int(side) <= 2048 or not 1 <= int(batch or 1) <= len(CLASSES):
        raise argparse.ArgumentTypeError(f"{text!r}: SIDE 16 to 2048, BATCH 1 to {len(CLASSES)}")
    return kind, int(side), int(batch or 1)


def child(kind: str, side: int, batch: int, name: str, weights: str | None) -> None:
    import vital
    from vital.memory import picture_bytes
    from vital.targets import Channel

    model = vital.load_model(name, weights=weights)
    graph = picture_bytes(model, side) / 2**20
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "class":
        targets = CLASSES[:batch]
    else:
        targets = [Channel(NEURON_LAYERS[name], k) for k in range(batch)]
    started = time.perf_counter()
    vital.visualize(
        model, targets, setting="fast", settings={"steps": 2, "resolution": side},
        batch_size=batch, progress=False,
    )  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = time.perf_counter() - started
    above = peak - loaded
    print(
        f"| {name}{' (' + weights + ')' if weights else ''} | {kind} | {side} | {batch} | "
        f"{above:.0f} | {seconds:.1f} | {graph:.0f} | {above / (batch * graph):.2f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="class@512,neuron@512")
    parser.add_argument("--model", default="mobilenet_v2", choices=sorted(NEURON_LAYERS))
    parser.add_argument("--weights", default=None, help="e.g. random (default: embedded)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]), args.model, args.weights)
        return
    try:
        cases = [case(text) for text in args.cases.split(",")]
    except argparse.ArgumentTypeError as error:
        parser.error(f"--cases: {error}")
    print(
        "| model | kind | side | batch | peak MB above the loaded model | seconds "
        "| graph MB per picture (probed) | peak / (batch × graph) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, side, batch in cases:
        with tempfile.TemporaryDirectory() as cache:
            environment = {**os.environ, "VITAL_CACHE": cache}
            arguments = [sys.executable, __file__, "--model", args.model, "--child", kind]
            arguments += [str(side), str(batch)]
            if args.weights:
                arguments += ["--weights", args.weights]
            subprocess.run(arguments, env=environment, check=False)


if __name__ == "__main__":
    main()
