"""Compare relevance backends on two MobileNetV2 features.18 channels with mined references.

Needs the mining index of the "mined references end to end" run in RESULTS.md
(benchmarks/out/mined-cli/mining.sqlite). Usage:

    python benchmarks/neuron_backends.py grad-x-act lrp-restricted lrp
"""

from __future__ import annotations

import sys
import time

from PIL import Image

import vital
from vital.grids import grid
from vital.mining import mined_references
from vital.targets import Channel

DATABASE = "benchmarks/out/mined-cli/mining.sqlite"


def main(backends: list[str]) -> None:
    model = vital.load_model("mobilenet_v2")
    targets = [Channel("features.18", k) for k in (313, 791)]
    references = {
        t: mined_references(DATABASE, model, "features.18", t, "patch", 12) for t in targets
    }
    settings = vital.Settings(steps=300, tv_l2=3e-7, l2=3e-7)
    cells, captions = [], []
    for backend in backends:
        started = time.time()
        results = vital.visualize(
            model,
            targets,
            references,
            settings=settings,
            relevance=backend,
            out=f"benchmarks/out/backend-{backend}",
            progress=False,
        )
        print(backend, "seconds", round(time.time() - started), flush=True)
        for result in results:
            evaluation = {k: round(v, 3) for k, v in result.record.evaluation.items()}
            print(" ", result.target.describe(), evaluation, flush=True)
            cells += [Image.open(result.paths["png"]), Image.open(result.paths["rgba"])]
            captions += [f"{backend} {result.target.index}", "RGBA"]
    grid(cells, captions, columns=4, cell=200).save("benchmarks/out/neuron-backends.png")


if __name__ == "__main__":
    main(sys.argv[1:] or ["grad-x-act", "lrp-restricted", "lrp"])
