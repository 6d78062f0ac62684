"""Layer kinds: how well inner channels of different kinds of layer are visualised (issue 20).

For each ``MODEL:LAYER`` the four channels are chosen by the convergence benchmark's rule
(:func:`convergence.selective_channels`: for each of the photos coffee, chelsea, motorcycle,
daisy, or those ``--photos`` names, the channel most selective for it, among those the photo
drives up); each channel's
references are ``--references`` views of its photo (``from_samples``), handed to
``vital.visualize`` as they are, so the method's own defaults decide how it uses them (whole
views or their best patches). Per channel:

- *activation reached*: the picture's mean activation of the channel divided by the mean over
  its photo's views (the references as given), and the same against what the method matched
  (the record's ``reference_activation``: the patches where patches were used);
- *concentration*: the share of the transparency map's mass held by its brightest quarter of
  pixels (a flat map: 0.25);
- *realism*: the judge's (EfficientNet-Lite0) cosine of the picture's pooled features to its own
  photo's 50 views (seed 1) and the gap to the other three channels' photos; and the same
  against what each channel was matched to (its best patches where patches were used, else
  its crops as given), the gap to the other channels' matched references; ``--judge
  efficientnet_lite0,efficientnet_lite1`` adds a second judge's (the first is the table's), so
  that choices can be made with one judge and checked with the other;
- *below start*: pictures whose activation ends below that of their starting image;
- *evidence* (``--evidence``): the concentration of the unit's own input gradient
  ``|∂ Σ max(a, 0) / ∂x|`` (made into a map as the transparency is: colours averaged, clipped at
  the 98th percentile) on its references (mean over them) and on the finished picture, and of
  where it fires (``max(a, 0)`` over the layer's positions): whether the unit's evidence is in
  one place on its own photos at all; and the transparency accumulated over all steps and
  over the later steps only (from 50 %, 80 % and 90 % of the steps, in tenths of the run),
  read from the same run's gradients whatever the method's own ``transparency_from`` (the
  picture is the method's); each tenth's share of the map's mass; and the share of the
  finished picture's map of the unit that is negative (the floor it is held with at the end);
- *by tap* (``--evidence --by-tap EVERY``): every EVERY-th step of the last fifth, each loss
  term's own |∂term/∂x| (one more backward pass per term): its share of the terms' summed
  mass and its own map's concentration, i.e. which tap's gradient makes the map.

``--floor-mass`` (a trial, not the method) makes the signed floor a share of each channel's
weight mass, ``f · mean(r) + (1 − f) · r``, instead of a share of its peak, ``f + (1 − f) · r``.

``--field-scale`` shows each unit one receptive field at its own scale: the picture is made at
the side of the unit's effective receptive field (``receptive_field``, e.g. 120 px for a 14×14
unit at 224), from the best patches of that side of its references, not resized (the method
is handed the patches as whole images); the picture is resized to 224 for the judges, and its
activation is measured at its own side.

A grid per layer (photo, picture, RGBA, the first references as the method used them) goes to
``--figures``; a Markdown table to stdout.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/layer_kinds.py \\
        mobilenet_v2:features.18 mobilenet_v2:features.15 mobilenet_v2:features.12 \\
        efficientnet_lite0:blocks.5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import vital
import vital.objectives
import vital.optimize
from vital import metrics
from vital.grids import display_pixels, grid, to_image
from vital.methods.vital_neuron import TRANSPARENCY_FROM, receptive_field, target_score
from vital.optimize import transparency
from vital.references import SAMPLE_PHOTOS, best_patches, from_samples
from vital.taps import list_layers, tapped, to_positions
from vital.targets import Channel

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from concepts_mobilenet import load_judge  # noqa: E402
from convergence import CHANNEL_PHOTOS, selective_channels  # noqa: E402

REAL_VIEWS = 50


def photo_list(value: str) -> tuple[str, ...]:
    """``--photos``: at least two embedded photos (the gap needs others), each once."""
    photos = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in photos if name not in SAMPLE_PHOTOS]
    if unknown or len(photos) < 2 or len(set(photos)) != len(photos):
        raise argparse.ArgumentTypeError(
            f"give two or more different embedded photos from {', '.join(SAMPLE_PHOTOS)}"
        )
    return photos


def run_layer(model, judges: dict, layer: str, args) -> tuple[list[dict], Path]:
    """Visualise the layer's four chosen channels; their numbers and the grid's path."""
    photos = list(args.photos)
    chosen = selective_channels(model, layer, photos)
    targets = [Channel(layer, chosen[p]) for p in photos]
    references = {
        t: from_samples([p], args.references, seed=0) for t, p in zip(targets, photos, strict=True)
    }
    given, settings = references, {"steps": args.steps, "seed": args.seed}
    if args.field_scale:
        given, settings["resolution"] = field_references(model, layer, targets, references)
    if args.jitter is not None:
        settings["jitter"] = args.jitter
    started = time.perf_counter()
    late = (
        LateGradients(args.steps, by_tap=args.by_tap) if args.evidence else contextlib.nullcontext()
    )
    with late:
        results = vital.visualize(
            model,
            targets,
            given,
            setting=args.setting,
            settings=settings,
            batch_size=len(targets),
            progress=False,
            **({} if args.patch_side is None else {"patch_side": patch_side(args.patch_side)}),
            **({} if args.relevance is None else {"relevance": args.relevance}),
        )
    seconds = (time.perf_counter() - started) / len(targets)
    pixels = torch.stack([r.pixels for r in results])
    if pixels.shape[-1] != 224:  # --field-scale: the judges see the picture at their size
        pixels = F.interpolate(pixels, size=224, mode="bilinear", align_corners=False).clamp(0, 1)
    real, real_labels = [], []
    for photo in photos:
        views = list(from_samples([photo], REAL_VIEWS, seed=1).views(224))
        real += views
        real_labels += [photos.index(photo)] * len(views)  # grouped by photo: some have no class
    labels = list(range(len(photos)))
    judged = {
        name: metrics.realism(judge, pixels, labels, torch.stack(real), real_labels)
        for name, judge in judges.items()
    }
    # the same judges against what each channel was matched to: its best patches where
    # patches were used, else the crops as given (a picture is made to resemble these)
    matched = [
        torch.stack(list(matched_references(model, result, given[result.target])))
        for result in results
    ]
    matched_labels = [number for number, views in enumerate(matched) for _ in views]
    judged_matched = {
        name: metrics.realism(
            judge, pixels, list(range(len(results))), torch.cat(matched), matched_labels
        )
        for name, judge in judges.items()
    }
    first = next(iter(judges))
    rows = []
    for number, (target, photo, result) in enumerate(zip(targets, photos, results, strict=True)):
        realism = judged[first][number]
        views = torch.stack(list(references[target].views(224)))
        relative = metrics.relative_activation(
            model, layer, target.index, result.pixels[None], views
        )[0]
        evaluation = result.record.evaluation
        rows.append(
            {
                "layer": layer,
                "channel": target.index,
                "photo": photo,
                "relative": relative,
                "relative_matched": evaluation["activation"] / evaluation["reference_activation"]
                if evaluation.get("reference_activation")
                else float("nan"),
                "initial": evaluation.get("initial_activation"),
                "activation": evaluation["activation"],
                "concentration": metrics.concentration(result.alpha),
                "own": realism["own"],
                "gap": realism["margin"],
                **{f"own:{name}": judged[name][number]["own"] for name in judges},
                **{f"gap:{name}": judged[name][number]["margin"] for name in judges},
                "own_matched": judged_matched[first][number]["own"],
                "gap_matched": judged_matched[first][number]["margin"],
                **{f"own_matched:{name}": judged_matched[name][number]["own"] for name in judges},
                **{
                    f"gap_matched:{name}": judged_matched[name][number]["margin"] for name in judges
                },
                "below_start": bool(evaluation.get("below_start")),
                "seconds": seconds,
                "references": result.record.references.get("mode", ""),
                **(
                    evidence(model, layer, target.index, result.pixels, views, late, number)
                    if args.evidence
                    else {}
                ),
                "warnings": result.record.evaluation.get("warnings", []),
            }
        )
    images, captions, names = [], [], []
    for photo, result, row, views_matched in zip(photos, results, rows, matched, strict=True):
        images.append(to_image(from_samples([photo], 1).views(224).__next__()))
        captions.append(photo)
        images.append(result.image)
        captions.append(f"act {row['relative']:.2f}x views")
        images.append(to_image(display_pixels(result.pixels), result.alpha))
        captions.append(f"top quarter {row['concentration']:.2f}")
        for view in views_matched[:3]:
            images.append(to_image(view))
            captions.append("reference")
        names.append(f"ch {result.target.index}")
    sheet = grid(images, captions, columns=6, cell=150, row_labels=names)
    model_name = model.name.replace("/", "_")
    path = args.figures / f"layer-kinds-{model_name}-{layer.replace('.', '_')}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=85)
    return rows, path


class LateGradients(contextlib.AbstractContextManager):
    """``--evidence``: |∂L/∂x| of each step summed per tenth of the run (a hook on the images).

    Reads the same gradients the transparency accumulates (one view per step), so the maps of
    the later steps only come from the method's own run.
    """

    def __init__(self, steps: int, parts: int = 10, by_tap: int = 0):
        self.steps, self.parts, self.step, self.sums = steps, parts, 0, {}
        self.by_tap, self.taps = by_tap, {}

    def __enter__(self):
        self.original = vital.optimize._view_terms

        def wrapped(x, *rest):
            terms = self.original(x, *rest)
            if x.requires_grad:
                late = self.step >= TRANSPARENCY_FROM * self.steps
                if self.by_tap and late and self.step % self.by_tap == 0:
                    self._add_terms(x, terms)
                # after the terms' own gradients: the hook sees only the method's backward pass
                x.register_hook(self._add)
            return terms

        vital.optimize._view_terms = wrapped
        return self

    def _add(self, gradient: torch.Tensor) -> None:
        part = min(self.parts - 1, self.step * self.parts // self.steps)
        magnitude = gradient.detach().abs()
        self.sums[part] = self.sums.get(part, 0) + magnitude
        # each step's map with the same mass: no step outweighs the others by its loss's size
        mass = magnitude.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
        self.normed = getattr(self, "normed", 0) + magnitude / mass
        self.step += 1

    def _add_terms(self, x: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        # ``--by-tap``: each loss term's own |∂term/∂x| (one backward pass per term)
        for name, value in terms.items():
            if value.requires_grad:
                (gradient,) = torch.autograd.grad(value.sum(), x, retain_graph=True)
                self.taps[name] = self.taps.get(name, 0) + gradient.detach().abs()

    def by_tap_columns(self, item: int) -> dict:
        """Per term: its share of the summed maps' mass and its own map's concentration."""
        masses = {name: float(v[item].sum()) for name, v in self.taps.items()}
        total = sum(masses.values()) or 1.0
        return {
            name: (
                round(masses[name] / total, 3),
                round(metrics.concentration(transparency(v[item : item + 1])[0]), 3),
            )
            for name, v in self.taps.items()
        }

    def __exit__(self, *exc):
        vital.optimize._view_terms = self.original
        return False

    def from_share(self, share: float) -> torch.Tensor:
        return sum(v for k, v in self.sums.items() if k >= round(share * self.parts))


def evidence_concentration(
    model, layer: str, channel: int, pixels: torch.Tensor
) -> tuple[list[float], list[float]]:
    """Per image: the concentration of the map of ``|∂ Σ max(a_channel, 0) / ∂x|``, and of
    ``max(a_channel, 0)`` itself over the layer's positions (where the unit fires)."""
    x = model.preprocessing.normalize(pixels.to(model.device)).requires_grad_(True)
    with tapped(model.module, [layer], stop_early=True) as tap, torch.enable_grad():
        tap(x)
        output = to_positions(tap.outputs[layer], tap.layout(layer))[:, channel]
        (gradient,) = torch.autograd.grad(output.clamp_min(0).sum(), x)
    firing = [metrics.concentration(a) for a in output.detach().clamp_min(0)]
    return [metrics.concentration(a) for a in transparency(gradient.abs())], firing


def evidence(model, layer, channel, picture, views, late, item) -> dict:
    """``--evidence``'s columns for one channel (see the module doc)."""
    on_views, firing_views = evidence_concentration(model, layer, channel, views)
    on_picture, firing_picture = evidence_concentration(model, layer, channel, picture[None])
    found = {
        "evidence_refs": float(np.mean(on_views)),
        "evidence_picture": on_picture[0],
        "firing_refs": float(np.mean(firing_views)),
        "firing_picture": firing_picture[0],
    }
    for share in (0.0, 0.5, 0.8, 0.9):
        found[f"late_{share}"] = metrics.concentration(
            transparency(late.from_share(share)[item : item + 1])[0]
        )
    found["per_step"] = metrics.concentration(transparency(late.normed[item : item + 1])[0])
    with torch.no_grad(), tapped(model.module, [layer], stop_early=True) as tap:
        tap(model.preprocessing.normalize(picture[None].to(model.device)))
        output = to_positions(tap.outputs[layer], tap.layout(layer))[0, channel]
    # the floor the picture is held with at the end (its map's negative share, capped at ½)
    found["negative_share_picture"] = float(output.clamp_max(0).abs().sum() / output.abs().sum())
    if late.by_tap:
        found["by_tap"] = late.by_tap_columns(item)
    masses = [float(late.sums[part][item].sum()) for part in sorted(late.sums)]
    found["mass_by_tenth"] = [round(m / sum(masses), 3) for m in masses]
    return found


def field_references(model, layer: str, targets, references) -> tuple[dict, int]:
    """``--field-scale``: each target's best patches of its unit's receptive field, and the side."""
    info = {i.name: i for i in list_layers(model.module, 224)}[layer]
    side = receptive_field(model, info, 224)
    preprocessing = model.preprocessing
    patches = {}
    for target in targets:
        direction = torch.zeros(info.channels)
        direction[target.index] = 1
        score = target_score(model, layer, direction)
        patches[target], _ = best_patches(
            references[target], score, 224, side, preprocessing.crop_pct,
            preprocessing.interpolation,
        )  # fmt: skip
    return patches, side


def matched_references(model, result, given):
    """The views the method matched: the given ones, or their best patches (recut here)."""
    found = re.match(r"best (\d+)px patch of each view", result.record.references["mode"])
    if not found:
        return given.views(224)
    direction = torch.zeros(_channels(model, result))
    direction[result.target.index] = 1
    score = target_score(model, result.target.layer, direction)
    patches, _ = best_patches(given, score, 224, int(found.group(1)))
    return patches.views(224)


def _channels(model, result) -> int:
    with torch.no_grad(), tapped(model.module, [result.target.layer], stop_early=True) as tap:
        tap(torch.zeros(1, 3, 224, 224))
        return tap.outputs[result.target.layer].shape[1]


def floor_as_mass(relevance: torch.Tensor, floor: torch.Tensor | None = None) -> torch.Tensor:
    """``--floor-mass``: the floor a share of each channel's weight mass, not of its peak."""
    normalized = ORIGINAL_NORMALIZED(relevance)
    if floor is None:
        return normalized
    floor = floor.to(normalized.dtype).view(-1, *([1] * (normalized.dim() - 1)))
    return floor * normalized.mean(dim=-1, keepdim=True) + (1 - floor) * normalized


ORIGINAL_NORMALIZED = vital.objectives.normalized_relevance


def patch_side(value: str) -> int | str:
    """``--patch-side``: ``auto`` or pixels (0: whole views)."""
    return value if value == "auto" else int(value)


def _values(rows: list[dict], key: str) -> str:
    return " ".join(f"{row[key]:.2f}" for row in rows)


def summary(rows: list[dict], model_name: str) -> str:
    layer = rows[0]["layer"]
    half = sum(r["relative"] >= 0.5 for r in rows)
    negative = sum(r["relative"] < 0 for r in rows)
    others = [k for k in rows[0] if k.startswith("gap:")][1:]
    also = "; ".join(
        f"{key[4:]}: own {np.mean([r['own:' + key[4:]] for r in rows]):.3f} gap "
        f"{np.mean([r[key] for r in rows]):.3f} ({min(r[key] for r in rows):.3f}), against "
        f"what was matched own {np.mean([r['own_matched:' + key[4:]] for r in rows]):.3f} gap "
        f"{np.mean([r['gap_matched:' + key[4:]] for r in rows]):.3f} "
        f"({min(r['gap_matched:' + key[4:]] for r in rows):.3f})"
        for key in others
    )
    return (
        f"| {model_name} {layer} | {half}/{len(rows)} | {negative} | "
        f"{_values(rows, 'relative')} | {_values(rows, 'relative_matched')} | "
        f"{np.mean([r['concentration'] for r in rows]):.2f} "
        f"({min(r['concentration'] for r in rows):.2f}) | "
        f"{np.mean([r['own'] for r in rows]):.3f} | {np.mean([r['gap'] for r in rows]):.3f} "
        f"({min(r['gap'] for r in rows):.3f}) | {np.mean([r['own_matched'] for r in rows]):.3f} "
        f"| {np.mean([r['gap_matched'] for r in rows]):.3f} "
        f"({min(r['gap_matched'] for r in rows):.3f}) | {sum(r['below_start'] for r in rows)} | "
        f"{also} | {rows[0]['references']} | {rows[0]['seconds']:.1f} |"
        + (
            f" evidence on references {_values(rows, 'evidence_refs')}, on the picture "
            f"{_values(rows, 'evidence_picture')}; firing on references "
            f"{_values(rows, 'firing_refs')}, on the picture {_values(rows, 'firing_picture')}"
            f"; transparency of all steps {_values(rows, 'late_0.0')}, of the steps from 50 % "
            f"{_values(rows, 'late_0.5')}, from 80 % {_values(rows, 'late_0.8')}, from 90 % "
            f"{_values(rows, 'late_0.9')}, each step "
            f"the same mass {_values(rows, 'per_step')}"
            if "evidence_refs" in rows[0]
            else ""
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("layers", nargs="+", help="MODEL:LAYER, e.g. mobilenet_v2:features.15")
    parser.add_argument("--setting", default="fast")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--references", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="the first picture's seed")
    parser.add_argument(
        "--patch-side", help="'auto', or pixels (0: whole views); default: the method's"
    )
    parser.add_argument("--relevance", help="relevance backend; default: the method's")
    parser.add_argument("--jitter", type=int, help="jitter in pixels; default: the setting's")
    parser.add_argument(
        "--field-scale",
        action="store_true",
        help="pictures of one receptive field, from the best patches of that side, unresized",
    )
    parser.add_argument(
        "--evidence",
        action="store_true",
        help="also the concentration of the unit's input gradient on its references and on the "
        "picture, and the transparency of the later steps only",
    )
    parser.add_argument(
        "--by-tap",
        type=int,
        default=0,
        metavar="EVERY",
        help="with --evidence: every EVERY-th step of the last fifth, each loss term's own "
        "|dterm/dx| (which tap's gradient makes the map)",
    )
    parser.add_argument(
        "--floor-mass",
        action="store_true",
        help="the signed floor as a share of each channel's weight mass (f * mean r + (1 - f) "
        "* r) instead of a share of its peak (f + (1 - f) * r); use a fresh VITAL_CACHE",
    )
    parser.add_argument(
        "--judge",
        default="efficientnet_lite0",
        help="judges of realism, comma-separated, the first the table's (a model's own layers: "
        "mobilenet_v2 judges them)",
    )
    parser.add_argument(
        "--photos",
        type=photo_list,
        default=CHANNEL_PHOTOS,
        help="comma-separated embedded photos, one channel each (default: the dev photos "
        + ",".join(CHANNEL_PHOTOS)
        + "; others are held out)",
    )
    parser.add_argument("--figures", type=Path, default=HERE / "out" / "layer_kinds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.floor_mass:
        vital.objectives.normalized_relevance = floor_as_mass
    loaded: dict[str, vital.Model] = {}
    lines = [
        "| model layer | ≥ ½ views' activation | negative | relative to views | relative to "
        "what was matched | top-quarter share mean (min) | realism own | gap to other "
        "channels mean (min) | realism own, against what was matched | gap, against what "
        "was matched, mean (min) | below start | other judges | references | s / picture |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in args.layers:
        name, layer = item.split(":")
        # A model is not its own judge: the explained MobileNetV2 judges the judges' pictures.
        names = [j if j != name else "mobilenet_v2" for j in args.judge.split(",")]
        for needed in (name, *names):
            if needed not in loaded:
                loaded[needed] = load_judge(needed)
        model, judges = loaded[name], {j: loaded[j] for j in dict.fromkeys(names)}
        rows, path = run_layer(model, judges, layer, args)
        args.figures.mkdir(parents=True, exist_ok=True)
        with open(args.figures / "rows.jsonl", "a") as handle:
            for row in rows:
                print(row, flush=True)
                handle.write(json.dumps({**row, "model": name, "judge": names[0]}) + "\n")
        lines.append(summary(rows, name))
        print(lines[-1], f"grid {path}", flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
