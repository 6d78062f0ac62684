"""Quality benchmark: VITAL against Fourier FV, MaCo and DeepInversion on the embedded models.

Explained model: MobileNetV2 (torchvision ImageNet weights, embedded); judge: EfficientNet-Lite0
(embedded). Targets: classes with an embedded photo; references and "real images" are that one
photo per class expanded to random crops (see vital.compare). Every method gets the same number
of steps; each keeps its own published optimiser settings otherwise.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/quality.py --steps 300

writes benchmarks/figures/quality-grid.jpg, quality-table.md / .csv, and appends the table to
benchmarks/RESULTS.md (with --append).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from vital.compare import METHODS, compare, table_markdown, write_report
from vital.zoo import load_model

HERE = Path(__file__).parent
# Classes with an embedded photo (vital.references.SAMPLE_PHOTOS): espresso, Egyptian cat,
# moped, daisy; palace, space shuttle and military uniform also have one.
DEFAULT_CLASSES = "967,285,665,985"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", default=DEFAULT_CLASSES)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--maco-crops", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "quality")
    parser.add_argument("--figures", type=Path, default=HERE / "figures")
    parser.add_argument("--append", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()

    torch.set_num_threads(1)
    # the commit that runs (read now: later commits during a long run must not be credited)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    started = time.perf_counter()
    model = load_model("mobilenet_v2")
    judge = load_model("efficientnet_lite0")
    comparison = compare(
        model,
        [int(c) for c in args.classes.split(",")],
        args.methods,
        judge=judge,
        setting=1,  # the authors' setting, as the RESULTS sections of this script report
        settings={"steps": args.steps},
        seed=args.seed,
        out=args.out / "runs",
        batch_size=8,
        method_options={"maco": {"crops": args.maco_crops}},
    )
    minutes = (time.perf_counter() - started) / 60
    paths = write_report(comparison, args.out)
    args.figures.mkdir(parents=True, exist_ok=True)
    # JPEG: the noisy textures of feature visualisations make a PNG of this grid ~1 MB.
    Image.open(paths["grid"]).save(args.figures / "quality-grid.jpg", quality=88)
    shutil.copy(paths["table"], args.figures / "quality-table.md")
    shutil.copy(paths["csv"], args.figures / "quality-table.csv")
    print(paths["table"].read_text())
    print(f"total {minutes:.1f} min")

    if args.append:
        command = "OMP_NUM_THREADS=1 PYTHONPATH=src python " + " ".join(sys.argv)
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = [
            f"\n## Quality: VITAL vs Fourier FV, MaCo, DeepInversion ({date})\n",
            f"Machine: {platform.machine()} CPU container, 2 cores shared, 1 thread; commit "
            f"{commit}; total {minutes:.1f} min.",
            f"Command: `{command}`",
            f"Explained model: mobilenet_v2 (embedded ImageNet weights); judge: "
            f"efficientnet_lite0. Classes: {args.classes}. Steps: {args.steps} for every "
            f"method (VITAL's default is 2000, DeepInversion's 2000, MaCo's 256, lucent's "
            f"512); MaCo with {args.maco_crops} crops per step (Xplique: 32). Seed {args.seed}."
            " Grid: benchmarks/figures/quality-grid.jpg.\n",
            table_markdown(comparison),
        ]
        results = HERE / "RESULTS.md"
        if not results.exists():
            results.write_text("# Benchmark results\n")
        with open(results, "a") as handle:
            handle.write("\n".join(section))


if __name__ == "__main__":
    main()
