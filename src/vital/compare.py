"""Compare VITAL with the baselines on the same class targets: run, score, tabulate, draw.

:func:`compare` runs every method on all targets (one batch per method), scores the images with
:mod:`vital.metrics` and returns a :class:`Comparison`; :func:`write_report` writes the
Markdown and CSV tables and one grid (rows = methods, columns = targets).

The real images that FID and realism compare with are each class's reference images (for the
embedded photos: one photo per class expanded to random crops). VITAL's references are drawn
from the same images, so both metrics are in-sample for VITAL; the notes say so.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vital import metrics
from vital.api import visualize
from vital.errors import VitalError, check_count
from vital.files import save_image, write_file
from vital.grids import grid
from vital.methods import METHODS as REGISTRY
from vital.methods import get_method, method_class, method_name
from vital.methods.vital_class import References, class_references
from vital.methods.vital_neuron import neuron_references
from vital.optimize import DEFAULT_SETTING, first_seed
from vital.references import DEFAULT_REFERENCES
from vital.renamed import renamed
from vital.store import Result
from vital.targets import ClassTarget, Target, resolve_targets
from vital.zoo import Model, as_model, frozen

METHODS = tuple(REGISTRY)


@dataclass
class Comparison:
    """Everything a comparison produced.

    Attributes
    ----------
    model, judge
        Names of the explained model and of the judge (``None`` without one).
    targets
        The targets (classes, or channels and directions), in column order.
    results
        Per method, one result per target.
    summary
        One row per method (the table).
    per_image
        One row per (method, target).
    notes
        What the reader must know to read the numbers (counts, skipped metrics, caveats).
    """

    model: str
    judge: str | None
    targets: list
    results: dict[str, list[Result]]
    summary: list[dict] = field(default_factory=list)
    per_image: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def methods_for(targets: Sequence[Target]) -> list[str]:
    """The registered methods that can visualise ``targets`` (DeepInversion: classes only)."""
    kinds = {type(target) for target in targets}
    return [
        name for name, classes in REGISTRY.items() if any(kinds <= set(c.targets) for c in classes)
    ]


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """``"vital,maco"`` or a list → checked method names, in order."""
    if not isinstance(methods, str) and not (
        isinstance(methods, Sequence) and all(isinstance(m, str) for m in methods)
    ):
        raise VitalError(
            f"method= is a method name, names separated by commas, or a list of names "
            f"(e.g. 'vital,maco'), not {methods!r}."
        )
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    names = [method_name(m) for m in names]
    names = [m for m in names if m]
    known = tuple(REGISTRY)
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise VitalError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(known)}."
        )
    return list(dict.fromkeys(names))


def _real_images(
    model: Model, targets: Sequence[ClassTarget], references: References, count: int, seed: int
) -> tuple[torch.Tensor, list[int]]:
    resolution = model.preprocessing.input_size
    images, labels = [], []
    for target in targets:
        reference_set = class_references(model, target, references, count, seed, len(targets) == 1)
        views = list(reference_set.views(resolution))
        images += views
        labels += [target.index] * len(views)
    return torch.stack(images), labels


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@renamed(methods="method", steps="settings.steps")
def compare(
    model: Model | str,
    targets: Sequence[Target | int | str],
    method: str | Sequence[str] = METHODS,
    *,
    judge: Model | str | None = None,
    references: References = None,
    real_references: References = None,
    settings: Mapping[str, object] | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    batch_size: int = 8,
    reference_count: int = DEFAULT_REFERENCES,
    fid_model: Model | str | None = None,
    fid_layer: str | None = None,
    clip_weights: str | Path | None = None,
    method_options: Mapping[str, Mapping[str, object]] | None = None,
    progress: bool = True,
    setting: int | str = DEFAULT_SETTING,
    force: bool = False,
    device: str | torch.device | None = None,
) -> Comparison:
    """Run every ``method`` on the same targets and score them.

    Parameters
    ----------
    model
        The explained model.
    targets
        Class targets (index, name, WordNet id or :class:`ClassTarget`), or inner
        :class:`Channel` / :class:`Direction` targets: then every picture is scored by its
        target's activation relative to the mean over the references VITAL matches, the same
        yardstick for VITAL and for activation maximisation (Fourier FV with a channel
        objective, as Lucent does, and MaCo).
    method
        ``"vital"`` and baseline names: one name, comma-separated text or a list (default:
        every method; ``methods=``, the old name, still works with a warning).
    judge
        A second, independent model for top-1/top-5 recognisability and realism.
    references
        VITAL's references (default: embedded photos).
    real_references
        Real images for FID and realism, per class like ``references`` (default: the same
        as ``references``, which makes both metrics in-sample for VITAL).
    settings
        Changes to every method's defaults, as a mapping of Settings fields (as for
        :func:`vital.visualize`): ``{"steps": N}`` gives every method the same steps (default:
        each method's own; ``steps=N``, the old keyword, still works with a warning).
    seed
        Seed of the first image of every method (default 0; or ``settings["seed"]``: where
        both are given they must agree).
    out
        Folder for each method's PNG + JSON records (one sub-folder per method).
    batch_size
        Targets optimised together.
    reference_count
        Real images (views) per class.
    fid_model, fid_layer
        Feature space of FID (default: the explained model's penultimate features).
    clip_weights
        A local open_clip weights file for CLIP zero-shot (skipped without one).
    method_options
        Per baseline, its options (e.g. ``{"maco": {"crops": 2}}``).
    progress
        Show progress bars.
    setting
        The named setting of the methods that have them (VITAL: ``"fast"``, the default, or the
        authors' 0, 1, 2); the baselines run their published defaults.
    force
        Compute every picture again, replacing the pictures ``out`` holds (by default a
        picture stored there with the same inputs is reused, and one made with other inputs
        is not replaced: the run is refused).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"`` for the model, the judge and FID's model; default:
        where each is (a model given by name loads on ``"auto"``).
    """
    batch_size = check_count(batch_size, "batch_size")
    overrides = _common_settings(settings, seed)
    seed = overrides["seed"]
    # A caller's own modules are handed back in the state they came in.
    with frozen(model), frozen(judge), frozen(fid_model):
        model = as_model(model, device)
        names = parse_methods(method)
        targets = resolve_targets(model, targets)
        inner = not isinstance(targets[0], ClassTarget)
        if inner and (judge or real_references or clip_weights or fid_model):
            raise VitalError(
                "a judge, held-out real images, CLIP and FID score classes; inner channels are "
                "scored by their activation relative to their references (references=DIR)."
            )
        if clip_weights is not None:  # asked for by name: refused now, not skipped at the end
            metrics.check_clip(clip_weights)
        options = dict(method_options or {})
        for name in names:  # refuse a method that cannot take these targets before any runs
            get_method(name, targets, **_options_of(name, targets, options, reference_count))
        judge_model = as_model(judge, device) if judge is not None else None
        fid_model = as_model(fid_model, device) if fid_model is not None else model
        held_out = real_references is not None
        if inner:
            means = _reference_means(model, targets, references, reference_count, seed)
        else:
            real, real_labels = _real_images(
                model, targets, real_references if held_out else references, reference_count,
                seed + 1,
            )  # fmt: skip
        comparison = Comparison(model.name, judge_model.name if judge_model else None, targets, {})
        for name in names:
            results = _run(
                model, targets, name, references, overrides, setting, out, batch_size,
                progress, _options_of(name, targets, options, reference_count), force,
            )  # fmt: skip
            comparison.results[name] = results
            if inner:
                _score_inner(comparison, name, results, means)
                continue
            labels = [t.index for t in targets]
            _score(comparison, name, results, model, judge_model, real, real_labels, labels)
            comparison.summary[-1]["fid"] = _fid(comparison, results, real, fid_model, fid_layer)
        if inner:
            comparison.notes.append(
                "Relative activation: the target's mean activation on the picture divided by "
                f"its mean over the {reference_count} reference views VITAL matches; ≥ ½: the "
                "share of targets reaching half of it. VITAL has no activation term (its "
                "references enter through the loss); the baselines maximise the activation."
            )
        else:
            comparison.notes += _notes(comparison, held_out)
            _clip(comparison, clip_weights, model)
        return comparison


def _fid(comparison: Comparison, results, real, fid_model, fid_layer):
    """FID of one method's images, or ``None`` (with a note) when there are too few."""
    if len(results) < 2:
        note = "FID: skipped, it needs at least two visualisations per method."
        if note not in comparison.notes:
            comparison.notes.append(note)
        return None
    return metrics.fid(torch.stack([r.saved_pixels for r in results]), real, fid_model, fid_layer)


def _common_settings(settings: Mapping[str, object] | None, seed: int | None) -> dict:
    """The changes every method runs with, their seed included (``seed=`` or ``settings``)."""
    if settings is not None and not isinstance(settings, Mapping):
        raise VitalError(
            "compare takes changes to the methods' defaults as a mapping, e.g. "
            "settings={'steps': 300}: each method has its own defaults."
        )
    chosen = {name: value for name, value in (settings or {}).items() if value is not None}
    chosen["seed"] = first_seed(seed, chosen)
    return chosen


def _options_of(method: str, targets, options: dict, reference_count: int) -> dict:
    """The options ``method`` runs with: the caller's, and the reference count if it has one."""
    chosen = dict(options.get(method) or {})
    if method_class(method, targets).uses_references:
        chosen.setdefault("reference_count", reference_count)
    return chosen


def _run(
    model, targets, method, references, overrides, setting, out, batch_size, progress, chosen,
    force,
) -> list[Result]:  # fmt: skip
    """One method on every target, with the same settings (steps, seed) as the others."""
    kind = method_class(method, targets)
    return visualize(
        model,
        targets,
        references if kind.uses_references else None,
        method=method,
        setting=setting if kind.named_settings else None,
        settings=dict(overrides),
        out=Path(out) / method if out is not None else None,
        batch_size=batch_size,
        progress=progress,
        force=force,
        **chosen,
    )


def _score(
    comparison: Comparison,
    method: str,
    results: list[Result],
    model: Model,
    judge: Model | None,
    real: torch.Tensor,
    real_labels: list[int],
    labels: list[int],
) -> None:
    pixels = torch.stack([r.saved_pixels for r in results])
    explained = metrics.target_scores(model, pixels, labels)
    judged = metrics.target_scores(judge, pixels, labels) if judge is not None else None
    realism = metrics.realism(judge or model, pixels, labels, real, real_labels)
    for item, result in enumerate(results):
        comparison.per_image.append(
            {
                "method": method,
                "class": labels[item],
                "name": result.target.name,
                "probability": explained[item]["probability"],
                "rank": explained[item]["rank"],
                "judge_probability": judged[item]["probability"] if judged else None,
                "judge_rank": judged[item]["rank"] if judged else None,
                "realism_own": realism[item]["own"],
                "realism_others": realism[item]["others"],
                "realism_margin": realism[item]["margin"],
            }
        )
    # Each record holds its batch's wall time; dividing by the batch size sums batches once.
    seconds = sum(r.record.seconds / r.record.batch_size for r in results)
    comparison.summary.append(
        {
            "method": method,
            "images": len(results),
            "steps": results[0].record.settings["steps"],
            "acc_top1": float(np.mean([row["rank"] == 1 for row in explained])),
            "p_target": float(np.mean([row["probability"] for row in explained])),
            "median_rank": float(np.median([row["rank"] for row in explained])),
            "judge_top1": float(np.mean([r["rank"] <= 1 for r in judged])) if judged else None,
            "judge_top5": float(np.mean([r["rank"] <= 5 for r in judged])) if judged else None,
            "realism_own": _mean([row["own"] for row in realism]),
            "realism_others": _mean([row["others"] for row in realism]),
            "realism_margin": _mean([row["margin"] for row in realism]),
            "seconds_per_image": seconds / len(results),
        }
    )


def _reference_means(model: Model, targets, references, count: int, seed: int) -> list[float]:
    """Each inner target's mean activation over the reference views VITAL matches."""
    means = []
    for target in targets:
        views = neuron_references(target, references, count, seed).views(
            model.preprocessing.input_size, model.preprocessing.crop_pct,
            model.preprocessing.interpolation,
        )  # fmt: skip
        views = torch.stack(list(views))
        means.append(
            float(np.mean(metrics.target_activations(model, views, [target] * len(views))))
        )
    return means


def _score_inner(comparison: Comparison, method: str, results: list[Result], means) -> None:
    """Each picture's target activation relative to its references' mean."""
    relative = []
    for result, mean in zip(results, means, strict=True):
        activation = result.record.evaluation["activation"]
        relative.append(activation / mean if abs(mean) > 1e-12 else float("nan"))
        comparison.per_image.append(
            {
                "method": method,
                "unit": result.target.unit(),
                "activation": activation,
                "reference_activation": mean,
                "relative": relative[-1],
                "initial_activation": result.record.evaluation["initial_activation"],
            }
        )
    seconds = sum(r.record.seconds / r.record.batch_size for r in results)
    comparison.summary.append(
        {
            "method": method,
            "images": len(results),
            "steps": results[0].record.settings["steps"],
            "relative_mean": float(np.nanmean(relative)),
            "half_reached": float(np.mean([r >= 0.5 for r in relative])),
            "seconds_per_image": seconds / len(results),
        }
    )


def _notes(comparison: Comparison, held_out: bool) -> list[str]:
    judge = comparison.judge or f"{comparison.model} (no judge given: the explained model)"
    first = comparison.summary[0]["fid"] if comparison.summary else None
    notes = [
        f"Acc: top-1 of the explained model {comparison.model} on the visualisations "
        f"({len(comparison.targets)} per method).",
        f"Realism: cosine of {judge}'s pooled penultimate features to the mean over real "
        "images of the same class (own) and of the other classes (others); margin = own − "
        "others.",
    ]
    if first is not None:
        notes.append(
            f"FID: {first.images} visualisations vs {first.real_images} real images in "
            f"{first.dimensions}-d {first.feature_space}. With so few images the FID is "
            "dominated by noise and small-sample bias: read it as a rough distance, not as a "
            "number comparable to published FIDs."
        )
    if not held_out:
        notes.append(
            "Real images are the classes' reference images (views drawn with another seed); "
            "VITAL matches its references' feature distributions, so FID and realism are "
            "in-sample for VITAL."
        )
    return notes


def _clip(comparison: Comparison, clip_weights, model: Model) -> None:
    pixels_by_method = {
        m: torch.stack([r.saved_pixels for r in rs]) for m, rs in comparison.results.items()
    }
    labels = [t.index for t in comparison.targets]
    names = model.labels.names if model.labels is not None else []
    for row in comparison.summary:
        try:
            scores = metrics.clip_zero_shot(
                pixels_by_method[row["method"]], labels, names, clip_weights
            )
        except metrics.MetricUnavailableError as skipped:
            comparison.notes.append(str(skipped))
            return
        row["clip_top1"], row["clip_top5"] = scores["top1"], scores["top5"]


# --- report -----------------------------------------------------------------------------------

_COLUMNS = [
    ("method", "method", "{}"),
    ("steps", "steps", "{}"),
    ("acc_top1", "Acc top-1 (explained)", "{:.0%}"),
    ("p_target", "mean p(target)", "{:.3f}"),
    ("median_rank", "median rank", "{:g}"),
    ("judge_top1", "judge top-1", "{:.0%}"),
    ("judge_top5", "judge top-5", "{:.0%}"),
    ("fid", "FID", "{:.1f}"),
    ("realism_own", "realism own ↑", "{:.3f}"),
    ("realism_others", "realism others", "{:.3f}"),
    ("realism_margin", "realism margin ↑", "{:.3f}"),
    ("relative_mean", "activation / references' ↑", "{:.2f}"),
    ("half_reached", "≥ ½ references'", "{:.0%}"),
    ("clip_top1", "CLIP top-1", "{:.0%}"),
    ("clip_top5", "CLIP top-5", "{:.0%}"),
    ("seconds_per_image", "s / image", "{:.1f}"),
]


def _cell(row: dict, key: str, form: str) -> str:
    value = row.get(key)
    if isinstance(value, metrics.FidResult):
        value = value.value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return form.format(value)


def table_markdown(comparison: Comparison) -> str:
    """The summary table as Markdown, with the notes under it."""
    columns = [c for c in _COLUMNS if any(c[0] in row for row in comparison.summary)]
    lines = [
        "| " + " | ".join(title for _, title, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in comparison.summary:
        lines.append("| " + " | ".join(_cell(row, k, f) for k, _, f in columns) + " |")
    lines.append("")
    lines += [f"- {note}" for note in comparison.notes]
    return "\n".join(lines) + "\n"


def per_image_markdown(comparison: Comparison) -> str:
    """One row per (method, target): probabilities, ranks, realism, or channel activations."""
    if comparison.per_image and "unit" in comparison.per_image[0]:
        lines = [
            "| method | unit | activation | references' mean | relative | noise |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['method']} | {row['unit']} | {row['activation']:.3g} | "
            f"{row['reference_activation']:.3g} | {row['relative']:.2f} | "
            f"{row['initial_activation']:.3g} |"
            for row in comparison.per_image
        ]
        return "\n".join(lines) + "\n"
    lines = [
        "| method | class | p (explained) | rank | p (judge) | judge rank | realism own | margin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in comparison.per_image:
        judge_p = "–" if row["judge_probability"] is None else f"{row['judge_probability']:.3f}"
        margin = "–" if row["realism_margin"] is None else f"{row['realism_margin']:.3f}"
        lines.append(
            f"| {row['method']} | {row['name']} ({row['class']}) | {row['probability']:.3f} | "
            f"{row['rank']} | {judge_p} | {row['judge_rank'] or '–'} | "
            f"{row['realism_own']:.3f} | {margin} |"
        )
    return "\n".join(lines) + "\n"


def comparison_grid(comparison: Comparison, cell: int = 160):
    """Rows = methods, columns = targets; captions give p(target) and the judge's rank."""
    rows = {row["method"]: row for row in comparison.summary}
    images, captions = [], []
    channels = bool(comparison.per_image) and "unit" in comparison.per_image[0]
    key = "unit" if channels else "class"
    scores = {(r["method"], r[key]): r for r in comparison.per_image}
    for method, results in comparison.results.items():
        for result in results:
            if channels:
                score = scores[(method, result.target.unit())]
                caption = f"{result.target.unit()[-14:]} ×{score['relative']:.2f}"
            else:
                score = scores[(method, result.target.index)]
                caption = f"{result.target.name[:14]} p={score['probability']:.2f}"
                if score["judge_rank"] is not None:
                    caption += f" j#{score['judge_rank']}"
            images.append(result.image)
            captions.append(caption)
    return grid(
        images,
        captions,
        columns=len(comparison.targets),
        cell=cell,
        row_labels=[f"{m}" for m in rows],
    )


def write_report(comparison: Comparison, out: str | Path, cell: int = 160) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv``, ``per_image.csv`` and ``grid.png`` into ``out``."""
    out = Path(out)
    paths = {
        "table": out / "table.md",
        "csv": out / "table.csv",
        "per_image": out / "per_image.csv",
        "grid": out / "grid.png",
    }
    write_file(paths["table"], table_markdown(comparison) + "\n" + per_image_markdown(comparison))
    keys = [k for k, _, _ in _COLUMNS if any(k in row for row in comparison.summary)]
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(keys + ["fid_images", "fid_real_images"])
    for row in comparison.summary:
        fid = row.get("fid")
        writer.writerow(
            [_cell(row, k, "{}") for k in keys]
            + ([fid.images, fid.real_images] if fid is not None else ["", ""])
        )
    write_file(paths["csv"], table.getvalue())
    per_image = io.StringIO(newline="")
    writer = csv.DictWriter(per_image, fieldnames=list(comparison.per_image[0]))
    writer.writeheader()
    writer.writerows(comparison.per_image)
    write_file(paths["per_image"], per_image.getvalue())
    save_image(paths["grid"], comparison_grid(comparison, cell))
    return paths
