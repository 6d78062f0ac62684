"""Convergence: picture quality against steps for setting 1 and ``fast`` (issue 11, part C).

Explained model: MobileNetV2 (embedded weights). Targets:

- classes: the embedded photos' classes (espresso 967, Egyptian cat 285, moped 665, daisy 985,
  palace 698, space shuttle 812, military uniform 652), each with 50 views of its one photo as
  references (``vital.visualize``'s default);
- channels: for each of four photos (coffee, chelsea, motorcycle, daisy) the channel of
  ``--layer`` most selective for it (its mean activation on the photo's centre crop divided by
  its mean over the other embedded photos plus the layer's mean activation, the floor keeping
  near-silent channels out; on signed layers the positive parts of the denominator's means,
  so that a channel the photo drives negative ranks last), references =
  ``--channel-references`` views of that photo.

Per point (method, setting, steps): classes: the explained model's probability and rank;
channels: the channel's mean activation on the picture relative to its references' mean; both:
the judge's top-5 (the photo's class), realism (cosine of the judge's pooled features to 50
other views of the own photo, and the gap to the other photos'), and seconds per picture.
Seeds are fixed: image ``i`` uses seed ``--seed-base`` + ``i`` (default 0), so a second and
third seed set (e.g. ``--seed-base 7``, ``--seed-base 14``) confirm a result beyond one draw; the
loop is chaotic (runs that differ in float rounding end in different pictures). ``--set
KEY=VALUE`` (repeatable) overrides a :class:`~vital.optimize.Settings` field of every VITAL point
(e.g. ``--set views=2``), to measure a variant of a setting; it is part of the point's label and
cache key. ``--judge efficientnet_lite1`` scores with EfficientNet-Lite1 (installed as
``benchmarks/concepts_mobilenet.py`` says), the model variants are chosen by; ``--json FILE``
writes the rows for averaging over seed sets. The Fourier FV baseline (activation maximisation,
Lucent's recipe) runs beside VITAL at ``--baseline-steps``.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/convergence.py --steps 50,100,150,300,2000
    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/convergence.py --quick   # CI-sized
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/convergence.py --points fast@100 \
        --channel-points fast@100 --baseline-steps '' --seed-base 7 --set views=2

writes a Markdown table and grids (rows = method@steps, columns = targets; channels with their
RGBA transparency view) into benchmarks/figures/, and with ``--append`` a dated section to
benchmarks/RESULTS.md. Finished points are kept in ``--cache`` (keyed by settings, targets and
the model) so that adding a step count reruns only the new points; ``--fresh`` ignores it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import vital
from vital import metrics
from vital.grids import display_pixels, grid, to_image
from vital.optimize import Settings, setting_key
from vital.references import SAMPLE_PHOTOS, center_crop, from_samples, open_rgb, sample_photo
from vital.taps import tapped
from vital.targets import Channel

HERE = Path(__file__).parent
CLASSES = (967, 285, 665, 985, 698, 812, 652)
CHANNEL_PHOTOS = ("coffee", "chelsea", "motorcycle", "daisy")
CLASS_PHOTOS = {c: name for name, (_, c) in SAMPLE_PHOTOS.items() if c is not None}
REAL_VIEWS = 50


@dataclass
class Point:
    """One (method, setting, steps) run over all targets of a kind."""

    kind: str  # "classes" or "channels"
    method: str  # "vital" or a baseline
    setting: str  # "1", "fast", or the baseline's own
    steps: int
    pixels: torch.Tensor  # (N, 3, R, R)
    seconds: float  # per picture
    alphas: torch.Tensor | None = None
    relative: list[float] | None = None  # channels: activation / references' mean
    variant: str = ""  # the --set overrides, e.g. "views=2"

    @property
    def label(self) -> str:
        if self.method != "vital":
            name = self.method
        else:
            name = f"setting {self.setting}" if self.setting.isdigit() else self.setting
        return f"{name}{' ' + self.variant if self.variant else ''} @{self.steps}"


@dataclass(frozen=True)
class Run:
    """What every VITAL point of one invocation shares: the seed set and the overrides."""

    seed_base: int = 0
    overrides: tuple[tuple[str, object], ...] = ()

    @property
    def variant(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.overrides)

    def settings(self, steps: int) -> dict:
        return {"steps": steps, "seed": self.seed_base, **dict(self.overrides)}


def parse_overrides(pairs: list[str]) -> tuple[tuple[str, object], ...]:
    """``KEY=VALUE`` strings as (key, Python literal) pairs, checked against Settings' fields."""
    fields = {f.name for f in dataclasses.fields(Settings)} - {"steps", "seed"}
    parsed = []
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key not in fields or not text:
            raise SystemExit(f"--set takes KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if value is None:  # the driver reads None as "not given": the run would be the preset's
            raise SystemExit(f"--set {key}=None would run the preset's own {key}; leave it out")
        parsed.append((key, value))
    return tuple(parsed)


KINDS = ("classes", "channels")
# What load_judge loads: EfficientNet-Lite0 (embedded), Lite1 (benchmarks/out/pylib).
JUDGES = ("efficientnet_lite0", "efficientnet_lite1")


def quick(cache: Path, seed_base: int = 0) -> dict[str, object]:
    """The options ``--quick`` sets (CI-sized: 2 classes, 1 channel), by their argparse names.

    Figures go into the cache's ``quick`` folder, one folder per seed set beyond the first
    (``seed_sets.py`` runs several at once).
    """
    figures = cache / "quick" / (f"seeds-{seed_base}" if seed_base else "")
    return {
        "steps": "20", "baseline_steps": "20", "classes": "967,285", "channel_photos": "coffee",
        "channel_references": 4, "figures": figures,
    }  # fmt: skip


def quick_conflict(args: argparse.Namespace) -> str | None:
    """The options given beside ``--quick`` that it would replace, as an error; None if none.

    An option counts as given where it differs from the parser's default: ``--quick`` would
    otherwise run something else than the command line says, without a word.
    """
    if not args.quick:
        return None
    parser = build_parser()
    given = [
        "--" + name.replace("_", "-")
        for name in quick(args.cache)
        if getattr(args, name) != parser.get_default(name)
    ]
    if not given:
        return None
    names = ", ".join(given)
    return f"--quick sets {names} itself: leave out {names} or --quick"


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, said before any model runs; None if nothing is.

    The photos and classes must be ones the benchmark can score: each class needs an embedded
    photo of it (its real images), and so does each channel's photo (the judge asks whether a
    channel's picture shows the photo's class). With ``--quick`` the options it sets are checked
    as it sets them, and giving one of them too is an error.
    """
    conflict = quick_conflict(args)
    if conflict:
        return conflict
    # a point names its own setting and steps: --settings and --steps would be dropped
    defaults = build_parser()
    dropped = [
        "--" + name
        for name in ("settings", "steps")
        if getattr(args, name) != defaults.get_default(name)
    ]
    if args.points and dropped:
        return f"--points names each point's setting and steps: leave out {' and '.join(dropped)}"
    if args.quick:
        args = argparse.Namespace(**{**vars(args), **quick(args.cache, args.seed_base)})

    def counts(text: str, option: str, allow_empty: bool = False) -> str | None:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items and not allow_empty:
            return f"{option} needs at least one step count"
        if any(not item.isdigit() or int(item) < 1 for item in items):
            return f"{option} takes whole step counts of 1 or more, comma-separated, not {text!r}"
        return None

    def points(text: str, option: str) -> str | None:
        for point in text.split(","):
            setting, at, steps = point.partition("@")
            if not at or not steps.isdigit() or int(steps) < 1:
                return f"{option}: {point!r} is not SETTING@STEPS (e.g. fast@100, 1@2000)"
            try:
                Settings.setting(setting)
            except vital.VitalError as error:
                return f"{option}: {error}"
        return None

    def settings(text: str) -> str | None:
        names = text.split(",")
        for name in names:
            try:
                Settings.setting(name)
            except vital.VitalError as error:
                return f"--settings: {error}"
        if len({setting_key(name) for name in names}) != len(names):
            return f"--settings names a setting twice: {text!r}"
        return None

    def overrides(names: list[str]) -> str | None:
        # checked as each VITAL point's settings would be, not when the first point starts
        try:
            pairs = dict(parse_overrides(args.set))
        except SystemExit as error:  # parse_overrides says what is wrong
            return str(error.code)
        for name in names:
            try:
                Settings.setting(name, **pairs).validate()
            except vital.VitalError as error:
                return f"--set {' '.join(args.set)}: {error}"
        return None

    kinds = args.kinds.split(",")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        return f"--kinds takes {' and/or '.join(KINDS)}, comma-separated, not {args.kinds!r}"
    scored_photos = {name for name, (_, label) in SAMPLE_PHOTOS.items() if label is not None}
    checks = [
        None if args.points else counts(args.steps, "--steps"),
        None if args.points else settings(args.settings),
        counts(args.baseline_steps, "--baseline-steps", allow_empty=True),
        points(args.points, "--points") if args.points else None,
        points(args.channel_points, "--channel-points") if args.channel_points else None,
    ]
    if not any(checks):  # every setting named is one: now its overrides
        named = args.points.split(",") if args.points else args.settings.split(",")
        named += args.channel_points.split(",") if args.channel_points else []
        checks.append(overrides([point.partition("@")[0] for point in named]))
    if args.judge not in JUDGES:
        checks.append(f"--judge takes {' or '.join(JUDGES)}, not {args.judge!r}")
    targets = 1  # image i of a kind takes seed --seed-base + i, and seeds end at 2**63 - 1
    if "classes" in kinds:
        classes = args.classes.split(",")
        targets = max(targets, len(classes))
        if any(not c.strip().isdigit() or int(c) not in CLASS_PHOTOS for c in classes):
            listed = ", ".join(f"{c} ({n})" for c, n in CLASS_PHOTOS.items())
            checks.append(f"--classes takes classes with an embedded photo: {listed}")
        elif len(set(classes)) != len(classes):
            checks.append(f"--classes names a class twice: {args.classes!r}")
    if "channels" in kinds:
        photos = args.channel_photos.split(",")
        targets = max(targets, len(photos))
        if any(photo not in scored_photos for photo in photos):
            checks.append(
                "--channel-photos takes embedded photos of a class (the judge scores the "
                f"pictures against it): {', '.join(sorted(scored_photos))}"
            )
        elif len(set(photos)) != len(photos):
            checks.append(f"--channel-photos names a photo twice: {args.channel_photos!r}")
        if args.channel_references < 1:
            count = args.channel_references
            checks.append(f"--channel-references is a count of 1 or more, not {count}")
    if not 0 <= args.seed_base <= 2**63 - targets:
        checks.append(
            f"--seed-base is a whole number from 0 to {2**63 - targets} (image i takes seed "
            f"BASE + i), not {args.seed_base}"
        )
    checks += [
        unwritable(args.json, "--json", folder=False) if args.json else None,
        unwritable(args.figures, "--figures", folder=True),
        unwritable(args.cache, "--cache", folder=True),
    ]
    return next((problem for problem in checks if problem), None)


def unwritable(path: Path, option: str, folder: bool) -> str | None:
    """Why the benchmark could not write ``path`` (a folder, or a file when ``folder`` is
    False) once its run ends; None if it could. Nothing is created: the nearest existing
    ancestor must be a writable folder."""
    if path.exists():
        if folder and not path.is_dir():
            return f"{option} {path} is a file; give a folder"
        if not folder and path.is_dir():
            return f"{option} {path} is a folder; give a file name"
        if not os.access(path, os.W_OK):
            return f"{option} {path} is not writable; give another path"
        return None
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{option} {path} lies under the file {ancestor}; give another path"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{option} {path} cannot be created: {ancestor} is not writable"
    return None


# --- the two target runners -------------------------------------------------------------------


def _visualize(model, targets, references, method: str, setting: str, steps: int, run: Run):
    """One batch through the driver: the method's defaults for the model (preset and neuron
    priors included), the named VITAL setting with the run's overrides, the same steps and
    seeds ``seed_base``..``seed_base`` + N - 1 for all."""
    vital_ = method == "vital"
    return vital.visualize(
        model,
        list(targets),
        references,
        method=method,
        setting=setting if vital_ else None,
        settings=run.settings(steps) if vital_ else {"steps": steps, "seed": run.seed_base},
        batch_size=len(targets),
        progress=False,
    )


def run_classes(model, classes, method: str, setting: str, steps: int, run: Run) -> Point:
    """VITAL (setting 1 or fast) or a baseline on class targets, one batch."""
    started = time.perf_counter()
    results = _visualize(model, classes, None, method, setting, steps, run)
    seconds = (time.perf_counter() - started) / len(classes)
    pixels = torch.stack([r.pixels for r in results])
    variant = run.variant if method == "vital" else ""
    return Point("classes", method, setting, steps, pixels, seconds, variant=variant)


def run_channels(
    model, targets, references, method: str, setting: str, steps: int, run: Run
) -> Point:
    """VITAL (``lrp``, the authors' neuron priors) or a baseline on channel targets."""
    started = time.perf_counter()
    chosen = references if method == "vital" else None
    results = _visualize(model, targets, chosen, method, setting, steps, run)
    seconds = (time.perf_counter() - started) / len(targets)
    pixels = torch.stack([r.pixels for r in results])
    alphas = [r.alpha for r in results]
    alphas = torch.stack(alphas) if all(a is not None for a in alphas) else None
    variant = run.variant if method == "vital" else ""
    return Point("channels", method, setting, steps, pixels, seconds, alphas, variant=variant)


# --- targets, references, real images ---------------------------------------------------------


def photo_crops(names) -> torch.Tensor:
    return torch.stack([center_crop(open_rgb(sample_photo(n)), 224) for n in names])


def selective_channels(model, layer: str, photos=CHANNEL_PHOTOS) -> dict[str, int]:
    """For each photo, the channel of ``layer`` most selective for it (see the module doc)."""
    names = [n for n in SAMPLE_PHOTOS]
    with torch.no_grad(), tapped(model.module, [layer], stop_early=True) as tap:
        activations = tap(model.preprocessing.normalize(photo_crops(names)))[layer].mean(dim=-1)
    # Sign-aware: on a signed layer (a residual sum, a linear bottleneck) a channel whose mean on
    # the photo is negative is not driven up by it, and dividing it by a negative denominator
    # would rank it first. The floor and the other photos' means count their positive part only,
    # so the denominator stays positive and a channel negative on the photo ranks last; on a
    # ReLU layer every activation is non-negative and the rule is the old one.
    floor = activations.clamp_min(0).mean()
    chosen: dict[str, int] = {}
    for photo in photos:
        row = names.index(photo)
        others = torch.cat([activations[:row], activations[row + 1 :]]).mean(dim=0)
        selectivity = activations[row] / (others.clamp_min(0) + floor)
        for channel in selectivity.argsort(descending=True).tolist():
            if channel not in chosen.values():
                chosen[photo] = channel
                break
    return chosen


def real_images() -> tuple[torch.Tensor, list[int]]:
    """50 views (seed 1, not the references' seed 0) of every class photo, labelled by class."""
    images, labels = [], []
    for index, name in CLASS_PHOTOS.items():
        views = list(from_samples([name], REAL_VIEWS, seed=1).views(224))
        images += views
        labels += [index] * len(views)
    return torch.stack(images), labels


# --- scoring ----------------------------------------------------------------------------------


def photo_ranks(model, classes: list[int]) -> list[tuple[float, int]]:
    """How the explained model ranks each class on its own photo (mean over the 12 views that
    ``from_samples`` gives as references), as (probability, rank) per class: the class goal
    applies where this rank is 1."""
    ranks = []
    for index in classes:
        views = torch.stack(list(from_samples([CLASS_PHOTOS[index]], 12, seed=0).views(224)))
        mean = metrics.probabilities(model, views).mean(0)
        ranks.append((float(mean[index]), int((mean > mean[index]).sum()) + 1))
    return ranks


def describe_photo_ranks(model, classes: list[int], ranks: list[tuple[float, int]]) -> str:
    return "; ".join(
        f"{model.labels.name(index)} p {probability:.2f} rank {rank}"
        for index, (probability, rank) in zip(classes, ranks, strict=True)
    )


def score(point: Point, model, judge, labels, real, real_labels) -> dict:
    """The point's numbers, per target and summarised."""
    judged = metrics.target_scores(judge, point.pixels, labels)
    realism = metrics.realism(judge, point.pixels, labels, real, real_labels)
    row = {
        "label": point.label,
        "judge_top5": sum(j["rank"] <= 5 for j in judged),
        "realism_own": float(np.mean([r["own"] for r in realism])),
        "realism_gap": float(np.mean([r["margin"] for r in realism])),
        "seconds": point.seconds,
        "count": len(labels),
    }
    if point.kind == "classes":
        explained = metrics.target_scores(model, point.pixels, labels)
        row["top1"] = sum(e["rank"] == 1 for e in explained)
        row["ranks"] = [e["rank"] for e in explained]
        row["detail"] = " ".join(f"{e['probability']:.2f}/{e['rank']}" for e in explained)
        row["probability"] = float(np.mean([e["probability"] for e in explained]))
    else:
        row["half"] = sum(r >= 0.5 for r in point.relative)
        row["detail"] = " ".join(f"{r:.2f}" for r in point.relative)
        row["relative"] = float(np.mean(point.relative))
    return row


def top1_where(ranks: list[int], chosen: list[bool]) -> int:
    """How many of the chosen classes the explained model ranks first (a row's ``ranks``)."""
    return sum(rank == 1 for rank, keep in zip(ranks, chosen, strict=True) if keep)


def relative_activations(model, layer, channels, pixels, references) -> list[float]:
    """Each picture's channel activation relative to its references' mean (224 px views)."""
    values = []
    for item, (channel, reference) in enumerate(zip(channels, references, strict=True)):
        views = torch.stack(list(reference.views(224)))
        values += metrics.relative_activation(model, layer, channel, pixels[item : item + 1], views)
    return values


def table(rows: list[dict], kind: str, targets: str) -> str:
    if kind == "classes":
        head = (
            "| method @ steps | explained top-1 | mean p | p/rank per class | judge top-5 | "
            "realism own | realism gap | s / picture |\n|---|---|---|---|---|---|---|---|"
        )
        lines = [
            f"| {r['label']} | {r['top1']}/{r['count']} | {r['probability']:.3f} | "
            f"{r['detail']} | {r['judge_top5']}/{r['count']} | {r['realism_own']:.3f} | "
            f"{r['realism_gap']:.3f} | {r['seconds']:.1f} |"
            for r in rows
        ]
    else:
        head = (
            "| method @ steps | ≥ ½ references' activation | mean relative activation | "
            "relative activation per channel | judge top-5 (photo's class) | realism own | "
            "realism gap | s / picture |\n|---|---|---|---|---|---|---|---|"
        )
        lines = [
            f"| {r['label']} | {r['half']}/{r['count']} | {r['relative']:.2f} | {r['detail']} | "
            f"{r['judge_top5']}/{r['count']} | {r['realism_own']:.3f} | {r['realism_gap']:.3f} "
            f"| {r['seconds']:.1f} |"
            for r in rows
        ]
    return f"Targets ({kind}): {targets}\n\n" + head + "\n" + "\n".join(lines) + "\n"


def figure(points: list[Point], photos: list[str], headers: list[str], path: Path) -> None:
    """Rows = points (a photo row first), columns = targets (channels: image + RGBA)."""
    channels = points[0].kind == "channels"
    per_target = 2 if channels else 1
    images, captions, rows = [], [], ["photo"]
    for name, header in zip(photos, headers, strict=True):
        images.append(to_image(photo_crops([name])[0]))
        captions.append(header)
        if channels:
            images.append(to_image(photo_crops([name])[0]))
            captions.append("")
    for point in points:
        rows.append(point.label)
        for item in range(point.pixels.shape[0]):
            images.append(to_image(point.pixels[item]))
            value = point.relative[item] if channels else None
            captions.append(f"act {value:.2f}x refs" if channels else "")
            if channels:
                alpha = point.alphas[item] if point.alphas is not None else None
                images.append(to_image(display_pixels(point.pixels[item]), alpha))
                captions.append("RGBA" if alpha is not None else "(no alpha)")
    columns = per_target * len(photos)
    sheet = grid(images, captions, columns=columns, cell=150, row_labels=rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=88)


# --- the driver -------------------------------------------------------------------------------


def load_judge(name: str):
    """The judge: an embedded model, or EfficientNet-Lite1 (the one variants are chosen by)."""
    if name == "efficientnet_lite1":
        from concepts_mobilenet import load_judge as lite1  # benchmarks/ is on the path

        return lite1(name)
    return vital.load_model(name)


def recipe(method: str, setting: str, run: Run) -> dict | None:
    """What a named VITAL setting is made of (with the run's overrides): a cached point is
    reused only while it holds."""
    if method != "vital":
        return None
    chosen = Settings.setting(setting, **dict(run.overrides))
    return json.loads(json.dumps(dataclasses.asdict(chosen)))


def point_key(kind: str, method: str, setting: str, steps: int, model, run: Run, **inputs) -> dict:
    """Everything a point depends on: a cached point is reused only for an equal key."""
    recipe_ = recipe(method, setting, run)
    # seed set 0 keeps the key it had before --seed-base existed (its cached points hold)
    seeds = {"seed_base": run.seed_base} if run.seed_base else {}
    return {"kind": kind, "method": method, "setting": setting, "recipe": recipe_,
            "steps": steps, "model": model.fingerprint, **seeds, **inputs}  # fmt: skip


def cached_point(cache: Path | None, key: dict, compute) -> Point:
    if cache is None:
        return compute()
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{key['kind']}-{key['method']}-{key['setting']}-{key['steps']}-{digest}.pt"
    if path.exists():
        return Point(**torch.load(path, weights_only=False))
    point = compute()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(dataclasses.asdict(point), path)
    return point


def build_parser() -> argparse.ArgumentParser:
    """The command line's options and their defaults (``--quick`` compares against them)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", default="50,100,150,300,1000,2000", help="comma-separated")
    parser.add_argument(
        "--settings",
        default="1,fast",
        help="VITAL settings to run (0, 1, 2, fast), comma-separated",
    )
    parser.add_argument(
        "--points", default="", help="instead of --settings x --steps: e.g. 1@300,1@2000,fast@300"
    )
    parser.add_argument("--channel-points", default="", help="--points for channels only")
    parser.add_argument("--baseline-steps", default="300", help="Fourier FV steps ('' = none)")
    parser.add_argument("--classes", default=",".join(map(str, CLASSES)))
    parser.add_argument("--channel-photos", default=",".join(CHANNEL_PHOTOS))
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--channel-references", type=int, default=20)
    parser.add_argument("--kinds", default="classes,channels")
    parser.add_argument("--judge", default=JUDGES[0], help=" or ".join(JUDGES))
    parser.add_argument("--seed-base", type=int, default=0, help="image i uses seed BASE + i")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a Settings field of every VITAL point (repeatable), e.g. views=2",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the rows here (for averaging)")
    parser.add_argument(
        "--quick", action="store_true",
        help="CI-sized: sets --steps 20, --baseline-steps 20, --classes 967,285, "
        "--channel-photos coffee, --channel-references 4 and --figures CACHE/quick; "
        "give none of these with it",
    )  # fmt: skip
    parser.add_argument("--cache", type=Path, default=HERE / "out" / "convergence")
    parser.add_argument("--fresh", action="store_true", help="recompute every point")
    parser.add_argument("--figures", type=Path, default=HERE / "figures")
    parser.add_argument("--append", action="store_true", help="append to benchmarks/RESULTS.md")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    if args.quick:
        args = argparse.Namespace(**{**vars(args), **quick(args.cache, args.seed_base)})
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=HERE).returncode
    started = time.perf_counter()
    run = Run(args.seed_base, parse_overrides(args.set))
    model = vital.load_model("mobilenet_v2")
    judge = load_judge(args.judge)
    real, real_labels = real_images()
    cache = None if args.fresh else args.cache / "points"
    steps = [int(s) for s in args.steps.split(",") if s]
    baseline_steps = [int(s) for s in args.baseline_steps.split(",") if s]
    plan = [("vital", s, n) for s in args.settings.split(",") for n in steps]
    baselines = [("fourier", "lucent", n) for n in baseline_steps]

    def points_plan(points: str) -> list[tuple[str, str, int]]:
        pairs = [point.split("@") for point in points.split(",")]
        return [("vital", setting, int(n)) for setting, n in pairs] + baselines

    channel_plan = plan + baselines
    if args.points:
        plan = channel_plan = points_plan(args.points)
    else:
        plan = plan + baselines
    if args.channel_points:
        channel_plan = points_plan(args.channel_points)
    sections, all_rows = [], []
    kinds = args.kinds.split(",")
    if "classes" in kinds:
        classes = [int(c) for c in args.classes.split(",")]
        points = []
        for method, setting, n in plan:
            key = point_key("classes", method, setting, n, model, run, targets=classes)
            points.append(
                cached_point(
                    cache,
                    key,
                    lambda m=method, s=setting, n=n: run_classes(model, classes, m, s, n, run),
                )
            )
            print(f"classes {points[-1].label}: {points[-1].seconds:.1f} s/picture", flush=True)
        ranks = photo_ranks(model, classes)
        first_on_photo = [rank == 1 for _, rank in ranks]
        rows = [score(p, model, judge, classes, real, real_labels) for p in points]
        for row in rows:
            row["top1_of_first"] = top1_where(row["ranks"], first_on_photo)
            row["first_on_photo"] = sum(first_on_photo)
        all_rows += [{"kind": "classes", **r} for r in rows]
        names = [f"{model.labels.name(c)} ({c})" for c in classes]
        sections.append(table(rows, "classes", ", ".join(names)))
        sections.append(
            "The explained model on each class's own photo (mean over 12 views): "
            f"{describe_photo_ranks(model, classes, ranks)}. The class goal (top-1 at 300 "
            "steps) is for the classes it ranks first on their photo.\n"
        )
        figure(
            points,
            [CLASS_PHOTOS[c] for c in classes],
            names,
            args.figures / "convergence-classes.jpg",
        )
    if "channels" in kinds:
        photos = args.channel_photos.split(",")
        chosen = selective_channels(model, args.layer, photos)
        targets = [Channel(args.layer, chosen[p]) for p in photos]
        references = [from_samples([p], args.channel_references, seed=0) for p in photos]
        by_target = dict(zip(targets, references, strict=True))
        labels = [next(c for c, n in CLASS_PHOTOS.items() if n == p) for p in photos]
        points = []
        for method, setting, n in channel_plan:
            key = point_key(
                "channels", method, setting, n, model, run,
                targets=[[t.layer, t.index] for t in targets],
                references=args.channel_references,
            )  # fmt: skip
            point = cached_point(
                cache,
                key,
                lambda m=method, s=setting, n=n: run_channels(
                    model, targets, by_target, m, s, n, run
                ),
            )
            point.relative = relative_activations(
                model, args.layer, [t.index for t in targets], point.pixels, references
            )
            points.append(point)
            print(f"channels {point.label}: {point.seconds:.1f} s/picture", flush=True)
        rows = [score(p, model, judge, labels, real, real_labels) for p in points]
        all_rows += [{"kind": "channels", **r} for r in rows]
        headers = [f"{args.layer} ch {chosen[p]} ({p})" for p in photos]
        sections.append(table(rows, "channels", ", ".join(headers)))
        figure(points, photos, headers, args.figures / "convergence-channels.jpg")
    minutes = (time.perf_counter() - started) / 60
    report = "\n".join(sections)
    print(report)
    print(f"total {minutes:.1f} min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"seed_base": run.seed_base, "variant": run.variant, "judge": args.judge}
        args.json.write_text(json.dumps({**meta, "rows": all_rows}, indent=1))
    if args.append:
        command = "OMP_NUM_THREADS=2 PYTHONPATH=src python " + " ".join(sys.argv)
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        header = [
            f"\n## Convergence: setting 1 and fast against steps ({date})\n",
            f"Machine: {platform.machine()} CPU container, 2 cores shared; commit {commit}"
            f"{' (with uncommitted changes in src/)' if dirty else ''}; {minutes:.1f} min "
            "(points reused from the cache are not re-timed: their seconds are those of the run "
            "that made them).",
            f"Command: `{command}`",
            f"Explained model mobilenet_v2; judge {args.judge}; realism against {REAL_VIEWS} "
            f"views (seed 1) of each class photo. Seeds {run.seed_base}..{run.seed_base}+N-1. "
            "Grids: "
            "benchmarks/figures/convergence-classes.jpg, convergence-channels.jpg.\n",
        ]
        with open(HERE / "RESULTS.md", "a") as handle:
            handle.write("\n".join(header) + "\n" + report)


if __name__ == "__main__":
    try:
        main()
    except vital.VitalError as error:  # a wrong --layer, a judge that is not installed, ...
        # exit status 2, as argparse's own errors: what was asked cannot run
        print(f"convergence.py: error: {error}", file=sys.stderr)
        sys.exit(2)
