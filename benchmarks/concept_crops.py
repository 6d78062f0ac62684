"""What the crop sampler decides: the embedded photos' concepts under other crop scales, counts.

For each embedded dev photo (espresso, Egyptian cat, moped) and each sampler setting runs
``vital concepts --no-pictures`` (MobileNetV2, ``features.18``, K concepts) and reports the
concepts' share of the class's relevance, the top five's and the top one's, and how distinct
the concepts' examples are to the judge (EfficientNet-Lite0): the mean cosine between the
concepts' example means (lower: more distinct parts).

    OMP_NUM_THREADS=1 python benchmarks/concept_crops.py --count 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import vital
from vital.metrics import features
from vital.zoo import load_model

HERE = Path(__file__).resolve().parent
PHOTOS = {"espresso": "coffee", "Egyptian cat": "chelsea", "moped": "motorcycle"}
SAMPLERS = [((0.05, 0.4), 128), ((0.01, 0.1), 128), ((0.2, 0.8), 128), ((0.05, 0.4), 48),
            ((0.05, 0.4), 256)]  # fmt: skip


def example_similarity(judge, folder: Path, concepts: list[dict]) -> float:
    def pixels(paths):
        arrays = [
            np.asarray(Image.open(folder / p).convert("RGB"), np.float32) / 255 for p in paths
        ]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    means = F.normalize(
        torch.stack([features(judge, pixels(c["examples"])).mean(0) for c in concepts]), dim=1
    )
    cosines = means @ means.T
    count = len(concepts)
    return float((cosines.sum() - cosines.diagonal().sum()) / (count * (count - 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "concept_crops")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("mobilenet_v2")
    judge = load_model("efficientnet_lite0")
    rows = []
    print(
        "| crop scale | crops | class | concepts' share | top-5 | top-1 | "
        "judge cosine between concepts |"
    )
    print("|---|---|---|---|---|---|---|")
    for scale, crops in SAMPLERS:
        for name, photo in PHOTOS.items():
            folder = arguments.out / f"{photo}-{scale[0]}-{scale[1]}-{crops}"
            report = vital.concepts(
                model, name, None, layer="features.18", count=arguments.count, crops=crops,
                crop_scale=scale, pictures=False, out=folder, progress=False,
            )  # fmt: skip
            record = json.loads((folder / "concepts.json").read_text())
            shares = [c["share"] for c in record["concepts"]]
            row = {
                "scale": scale, "crops": crops, "class": name,
                "explained": report.explained_share, "top5": sum(shares[:5]), "top1": shares[0],
                "similarity": example_similarity(judge, folder, record["concepts"]),
            }  # fmt: skip
            rows.append(row)
            print(
                f"| {scale[0]}–{scale[1]} | {crops} | {name} | {row['explained']:.2f} | "
                f"{row['top5']:.2f} | {row['top1']:.2f} | {row['similarity']:.3f} |",
                flush=True,
            )
    (arguments.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
